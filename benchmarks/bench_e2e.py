r"""The whole Fashion-MNIST recipe, end to end: `python -m mixjax.main` against the PyTorch
+ timm loop a user would write (`benchmarks.torch_recipe`), at equal epochs.

    python -m benchmarks.bench_e2e --epochs=10 --repeats=2      # the measurement
    python -m benchmarks.bench_e2e --epochs=1 --repeats=1       # smoke check

Both sides run as subprocesses, one at a time, alternating (mixjax first in even repeats,
PyTorch first in odd ones), each timed from its launch to its exit:
- mixjax: `python -m mixjax.main --config=experiments/fashion_mnist.py
  --config.num_epochs=N --config.dataset.data_dir=DATA --workdir=<fresh temp dir>`,
  exactly the documented command (its defaults: data cache, compilation cache, a test
  evaluation every epoch, the final evaluation with every metric, summary and
  predictions written);
- PyTorch: `python -m benchmarks.torch_recipe --epochs=N --idx_dir=IDX` (the same
  network and initialization law, optimizer, schedule, batch, augmentation, mixup and
  evaluation cadence; its docstring states its choices), reading the IDX files a
  PyTorch user reads.

Measured from each run's own log (mixjax: WORKDIR/log.txt; PyTorch: its stdout):
  wall         launch to exit;
  start-up     launch to the start of the first training step (imports, data, model,
               state, compilation of nothing yet);
  first step   the first step (mixjax: its compilation, unless the persistent compilation
               cache already holds it);
  step         the steady-state step: time over steps between log lines (every 100
               steps), leaving out the intervals that hold an evaluation;
  evals+other  what the loop spent besides its steps: wall of the loop minus steps × step
               (the per-epoch evaluations, checkpoints, logging);
  tail         after the last step: the final evaluation, summaries, exit;
  accuracy     the final test accuracy (one seed each: the same laws, not the same
               draws; docs/speed.md has three seeds a side).
Each cell is the median over repeats; the ratios are mixjax / PyTorch of the medians. The
load average is printed before every run: on a shared machine only the ratios of runs
taken side by side mean something. Printed, never asserted.

Both children run with Python's default bytecode caching (`PYTHONDONTWRITEBYTECODE`
removed from their environment when set, as sandboxes do): a user's imports read `.pyc`
files, and without them both sides spend seconds compiling their libraries' sources at
every start.

`--prime` (default on) first runs the same mixjax command until its first evaluation and
stops it, and imports the PyTorch side's modules, untimed, so that the timed runs find
the caches a second run of the same command finds (mixjax: the decoded dataset, the
compiled train step and evaluation programs, which depend on the schedule's length, so
the prime runs the timed command itself; both: the bytecode); `--no-prime` measures a
cold first run.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_ABSL = re.compile(r"^[IWEF](\d\d)(\d\d) (\d\d):(\d\d):(\d\d)\.(\d{6}) ")
_STEP = re.compile(r"\] step (\d+)/(\d+) \(epoch")
_EVAL = re.compile(r"\] step (\d+)(?: \(run \d+\))?: test accuracy")


def _absl_time(line: str) -> float | None:
  """The time.time() of an absl log line's prefix (local time; same year)."""
  m = _ABSL.match(line)
  if not m:
    return None
  mo, d, h, mi, s, us = (int(g) for g in m.groups())
  now = datetime.datetime.now()
  return datetime.datetime(now.year, mo, d, h, mi, s, us).timestamp()


def _load() -> str:
  with open("/proc/loadavg") as f:
    return " ".join(f.read().split()[:3])


def _steady(points, evals) -> float:
  """Seconds per step over the intervals between (time, step) points that hold no eval."""
  dt = ds = 0.0
  for (t0, s0), (t1, s1) in zip(points, points[1:]):
    if any(t0 < te <= t1 for te in evals):
      continue
    dt, ds = dt + t1 - t0, ds + s1 - s0
  return dt / ds if ds else float("nan")


def _summarize(t_launch, t_exit, t_train, t_first, points, evals, accuracy) -> dict:
  step = _steady(points, evals)
  last_t, last_s = points[-1]
  return {"wall": t_exit - t_launch, "startup": t_train - t_launch,
          "first_step": t_first - t_train, "step_ms": step * 1e3,
          "evals_other": (last_t - t_first) - (last_s - 1) * step,
          "tail": t_exit - last_t, "accuracy": accuracy, "steps": last_s}


def _env() -> dict[str, str]:
  env = dict(os.environ)
  env.pop("PYTHONDONTWRITEBYTECODE", None)
  return env


def _mixjax_cmd(epochs: int, data_dir: str, workdir: str) -> list[str]:
  """The documented command: the Fashion-MNIST recipe for `epochs` epochs."""
  return [sys.executable, "-m", "mixjax.main", "--config=experiments/fashion_mnist.py",
          f"--config.num_epochs={epochs}", f"--config.dataset.data_dir={data_dir}",
          f"--workdir={workdir}"]


def run_mixjax(epochs: int, data_dir: str, workdir: str) -> dict:
  """One mixjax run (the documented command) in a fresh `workdir`; its measurements."""
  cmd = _mixjax_cmd(epochs, data_dir, workdir)
  t_launch = time.time()
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False,
                        env=_env())
  t_exit = time.time()
  if proc.returncode:
    raise RuntimeError(f"mixjax exited with {proc.returncode}:\n{proc.stderr[-3000:]}")
  t_train = t_first = None
  points, evals = [], []
  with open(os.path.join(workdir, "log.txt")) as f:  # the run's absl log (not stderr)
    log = f.read()
  for line in log.splitlines():
    t = _absl_time(line)
    if t is None:
      continue
    if "] Training " in line and t_train is None:
      t_train = t
    elif "] First training step took" in line:
      t_first = t
      points.append((t, 1))
    elif m := _STEP.search(line):
      points.append((t, int(m.group(1))))
    elif _EVAL.search(line):
      evals.append(t)
  with open(os.path.join(workdir, "summary.json")) as f:
    accuracy = json.load(f)["test"]["accuracy"]
  return _summarize(t_launch, t_exit, t_train, t_first, points, evals, accuracy)


