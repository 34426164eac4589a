"""Test set-up: 4 forced CPU devices and the XLA:CPU workaround of `mixjax._xla_cpu`
(YNNPACK fusions off), both set before JAX is imported anywhere."""
import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# Adds the YNN flag to XLA_FLAGS; importing mixjax imports jax right after.
import mixjax  # noqa: E402,F401
import jax  # noqa: E402  (must come after XLA_FLAGS)

jax.config.update("jax_enable_x64", False)


import pytest  # noqa: E402


@pytest.fixture(scope="module")
def x64():
  """float64 for one test module (`pytestmark = pytest.mark.usefixtures("x64")`), restored
  afterwards: the theory references are checked to 1e-6 and beyond."""
  prev = jax.config.jax_enable_x64
  jax.config.update("jax_enable_x64", True)
  yield
  jax.config.update("jax_enable_x64", prev)


@pytest.fixture
def run_main_cli():
  """`run_main_cli(*args)` runs `python -m mixjax.main *args` in a subprocess from the
  repository root, as a user would (real app.run wiring, exit codes, stderr); returns the
  `subprocess.CompletedProcess` with text stdout / stderr."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

  def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mixjax.main", *args], cwd=root,
                          capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
  return run
