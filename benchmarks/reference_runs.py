r"""Reference runs: a set of small trainings whose outputs must not change when the
trainer is restructured (a refactor is checked by running the set before and after).

    python -m benchmarks.reference_runs --out=/tmp/refs/after          # train the set
    python -m benchmarks.reference_runs --compare /tmp/refs/before /tmp/refs/after

The set (MNIST-1D and scikit-learn digits, offline; a few seconds each on a CPU) covers
the trainer's paths: a lone run (MLP, and the main job's 1-D LeNet), a seed group
vmapped and one sequential, a sweep whose points train as one vmapped group (and one
alone), the methods that need the data statistics (approx, erm_transformed,
perturbed_erm, label_smoothing_matched), regmixup, label smoothing, a mask law with
augmentation on images, host-fed batches, several steps per call, a run whose loss turns
NaN (alone, and one run of a vmapped group), and runs killed after a checkpoint
(`interrupt_at_step`) and resumed.

`--out` trains each run into OUT/<name>/ (the workdir the trainer writes; replaced if
present) and writes OUT/<name>/digests.json: for every run folder in it, a SHA-256 of
the model variables of each of its checkpoints, read back through `TrainedRun`. Runs
that end with an error write OUT/<name>/error.txt (the exception's type and message).

`--compare A B` prints, for every file the comparison covers, `identical` or
`different` (or which side lacks it), and exits 1 if any differs:
  summary.json     without its wall-clock time ("train_time_s") and code revision
                   ("code"), absolute paths replaced by the output folder's name;
  metrics.jsonl    without its wall-clock rate ("steps_per_sec");
  predictions.npz  every array, exactly;
  error.txt, digests.json   as written (paths replaced as above).
config.json is not compared: a knob added to the config (at its default) changes it
without changing what trains.

The comparison is byte for byte on canonical JSON (sorted keys), so float metrics must
be bit-identical. Run both sides on the same machine and package versions.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time

DEVICES = 2  # forced CPU devices: the per-device draws and the collectives run

# A small MNIST-1D MLP: 512 training examples, batch 64 (8 steps per epoch), 12 steps,
# logged every 2 steps, checkpoints every 4, a quick evaluation every epoch; Adam at
# 1e-2 with a cosine schedule and no warm-up, so that the 12 steps learn something.
SMALL = {"model.name": "mlp", "model.kwargs": {"hidden_sizes": (16,)},
         "model.input_shape": None, "dataset.num_train": 512, "batch_size": 64,
         "num_steps": 12, "log_every_steps": 2, "checkpoint_every_steps": 4,
         "eval.every_epochs": 1, "tensorboard": False, "optimizer.lr": 1e-2,
         "optimizer.warmup_epochs": 0.0}
LENET = {"model.name": "lenet", "model.kwargs": {"features": (4,), "dense_sizes": (8,)},
         "model.input_shape": (40, 1, 1)}
DIGITS = {"model.name": "lenet", "model.kwargs": {"features": (4,), "dense_sizes": (8,)},
          "batch_size": 32, "num_steps": 10, "log_every_steps": 2,
          "checkpoint_every_steps": 5, "eval.every_epochs": 0, "tensorboard": False,
          "sampler.name": "cutmix", "sampler.params": {"alpha": 1.0},
          "augment.enabled": True, "dataset.kwargs": {"as_image": True}}

# name -> (config file, overrides, how it runs). "alone": train_and_evaluate;
# "sweep": train_sweep over the listed points; "resume": interrupted, then rerun.
RUNS = {
    "lone": ("mnist1d", {}, "alone"),
    "lone_lenet": ("mnist1d", LENET, "alone"),
    "seeds_vmap": ("mnist1d", {"num_seeds": 3, "group_mode": "vmap"}, "alone"),
    "seeds_sequential": ("mnist1d", {"num_seeds": 2, "group_mode": "sequential"},
                         "alone"),
    "sweep": ("mnist1d", {}, ("sweep", [
        {"sampler.params": {"alpha": 0.5}},
        {"sampler.params": {"alpha": 2.0}, "optimizer.lr": 1e-3},
        {"method.name": "regmixup", "method.eta": 0.5},
        {"method.name": "erm"}])),
    "approx": ("mnist1d", {"method.name": "approx"}, "alone"),
    "regmixup": ("mnist1d", {"method.name": "regmixup", "method.eta": 0.7}, "alone"),
    "erm_transformed": ("mnist1d", {"method.name": "erm_transformed"}, "alone"),
    "perturbed_erm": ("mnist1d", {"method.name": "perturbed_erm"}, "alone"),
    "label_smoothing_matched": ("mnist1d", {"method.name": "label_smoothing_matched"},
                                "alone"),
    "erm_smoothed": ("mnist1d", {"method.name": "erm", "method.label_smoothing": 0.1},
                     "alone"),
    "digits_cutmix": ("digits", DIGITS, "alone"),
    "host_fed": ("mnist1d", {"data_on_device": False}, "alone"),
    "steps_per_call": ("mnist1d", {"steps_per_call": 3}, "alone"),
    "nan": ("mnist1d", {"optimizer.lr": 1e30}, "alone"),
    "sweep_nan": ("mnist1d", {}, ("sweep", [
        {"optimizer.lr": 1e-3}, {"optimizer.lr": 1e30}])),
    "resume": ("mnist1d", {}, ("resume", 6)),
    "resume_seeds": ("mnist1d", {"num_seeds": 2, "group_mode": "vmap"}, ("resume", 6)),
}

# Compared files (see the module docstring).
SUMMARY_DROP = ("train_time_s", "code")
METRICS_DROP = ("steps_per_sec",)
COMPARED = ("summary.json", "metrics.jsonl", "predictions.npz", "error.txt",
            "digests.json")


def _config(name: str, overrides: dict):
  from mixjax.train import sweeps  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  file, _, arg = name.partition(":")
  module = sweeps.load_config_module(os.path.join(root, "experiments", f"{file}.py"))
  config = module.get_config(arg) if arg else module.get_config()
  base = SMALL if file == "mnist1d" else {}
  return sweeps.sweep_config(config, {**base, **overrides})


def _train(name: str, workdir: str) -> None:
  """Trains run `name` of RUNS into `workdir` (error.txt when it raises)."""
  from mixjax import errors  # pylint: disable=g-import-not-at-top
  from mixjax.train import groups  # pylint: disable=g-import-not-at-top
  from mixjax.train import loop  # pylint: disable=g-import-not-at-top
  from mixjax.train import sweeps  # pylint: disable=g-import-not-at-top
  file, overrides, how = RUNS[name]
  config = _config(file, overrides)
  try:
    if how == "alone":
      groups.train_and_evaluate(config, workdir)
    elif how[0] == "sweep":
      points = [(sweeps.point_name(i, p), sweeps.sweep_config(config, p))
                for i, p in enumerate(how[1])]
      sweeps.train_sweep(points, workdir)
    elif how[0] == "resume":
      try:
        groups.train_and_evaluate(config, workdir, interrupt_at_step=how[1])
      except loop.Interrupted:
        pass
      groups.train_and_evaluate(config, workdir)
  except errors.MixjaxError as e:
    with open(os.path.join(workdir, "error.txt"), "w") as f:
      f.write(f"{type(e).__name__}: {e}\n")


def _digest(run_dir: str) -> dict[str, str]:
  """{step: SHA-256 of the run's variables at that checkpoint} (`TrainedRun`)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from mixjax.train import trained  # pylint: disable=g-import-not-at-top
  run = trained.TrainedRun(run_dir)
  out = {}
  for s in run.steps:
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(run.variables(s))[0]:
      h.update(jax.tree_util.keystr(path).encode())
      h.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    out[str(s)] = h.hexdigest()
  run.close()
  return out


def _run_dirs(workdir: str) -> list[str]:
  """The folders under `workdir` that hold one run (a config.json and a checkpoint
  entry in their summary), sorted."""
  found = []
  for d, _, files in os.walk(workdir):
    if "config.json" in files and "summary.json" in files:
      with open(os.path.join(d, "summary.json")) as f:
        if "checkpoint" in json.load(f):
          found.append(d)
  return sorted(found)


def train_all(out: str, only: list[str] | None = None) -> None:
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + f" --xla_force_host_platform_device_count={DEVICES}").strip()
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import mixjax  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  out = os.path.abspath(out)
  os.makedirs(out, exist_ok=True)
  for name in only or RUNS:
    t = time.time()
    workdir = os.path.join(out, name)
    shutil.rmtree(workdir, ignore_errors=True)  # a fresh run, never a resumed one
    _train(name, workdir)
    digests = {os.path.relpath(d, workdir): _digest(d) for d in _run_dirs(workdir)}
    with open(os.path.join(workdir, "digests.json"), "w") as f:
      json.dump(digests, f, indent=1, sort_keys=True)
    print(f"{name}: {time.time() - t:.1f} s", flush=True)


