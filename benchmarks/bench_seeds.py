"""Seeds in parallel: `--config.num_seeds=K` against K separate processes, side by side.

    python -m benchmarks.bench_seeds                                    # MNIST-1D MLP, K = 8
    python -m benchmarks.bench_seeds --config=experiments/mnist1d.py --num_seeds=4 \\
        --num_epochs=25                                                 # the LeNet main job

Runs, one after another on an otherwise idle machine, each as a whole process
(`python -m mixjax.main`, start-up, data, compilation, training, evaluation and
writing included):

  group     one process with --config.num_seeds=K (seeds 0..K−1);
  separate  K processes with --config.seed=s, s = 0..K−1;

and prints the wall times and the ratios group / separate (the goal: at most 0.5) and
group / one run (the first separate process). Which group mode "auto" picked is read
from the group's log. Printed, never asserted (benchmarks are not tests).
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(args: list[str]) -> tuple[float, str]:
  t0 = time.perf_counter()
  proc = subprocess.run([sys.executable, "-m", "mixjax.main", "--verbose", *args], cwd=ROOT,
                        capture_output=True, text=True, check=False)
  wall = time.perf_counter() - t0
  if proc.returncode:
    sys.exit(f"mixjax.main {' '.join(args)} failed (exit {proc.returncode}):\n"
             + proc.stderr[-3000:])
  return wall, proc.stdout + proc.stderr


def main(argv=None) -> dict[str, float]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="experiments/mnist1d.py:mlp")
  parser.add_argument("--num_seeds", type=int, default=8)
  parser.add_argument("--num_epochs", type=int, default=None,
                      help="override the config's epochs (default: the config's)")
  args = parser.parse_args(argv)

  common = [f"--config={args.config}"]
  if args.num_epochs:
    common.append(f"--config.num_epochs={args.num_epochs}")
  with tempfile.TemporaryDirectory() as tmp:
    group, log = run(common + [f"--workdir={tmp}/group",
                               f"--config.num_seeds={args.num_seeds}"])
    mode = re.search(r"[Gg]roup of \d+ runs .*?, (\w+) mode", log)
    separate = []
    for s in range(args.num_seeds):
      wall, _ = run(common + [f"--workdir={tmp}/seed_{s}", f"--config.seed={s}"])
      separate.append(wall)
      print(f"  separate process, seed {s}: {wall:.1f} s", flush=True)
  total = sum(separate)
  print(f"\nseed group vs separate processes: {args.config}"
        f"{f', {args.num_epochs} epochs' if args.num_epochs else ''}, "
        f"K = {args.num_seeds}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs")
  print(f"  group (one process, {mode.group(1) if mode else '?'} mode): {group:8.1f} s")
  print(f"  {args.num_seeds} separate processes:            {total:8.1f} s")
  print(f"  one run (one process):                {separate[0]:8.1f} s")
  print(f"  group / separate: {group / total:.3f}    group / one run: "
        f"{group / separate[0]:.2f}")
  return {"group_s": group, "separate_s": total, "one_s": separate[0]}


if __name__ == "__main__":
  main()
