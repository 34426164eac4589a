"""XLA:CPU workaround, applied before JAX creates its CPU backend.

With jaxlib 0.10.2, XLA:CPU's YNNPACK fusions miscompile some batched reductions:
`jax.jit(jax.vmap(f))` returned run 0's value for every run (or [a, b, a] for three
runs) for `mixjax.theory.exact_mixup_risk` on 64 × 40 inputs, while `jax.jit(f)` per run
and `jax.disable_jit()` agree with each other. They also slow 2-D convolutions (a LeNet
step on 28×28×1 went from 319 to 201 ms with them off). Disabling those fusions
(`--xla_cpu_experimental_ynn_fusion_type=`) gives the correct values, so mixjax sets that
flag in `XLA_FLAGS` when it is imported, before `jax` is (the flag only touches the CPU
backend; GPU and TPU runs ignore it). `tests/test_api.py` keeps a check that would catch
the miscompile. Set `MIXJAX_KEEP_YNN=1` to leave `XLA_FLAGS` alone.

It also quiets one line of JAX's start-up: without `JAX_PLATFORMS`, JAX probes every
platform it knows and logs, at INFO, "Unable to initialize backend 'tpu': ... libtpu.so"
for each one this machine lacks (the TPU line of every CPU run). Those probes are
expected to fail quietly (`xla_bridge` only logs them when `fail_quietly`; a platform
that was asked for and fails raises, and a GPU that JAX cannot use is a WARNING), so
`_QuietBackendProbes` drops exactly those INFO records.
"""
import logging
import os

YNN_OFF_FLAG = "--xla_cpu_experimental_ynn_fusion_type="


def disable_ynn_fusions() -> None:
  """Appends `YNN_OFF_FLAG` to `XLA_FLAGS` (once), unless `MIXJAX_KEEP_YNN` is set."""
  if os.environ.get("MIXJAX_KEEP_YNN"):
    return
  flags = os.environ.get("XLA_FLAGS", "")
  if YNN_OFF_FLAG not in flags.split():
    os.environ["XLA_FLAGS"] = (flags + " " + YNN_OFF_FLAG).strip()


class _QuietBackendProbes(logging.Filter):
  """Drops JAX's INFO "Unable to initialize backend '<platform>'" (a platform this
  machine lacks, probed by default); every other record passes."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not (record.levelno == logging.INFO
                and str(record.msg).startswith("Unable to initialize backend"))


def quiet_backend_probes() -> None:
  """Adds `_QuietBackendProbes` to JAX's backend logger (once)."""
  logger = logging.getLogger("jax._src.xla_bridge")
  if not any(isinstance(f, _QuietBackendProbes) for f in logger.filters):
    logger.addFilter(_QuietBackendProbes())


disable_ynn_fusions()
quiet_backend_probes()