def _canonical(path: str, root: str) -> bytes:
  """The compared content of `path` (module docstring)."""
  base = os.path.basename(path)
  if base == "predictions.npz":
    import numpy as np  # pylint: disable=g-import-not-at-top
    with np.load(path) as z:
      h = hashlib.sha256()
      for k in sorted(z.files):
        a = z[k]
        h.update(f"{k}:{a.dtype}:{a.shape}".encode())
        h.update(np.ascontiguousarray(a).tobytes())
      return h.hexdigest().encode()
  with open(path) as f:
    text = f.read().replace(os.path.abspath(root), "<OUT>")
  if base == "summary.json":
    def strip(v):
      if isinstance(v, dict):
        return {k: strip(x) for k, x in v.items() if k not in SUMMARY_DROP}
      return v
    return json.dumps(strip(json.loads(text)), sort_keys=True).encode()
  if base == "metrics.jsonl":
    lines = [json.loads(l) for l in text.splitlines() if l.strip()]
    return "\n".join(json.dumps({k: v for k, v in r.items() if k not in METRICS_DROP},
                                sort_keys=True) for r in lines).encode()
  return text.encode()


def _files(root: str) -> set[str]:
  return {os.path.relpath(os.path.join(d, f), root)
          for d, _, files in os.walk(root) for f in files if f in COMPARED}


