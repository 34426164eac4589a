"""Vmapped groups of CNN runs against the same runs one after another: the time of one
vmapped step of R runs over R steps of one run, side by side (R = 2, 4, 8).

    python -m benchmarks.bench_groups --data_dir=/data/tfds    # recipe CNN, MNIST-1D LeNet
    python -m benchmarks.bench_groups --models=lenet --runs=2,4

What runs is the trainer's compiled step (`program.assemble`, the training set on device,
the config's method, augmentation and optimizer) for `experiments/fashion_mnist.py`
(the recipe CNN: conv-BatchNorm-ReLU-pool, 28×28×1) and `experiments/mnist1d.py` (the
main job's LeNet), built once for one run (`num_runs=None`, what a sequential group
runs R times) and once vmapped over R runs (`num_runs=R`, `group_mode="vmap"`). Every
program is compiled and warmed up first; then, in each repeat, the programs run in a
random order, `--steps` calls each, ending with `block_until_ready`. Printed: the median
time per call, and vmapped(R) / (R × one run): below 1, the vmapped group is faster than
sequential runs. Never asserted (benchmarks are not tests).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import jax
import numpy as np

from mixjax.train import program as program_lib
from mixjax.train import setup
from mixjax.train import sweeps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {"recipe": "experiments/fashion_mnist.py", "lenet": "experiments/mnist1d.py"}


class _NoCheckpoints:
  def restore_latest(self, template):
    del template
    return None


def build(model_key: str, num_runs: int | None, data_dir: str | None):
  """`run(n)`: n calls of the step of one run (num_runs None) or of a vmapped group."""
  config = sweeps.load_config_module(os.path.join(ROOT, CONFIGS[model_key])).get_config()
  if data_dir:
    config.dataset.data_dir = data_dir
  configs = [sweeps.sweep_config(config, {"seed": s}) for s in range(num_runs or 1)]
  program = program_lib.assemble(configs, setup.load_data(config),
                                 devices=jax.local_devices(), workdir="/tmp")
  step = program.step
  holder = {"state": program_lib.init_or_restore(program, _NoCheckpoints())[0], "s": 0}

  def run(n: int) -> None:
    state = holder["state"]
    for _ in range(n):
      state, metrics = step(state, holder["s"])
      holder["s"] += 1
    jax.block_until_ready(metrics["loss"])
    holder["state"] = state

  return run


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default="recipe,lenet")
  parser.add_argument("--runs", default="2,4,8", help="group sizes R")
  parser.add_argument("--steps", type=int, default=None, help="calls per repeat")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--data_dir", default=None, help="tfds data_dir (Fashion-MNIST)")
  args = parser.parse_args(argv)
  sizes = [int(r) for r in args.runs.split(",")]
  print(f"vmapped groups vs sequential runs: jax {jax.__version__} on "
        f"{jax.devices()[0].platform} ({platform.processor() or platform.machine()}), "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start")
  results = {}
  for model_key in args.models.split(","):
    if model_key not in CONFIGS:
      raise ValueError(f"Unknown model {model_key!r}; known: {', '.join(CONFIGS)}.")
    runs = {1: build(model_key, None, args.data_dir)}
    runs.update({r: build(model_key, r, args.data_dir) for r in sizes})
    # About 0.5 s of work per call sequence: the LeNet step is ~20x cheaper.
    steps = args.steps or (4 if model_key == "recipe" else 40)
    for run in runs.values():
      run(2)  # compile, warm up
    times = {r: [] for r in runs}
    order = np.random.default_rng(0)
    for _ in range(args.repeats):
      for r in order.permutation(list(runs)):
        t0 = time.perf_counter()
        runs[int(r)](steps)
        times[int(r)].append((time.perf_counter() - t0) / steps)
    med = {r: statistics.median(t) for r, t in times.items()}
    results[model_key] = med
    print(f"\n== {model_key} ({CONFIGS[model_key]}): median over {args.repeats} repeats "
          f"of {steps} calls, load average {os.getloadavg()[0]:.2f} ==")
    print(f"  one run: {med[1] * 1e3:8.2f} ms per step")
    print(f"  {'R':>3}{'vmapped ms':>12}{'R x one ms':>12}{'vmapped / sequential':>22}")
    for r in sizes:
      print(f"  {r:>3}{med[r] * 1e3:>12.2f}{r * med[1] * 1e3:>12.2f}"
            f"{med[r] / (r * med[1]):>22.3f}")
  return results


if __name__ == "__main__":
  main()
