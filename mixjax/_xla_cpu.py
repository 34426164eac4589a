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

It also keeps the memory XLA:CPU frees for reuse (`reuse_freed_memory`). Each run of a
compiled program allocates its temporary buffers anew and frees them at its end; the
trainer's Fashion-MNIST step has two of 58 and 78 MB, beyond what glibc's malloc
serves from its heaps (32 MB), so every step mapped them fresh from the kernel and
faulted ~19,000 pages in: about 35 ms of system CPU time per step, a step of 64–74 ms
instead of 44–45 (`benchmarks/bench_trainer_step.py`, docs/speed.md). With one malloc
arena, no `mmap` for large blocks and the heap's top kept (up to 1 GiB free), the same
blocks are reused step after step. This must happen before other threads allocate
(importing mixjax first does it; `python -m mixjax.main` always does); the numbers
computed are unchanged, and the process keeps its peak heap instead of returning freed
memory to the system. Set `MIXJAX_KEEP_MALLOC=1` to leave malloc alone.
"""
import ctypes
import ctypes.util
import logging
import os
import sys

YNN_OFF_FLAG = "--xla_cpu_experimental_ynn_fusion_type="

# glibc's mallopt parameters (malloc.h) and the values `reuse_freed_memory` sets.
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
MALLOPT = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 1 << 30))


def reuse_freed_memory() -> bool:
  """On Linux with glibc: one malloc arena, no `mmap` for large blocks, and freed memory
  at the heap's top kept up to 1 GiB (module docstring), unless `MIXJAX_KEEP_MALLOC` is
  set. True when glibc accepted all three settings."""
  if os.environ.get("MIXJAX_KEEP_MALLOC") or not sys.platform.startswith("linux"):
    return False
  try:
    mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
  except (OSError, AttributeError):  # no C library by that name, or no mallopt
    return False
  mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  return all([mallopt(param, value) == 1 for param, value in MALLOPT])


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


reuse_freed_memory()
disable_ynn_fusions()
quiet_backend_probes()