def compare(a: str, b: str) -> int:
  """Prints identical / different for every compared file; 1 if any differs."""
  bad = 0
  for rel in sorted(_files(a) | _files(b)):
    pa, pb = os.path.join(a, rel), os.path.join(b, rel)
    if not os.path.exists(pa) or not os.path.exists(pb):
      status = f"only in {a if os.path.exists(pa) else b}"
    elif _canonical(pa, a) == _canonical(pb, b):
      status = "identical"
    else:
      status = "different"
    bad += status != "identical"
    print(f"{rel:<64} {status}")
  n = len(_files(a) | _files(b))
  print(f"{n - bad} of {n} files identical.")
  return int(bad > 0)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", help="train the set into this folder")
  parser.add_argument("--only", default="", help="comma-separated run names (default all)")
  parser.add_argument("--compare", nargs=2, metavar=("A", "B"),
                      help="compare two outputs of --out")
  args = parser.parse_args(argv)
  if args.compare:
    return compare(*args.compare)
  if not args.out:
    parser.error("pass --out=DIR or --compare A B")
  only = [n for n in args.only.split(",") if n]
  unknown = [n for n in only if n not in RUNS]
  if unknown:
    parser.error(f"unknown runs {unknown}; known: {', '.join(RUNS)}")
  train_all(args.out, only or None)
  return 0


if __name__ == "__main__":
  sys.exit(main())
