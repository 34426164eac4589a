"""The trainer's compiled step, one dispatch per step against k steps per dispatch
(`config.steps_per_call`, a `lax.scan`), ERM against mixup: marginal steps per second.

    python -m benchmarks.bench_engine                    # MNIST-1D LeNet and MLP, k = 1, 32
    python -m benchmarks.bench_engine --k=16 --short=64 --long=448

What runs is what `python -m mixjax.main` runs (`program.assemble`: the jitted, sharded
step on all local devices, data held on device, the config's optimizer and schedule),
for `experiments/mnist1d.py` (the main job's LeNet) and `experiments/mnist1d.py:mlp`.
Every (model, method, k) is compiled and warmed up first; then each is timed over
`--short` and `--long` steps, alternating, `--repeats` times, and the marginal rate
(long − short) / (t_long − t_short) cancels the fixed costs. Printed: steps/s, the
mixup / ERM ratio per k, and the k-step / 1-step ratio per method. Never asserted.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import jax

from mixjax.train import program as program_lib
from mixjax.train import setup
from mixjax.train import sweeps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {"lenet": "experiments/mnist1d.py", "mlp": "experiments/mnist1d.py:mlp"}


def build(variant: str, method: str, k: int):
  """(run(n) -> seconds for n steps, the state holder) for one setting."""
  path = os.path.join(ROOT, CONFIGS[variant].split(":")[0])
  arg = CONFIGS[variant].split(":")[1] if ":" in CONFIGS[variant] else None
  config = sweeps.load_config_module(path).get_config(arg)
  config.method.name = method
  config.steps_per_call = k
  program = program_lib.assemble([config], setup.load_data(config),
                                 devices=jax.local_devices(), workdir="/tmp")
  step = program.step
  holder = {"state": program_lib.init_or_restore(program, _NoCheckpoints())[0]}

  def run(n: int) -> float:
    assert n % k == 0
    t0 = time.perf_counter()
    state = holder["state"]
    for _ in range(n // k):
      state, m = step(state, 0, k)
    jax.block_until_ready(m["loss"])
    holder["state"] = state
    return time.perf_counter() - t0

  return run


class _NoCheckpoints:
  def restore_latest(self, template):
    del template
    return None


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--k", type=int, default=32, help="steps per dispatch to compare")
  parser.add_argument("--short", type=int, default=64)
  parser.add_argument("--long", type=int, default=320)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--models", default="lenet,mlp")
  args = parser.parse_args(argv)
  settings = [(v, m, k) for v in args.models.split(",") for m in ("erm", "mixup")
              for k in (1, args.k)]
  runs = {}
  for s in settings:
    runs[s] = build(*s)
    runs[s](args.k)  # compile + warm up
  rates = {s: [] for s in settings}
  for r in range(args.repeats):
    for s in (settings if r % 2 == 0 else settings[::-1]):
      t_short, t_long = runs[s](args.short), runs[s](args.long)
      rates[s].append((args.long - args.short) / max(t_long - t_short, 1e-9))
  med = {s: statistics.median(v) for s, v in rates.items()}
  dev = jax.local_devices()[0]
  print(f"\nmarginal steps/s ({args.long} vs {args.short} steps, median of {args.repeats}), "
        f"{len(jax.local_devices())} x {dev.platform}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
  print(f"  {'model':<7}{'method':<8}{'k=1':>10}{f'k={args.k}':>10}{'k/1':>8}")
  for v in args.models.split(","):
    for m in ("erm", "mixup"):
      a, b = med[(v, m, 1)], med[(v, m, args.k)]
      print(f"  {v:<7}{m:<8}{a:>10.1f}{b:>10.1f}{b / a:>8.2f}")
    for k in (1, args.k):
      print(f"  {v:<7}mixup / ERM step time, k={k}: "
            f"{med[(v, 'erm', k)] / med[(v, 'mixup', k)]:.3f}")
  return med


if __name__ == "__main__":
  main()
