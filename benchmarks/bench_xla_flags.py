r"""The recipe CNN's bare step under XLA:CPU flags, side by side: does a flag make this
machine's step faster?

    python -m benchmarks.bench_xla_flags                    # the variants below
    python -m benchmarks.bench_xla_flags --variants=default,no_concurrency_scheduler --repeats=5

Each variant runs `bench_steps`'s recipe ERM step (batch 128, 28×28×1, BatchNorm in
training mode) in a fresh interpreter with its `XLA_FLAGS` (`MIXJAX_KEEP_YNN=1`, so mixjax
does not add its own flag: every variant states all of its flags), compiled and warmed
up, then 9 timings of 5 steps; the variants run one after another in a shuffled order,
`--repeats` times, and the median of each variant's per-repeat medians is printed with
its ratio to `default` (what `import mixjax` sets: YNNPACK fusions off); every other
variant changes one thing from it. This times the bare step: a flag that speeds it up
must also be timed in the trainer's step (`bench_trainer_step`, under the flag in its
environment) before it is adopted: turning the concurrency-optimized scheduler off made
the bare step 0.84× and the trainer's step slower (docs/speed.md). A flag this jaxlib
does not know fails its child, and the row says so.
Printed, never asserted.

The variants are the XLA:CPU flags of jaxlib 0.10.2 that could change a convolution
network's step: the YNNPACK, XNNPACK and oneDNN fusion types (`individual_convolution`,
`individual_dot`, ...), the concurrency-optimized scheduler, Eigen's multi-threading and
the preferred vector width. With YNNPACK's reductions on (`ynn_all`, jaxlib's default)
the trainer's batched reductions are miscompiled (`mixjax._xla_cpu`); it is timed for
the record only.
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys

from mixjax import _xla_cpu

YNN_OFF = _xla_cpu.YNN_OFF_FLAG  # what `import mixjax` sets

VARIANTS = {
    "default": YNN_OFF,
    "ynn_all": "",
    "ynn_conv": "--xla_cpu_experimental_ynn_fusion_type=individual_convolution",
    "ynn_dot": "--xla_cpu_experimental_ynn_fusion_type=individual_dot",
    "xnn_conv": YNN_OFF + " --xla_cpu_experimental_xnn_fusion_type=individual_convolution",
    "onednn_conv": YNN_OFF
                   + " --xla_cpu_experimental_onednn_fusion_type=individual_convolution",
    "onednn": YNN_OFF + " --xla_cpu_use_onednn=true",
    "no_concurrency_scheduler": YNN_OFF
                                + " --xla_cpu_enable_concurrency_optimized_scheduler=false",
    "eigen_single_thread": YNN_OFF + " --xla_cpu_multi_thread_eigen=false",
    "vector_width_512": YNN_OFF + " --xla_cpu_prefer_vector_width=512",
}

CHILD = r"""
import statistics, time
import mixjax
from benchmarks import bench_steps
run = bench_steps._jax_variants("recipe")["erm"]
run(3)
ts = []
for _ in range(9):
  t = time.perf_counter(); run(5); ts.append((time.perf_counter() - t) / 5)
print("MS", statistics.median(ts) * 1e3)
"""

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def time_variant(flags: str) -> float | None:
  """The median step (ms) of one fresh interpreter with `XLA_FLAGS=flags`; None if it
  failed (an unknown flag, a crash)."""
  env = dict(os.environ, XLA_FLAGS=flags, MIXJAX_KEEP_YNN="1", JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", CHILD], env=env, cwd=ROOT,
                        capture_output=True, text=True, check=False)
  lines = [l for l in proc.stdout.splitlines() if l.startswith("MS ")]
  return float(lines[-1].split()[1]) if proc.returncode == 0 and lines else None


def main(argv=None) -> dict[str, float | None]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--variants", default=",".join(VARIANTS))
  parser.add_argument("--repeats", type=int, default=2)
  args = parser.parse_args(argv)
  names = args.variants.split(",")
  unknown = [n for n in names if n not in VARIANTS]
  if unknown:
    sys.exit(f"bench_xla_flags: unknown variant(s) {', '.join(unknown)}; "
             f"choose from {', '.join(VARIANTS)}.")
  print(f"recipe ERM step under XLA:CPU flags, {args.repeats} repeats, load "
        f"{os.getloadavg()[0]:.2f} at start", flush=True)
  times: dict[str, list[float]] = {n: [] for n in names}
  failed = set()
  rng = random.Random(0)
  for _ in range(args.repeats):
    for n in rng.sample(names, len(names)):
      ms = time_variant(VARIANTS[n])
      if ms is None:
        failed.add(n)
      else:
        times[n].append(ms)
  med = {n: statistics.median(t) if t else None for n, t in times.items()}
  ref = med.get("default")
  print(f"load {os.getloadavg()[0]:.2f} at the end")
  print(f"  {'variant':<26}{'ms':>9}{'/ default':>11}  XLA_FLAGS")
  for n in names:
    if med[n] is None:
      print(f"  {n:<26}{'failed':>9}{'':>11}  {VARIANTS[n] or '(none)'}")
      continue
    ratio = f"{med[n] / ref:.3f}" if ref else "-"
    note = " (some repeats failed)" if n in failed else ""
    print(f"  {n:<26}{med[n]:>9.2f}{ratio:>11}  {VARIANTS[n] or '(none)'}{note}")
  return med


if __name__ == "__main__":
  main()
