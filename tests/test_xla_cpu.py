"""The XLA:CPU workaround (`mixjax._xla_cpu`): YNNPACK fusions off wherever mixjax runs.

With the fusions on (jaxlib 0.10.2), `jit(vmap(exact_mixup_risk))` over 3 networks
returned network 0's risk three times (measured: [2.524, 2.524, 2.524] against
[2.524, 2.504, 2.321] per network). The first test would catch that miscompile if the
workaround went away; the second checks that `import mixjax` is what applies it.
"""
from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

import mixjax
from mixjax import _xla_cpu
from mixjax import samplers


def test_vmapped_exact_risk_equals_per_network_risk():
  rng = np.random.default_rng(0)
  n, d, c, h = 64, 40, 10, 32  # the shapes of the original miscompile
  x = jnp.asarray(rng.normal(size=(n, d)), jnp.float32)
  y = jax.nn.one_hot(rng.integers(0, c, n), c)

  def init(k):
    k1, k2 = jax.random.split(k)
    return {"w1": jax.random.normal(k1, (d, h)) / np.sqrt(d),
            "w2": jax.random.normal(k2, (h, c)) / np.sqrt(h)}

  params = jax.vmap(init)(jax.random.split(jax.random.key(0), 3))

  def risk(p):
    f = lambda z: jnp.tanh(z @ p["w1"]) @ p["w2"]
    return mixjax.exact_mixup_risk(f, x, y, samplers.beta(1.0))

  vmapped = np.asarray(jax.jit(jax.vmap(risk))(params))
  single = np.asarray([jax.jit(risk)(jax.tree.map(lambda a: a[i], params))
                       for i in range(3)])
  assert np.ptp(single) > 0.1  # the three networks' risks differ
  np.testing.assert_allclose(vmapped, single, rtol=1e-5)


def test_import_mixjax_disables_ynn_fusions_before_jax():
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "MIXJAX_KEEP_YNN")}
  code = ("import sys, os, mixjax; assert 'jax' in sys.modules; "
          "print(os.environ.get('XLA_FLAGS', ''))")
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                       text=True, check=True, timeout=120).stdout
  assert _xla_cpu.YNN_OFF_FLAG in out.split()
  # MIXJAX_KEEP_YNN leaves XLA_FLAGS alone.
  out = subprocess.run([sys.executable, "-c", code], env=env | {"MIXJAX_KEEP_YNN": "1"},
                       capture_output=True, text=True, check=True, timeout=120).stdout
  assert _xla_cpu.YNN_OFF_FLAG not in out.split()


def test_no_backend_probe_line_at_default_verbosity():
  """Without JAX_PLATFORMS, JAX probes the platforms it knows and logs at INFO those this
  machine lacks ("Unable to initialize backend 'tpu'"): absl's INFO logging shows the
  line with plain `import jax`, and not once mixjax is imported."""
  env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
  code = ("from absl import logging; logging.set_verbosity(logging.INFO); "
          "logging.use_absl_handler(); {imp}; import jax; print(jax.devices())")
  run = lambda imp: subprocess.run(
      [sys.executable, "-c", code.format(imp=imp)], env=env, capture_output=True,
      text=True, check=True, timeout=120).stderr
  plain = run("pass")
  if "Unable to initialize backend" not in plain:
    import pytest  # pylint: disable=g-import-not-at-top
    pytest.skip("every platform this jax probes is present here: nothing to quiet")
  assert "Unable to initialize backend" not in run("import mixjax")


FAULTS_SCRIPT = """
import resource, sys
import mixjax
import jax, jax.numpy as jnp
f = jax.jit(lambda x: jnp.exp(x) + 1.0)  # an output of 96 MB, allocated by every call
x = jnp.ones((24 << 20,), jnp.float32)
for _ in range(20):  # the heap grows to hold the few outputs alive at once, then stays
  f(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
  f(x).block_until_ready()  # the result is freed at once
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def test_import_mixjax_keeps_freed_buffers_for_reuse():
  """A program whose 96 MB output is allocated and freed by every call: with mixjax's
  malloc settings, once the heap holds what is alive at once, the pages are reused (no
  call faults its output's pages in); with MIXJAX_KEEP_MALLOC (glibc's defaults: a
  block that large is mapped fresh each time) every call faults its 24,576 pages in
  again."""
  env = {k: v for k, v in os.environ.items() if k != "MIXJAX_KEEP_MALLOC"}
  env["JAX_PLATFORMS"] = "cpu"
  run = lambda e: int(subprocess.run(
      [sys.executable, "-c", FAULTS_SCRIPT], env=e, capture_output=True, text=True,
      check=True, timeout=120).stdout.split()[-1])
  pages = (24 << 20) * 4 // 4096
  assert run(env | {"MIXJAX_KEEP_MALLOC": "1"}) >= 5 * pages * 0.9
  assert run(env) < 0.1 * pages
  assert _xla_cpu.reuse_freed_memory() is True  # glibc took all three settings
