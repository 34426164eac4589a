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
  """`run_main_cli(*args, cwd=ROOT)` runs `python -m mixjax.main *args` in a subprocess
  from the repository root (or `cwd`), as a user would (real app.run wiring, exit codes,
  stderr); returns the `subprocess.CompletedProcess` with text stdout / stderr."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

  def run(*args: str, timeout: float = 120, cwd=root) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mixjax.main", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
  return run


# A user's own law file (docs/add_a_law.md's recipe), with a good factory and one of each
# bad kind: raises, returns no law, draws outside [0, 1], draws the wrong shape, gives
# wrong moments.
USER_LAW = '''
"""θ ~ Normal(mu, sigma²) truncated to [½, 1]; λ = θ or 1 − θ with probability ½."""
import math

import jax
import jax.numpy as jnp
from mixjax import samplers


def _draw(key, shape, mu, sigma):
  k_theta, k_flip = jax.random.split(key)
  lo, hi = (0.5 - mu) / sigma, (1.0 - mu) / sigma
  theta = mu + sigma * jax.random.truncated_normal(k_theta, lo, hi, shape)
  theta = jnp.clip(theta, 0.5, 1.0)  # float32 rounding at the ends
  return jnp.where(jax.random.bernoulli(k_flip, 0.5, shape), theta, 1.0 - theta)


def _moments(mu, sigma):
  pdf = lambda x: math.exp(-x * x / 2) / math.sqrt(2 * math.pi)
  cdf = lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2)))
  a, b = (0.5 - mu) / sigma, (1.0 - mu) / sigma
  z = cdf(b) - cdf(a)
  d = (pdf(a) - pdf(b)) / z
  return mu + sigma * d, sigma**2 * (1 + (a * pdf(a) - b * pdf(b)) / z - d * d)


def trunc_normal(mu=0.75, sigma=0.1):
  mean, var = _moments(mu, sigma)
  return samplers.from_fn(_draw, "trunc_normal", params={"mu": mu, "sigma": sigma},
                          theta_mean=mean, theta_var=var)


def trunc_normal_mc(mu=0.75, sigma=0.1):
  return samplers.from_fn(_draw, "trunc_normal", params={"mu": mu, "sigma": sigma})


def raises(mu=0.75):
  raise RuntimeError("no law today")


def not_a_law():
  return 0.5


def out_of_range():
  return samplers.from_fn(lambda key, shape: 2.0 * jax.random.uniform(key, shape))


def wrong_shape():
  return samplers.from_fn(lambda key, shape: jax.random.uniform(key, (3,)))


def wrong_moments(mu=0.75, sigma=0.1):
  return samplers.from_fn(_draw, params={"mu": mu, "sigma": sigma},
                          theta_mean=mu, theta_var=sigma**2)


NOT_CALLABLE = 3
'''


@pytest.fixture
def user_law_dir(tmp_path):
  """A folder outside the repository holding `mylaw.py` (`USER_LAW`): its factories
  `trunc_normal`, `trunc_normal_mc` and the bad ones, as `--config.sampler.name=
  <dir>/mylaw.py:<factory>` names them."""
  folder = tmp_path / "laws"
  folder.mkdir()
  (folder / "mylaw.py").write_text(USER_LAW)
  return folder


@pytest.fixture(scope="module")
def compilation_cache(tmp_path_factory):
  """JAX's persistent compilation cache for one test module
  (`pytestmark = pytest.mark.usefixtures("compilation_cache")`): end-to-end runs
  compile the same step / init / eval programs several times (a resumed run recompiles
  what the first run compiled), and a CPU compile of a train step takes seconds. Speed
  only: results are the same with or without it."""
  try:
    from jax._src import compilation_cache as cc  # pylint: disable=g-import-not-at-top
  except ImportError:  # private module moved: run uncached
    yield
    return
  names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
           "jax_persistent_cache_min_entry_size_bytes")
  old = {n: getattr(jax.config, n) for n in names}
  cache_dir = tmp_path_factory.getbasetemp().parent / "mixjax_train_jax_cache"
  jax.config.update("jax_compilation_cache_dir", str(cache_dir))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  cc.reset_cache()
  yield
  for n, v in old.items():
    jax.config.update(n, v)
  cc.reset_cache()