def prime_mixjax(epochs: int, data_dir: str, workdir: str) -> float:
  """Runs `run_mixjax`'s command until its log shows the first evaluation, then stops it
  (SIGTERM): the compilation cache then holds the step and the evaluation programs of
  the timed runs. Returns the seconds it ran."""
  t0 = time.time()
  proc = subprocess.Popen(_mixjax_cmd(epochs, data_dir, workdir), cwd=ROOT,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
  log = os.path.join(workdir, "log.txt")
  try:
    while proc.poll() is None:
      time.sleep(0.5)
      if os.path.exists(log):
        with open(log) as f:
          if _EVAL.search(f.read()):
            break
  finally:
    proc.terminate()
    proc.wait()
  return time.time() - t0


def run_torch(epochs: int, idx_dir: str) -> dict:
  """One run of `benchmarks.torch_recipe`; its measurements."""
  cmd = [sys.executable, "-m", "benchmarks.torch_recipe", f"--epochs={epochs}",
         f"--idx_dir={idx_dir}"]
  t_launch = time.time()
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False,
                        env=_env())
  t_exit = time.time()
  if proc.returncode:
    raise RuntimeError(f"PyTorch exited with {proc.returncode}:\n{proc.stderr[-3000:]}")
  marks, points, evals, accuracy = {}, [], [], None
  for line in proc.stdout.splitlines():
    parts = line.split()
    if parts[0] in ("T_START", "T_TRAIN", "T_FIRST"):
      marks[parts[0]] = float(parts[1])
      if parts[0] == "T_FIRST":
        points.append((float(parts[1]), 1))
    elif parts[0] == "step":
      points.append((float(parts[-1]), int(parts[1].split("/")[0])))
    elif parts[0] == "eval":
      evals.append(float(parts[-1]))
    elif parts[0] == "final_test_accuracy":
      accuracy = float(parts[1])
  return _summarize(t_launch, t_exit, marks["T_TRAIN"], marks["T_FIRST"], points, evals,
                    accuracy)


ROWS = (("wall", "wall s", "{:.1f}"), ("startup", "start-up s", "{:.2f}"),
        ("first_step", "first step s", "{:.2f}"), ("step_ms", "step ms", "{:.1f}"),
        ("evals_other", "evals+other s", "{:.1f}"), ("tail", "tail s", "{:.2f}"),
        ("accuracy", "test accuracy", "{:.4f}"))


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--epochs", type=int, default=10)
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--data_dir", default=os.environ.get(
      "TFDS_DATA_DIR", os.path.expanduser("~/tensorflow_datasets")),
                      help="tfds data dir holding the prepared fashion_mnist")
  parser.add_argument("--idx_dir", default="/usr/share/datasets/fashion-mnist",
                      help="the Fashion-MNIST IDX files (PyTorch side)")
  parser.add_argument("--prime", action=argparse.BooleanOptionalAction, default=True)
  args = parser.parse_args(argv)
  print(f"bench_e2e: {args.epochs} epochs, {args.repeats} repeats, "
        f"{len(os.sched_getaffinity(0))} cores, load {_load()} at start", flush=True)
  tmp = tempfile.mkdtemp(prefix="bench_e2e_")
  results = {"mixjax": [], "pytorch": []}
  try:
    if args.prime:
      primed = prime_mixjax(args.epochs, args.data_dir, os.path.join(tmp, "prime"))
      subprocess.run([sys.executable, "-c", "from benchmarks import torch_recipe; "
                      "torch_recipe.load_timm_mixup()"], cwd=ROOT, env=_env(), check=True)
      print(f"  primed the caches (mixjax: to its first evaluation, {primed:.1f} s)",
            flush=True)
    for rep in range(args.repeats):
      sides = ("mixjax", "pytorch") if rep % 2 == 0 else ("pytorch", "mixjax")
      for side in sides:
        load = _load()
        if side == "mixjax":
          r = run_mixjax(args.epochs, args.data_dir, os.path.join(tmp, f"mixjax_{rep}"))
        else:
          r = run_torch(args.epochs, args.idx_dir)
        results[side].append(r)
        print(f"  repeat {rep} {side:<8} load {load}: " + ", ".join(
            f"{label} {fmt.format(r[k])}" for k, label, fmt in ROWS), flush=True)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  med = {side: {k: statistics.median(r[k] for r in rs) for k, _, _ in ROWS}
         for side, rs in results.items()}
  print(f"\nmedians over {args.repeats} repeats, {args.epochs} epochs "
        f"({results['mixjax'][0]['steps']} steps); load {_load()} at the end")
  print(f"  {'':<16}{'mixjax':>10}{'PyTorch':>10}{'ratio':>8}")
  for k, label, fmt in ROWS:
    a, b = med["mixjax"][k], med["pytorch"][k]
    print(f"  {label:<16}{fmt.format(a):>10}{fmt.format(b):>10}"
          f"{(a / b if b else float('nan')):>8.2f}")
  return med


if __name__ == "__main__":
  main()
