"""Training runs: `train_and_evaluate` (one run, or a seed group with
`--config.num_seeds=K`) and `train_runs`, the one path that trains R ≥ 1 runs.

A lone run is a group of one. `train_runs` trains the runs of a group either as one
program (`train_program`: the state stacked on a leading run axis and the step
vmapped over it; a lone run compiles without the run axis) or one after another sharing
one compiled step (`group_mode`). The runs may differ in the seed and in every per-run
value (`setup.per_run_keys`: the law, η, the learning rate, the weight decay); seed
groups and sweep groups (`sweeps.train_sweep`) both come here. Every run writes what a
single run writes, in its own folder, and takes the steps it takes when trained alone.

`train_program` is the trainer, a short sequence of named calls: assemble the program
once (`program.assemble`: model, mesh, schedule, optimizer, method, contexts,
statistics, compiled step), its state (initial or restored), the writers, the loop
(`loop.train`), the final evaluation and the summaries (`summary.finish_runs`).
"""
from __future__ import annotations

import os
from typing import Any

from absl import logging
import jax
import ml_collections

from mixjax.data import feeding
from mixjax.errors import ConfigError, NonFiniteLossError
from mixjax.models import introspect
from mixjax.train import checkpoint as checkpoint_lib
from mixjax.train import loop
from mixjax.train import program as program_lib
from mixjax.train import setup
from mixjax.train import summary as summary_lib
from mixjax.train import validate
from mixjax.train import workdir as workdir_lib
from mixjax.train import writers


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       devices=None, interrupt_at_step: int | None = None
                       ) -> dict[str, Any]:
  """Trains and evaluates as configured: one run in WORKDIR, or a seed group of
  config.num_seeds runs in WORKDIR/seed_<s>/ (`train_runs`); resumes from the latest
  checkpoints.

  Args:
    config: a config of `experiments/*.py` (see `mixjax.train.config`).
    workdir: output directory (checkpoints/, metrics.jsonl, tb/, data_stats.npz,
      summary.json).
    devices: the devices of the mesh (default: all devices of all processes).
    interrupt_at_step: tests only: stop abruptly (nothing saved, `loop.Interrupted`
      raised) after this many steps, as a killed process would.

  Returns:
    The run's summary dict (also in WORKDIR/summary.json, by process 0); for a seed
    group the group summary, with "runs_summaries": {folder: that run's summary}.

  Raises:
    ConfigError: a bad config (before anything is loaded or compiled where the problem
      can be seen from the config alone).
    WorkdirError: the workdir cannot be created, holds a run started with a different
      config (see `workdir`), or holds checkpoints none of which can be restored.
    NonFiniteLossError: the loss became NaN/inf in every run; the message names the step
      and the last good checkpoint.
  """
  devices = jax.devices() if devices is None else list(devices)
  validate.validate_config(config, num_devices=len(devices))
  workdir = workdir_lib.make_workdir(workdir)
  if config.num_seeds == 1:
    return train_runs([config], [workdir], workdir, devices=devices,
                      interrupt_at_step=interrupt_at_step)[os.path.basename(workdir)]
  runs = run_configs(config)
  summaries = train_runs(runs, [os.path.join(workdir, f"seed_{c.seed}") for c in runs],
                         workdir, devices=devices, group_config=config,
                         interrupt_at_step=interrupt_at_step)
  group = writers.write_group_summary(workdir, summaries)
  return group | {"runs_summaries": summaries}


def run_configs(config: ml_collections.ConfigDict) -> list[ml_collections.ConfigDict]:
  """The runs of a seed group: `config` with seed = config.seed + r (r < num_seeds) and
  num_seeds = 1, i.e. exactly the config that trains that run alone."""
  runs = []
  for r in range(int(config.num_seeds)):
    c = config.copy_and_resolve_references()
    c.seed = int(config.seed) + r
    c.num_seeds = 1
    runs.append(c)
  return runs


def group_mode(config: ml_collections.ConfigDict, model, ds, devices) -> str:
  """"vmap" or "sequential" for a group (config.group_mode, or the choice of "auto").

  "auto" runs sequentially where vmapping is slower or impossible: training sets fed
  from the host, and on CPU convolutions over images (both spatial axes > 1), where
  XLA:CPU runs a vmapped step slower than the same runs one after another
  (`benchmarks.bench_groups`: the Fashion-MNIST recipe CNN 1.30 / 1.47 / 1.60× for
  2 / 4 / 8 runs). Convolutions over 1-D signals (MNIST-1D's LeNet on (40, 1, 1):
  0.48 / 0.49 / 0.54×) and dense models vmap.
  """
  fits = feeding.fits_on_device(ds, config.data_on_device)
  if config.group_mode == "vmap":
    if not fits:
      raise ConfigError(
          "config.group_mode='vmap' needs the training set held on device "
          "(config.data_on_device=True and at most 4 GiB); use "
          "--config.group_mode=sequential.")
    return "vmap"
  if config.group_mode == "sequential" or not fits:
    return "sequential"
  on_cpu = any(d.platform == "cpu" for d in devices)
  seen = tuple(config.model.input_shape or ds.input_shape)
  image = len(seen) >= 2 and seen[0] > 1 and seen[1] > 1
  conv = image and introspect.has_convolution(model, ds.input_shape)
  return "sequential" if on_cpu and conv else "vmap"


def train_runs(configs: list[ml_collections.ConfigDict], dirs: list[str], workdir: str,
               *, devices, ds=None, group_config: ml_collections.ConfigDict | None = None,
               interrupt_at_step: int | None = None) -> dict[str, dict[str, Any]]:
  """R ≥ 1 runs, each in its folder `dirs[r]`; {folder name: summary}.

  The runs must share everything but `setup.per_run_keys` (a seed group; the points of
  a sweep group). The configs are checked first, before any data is loaded
  (`check_configs`). A finished run rerun with the same config trains and evaluates
  nothing (its summary is returned); with a changed length of training
  or evaluation (`config.RESUMABLE_CHANGES`) it continues or is re-evaluated, and its
  summary records the changes; with any other change it is refused (`workdir`). A
  vmapped group trains unless every run is done, so its runs are always those of one
  program (the same numbers whatever finished before).

  Args:
    configs, dirs: the runs' configs and folders (a lone run: its workdir).
    workdir: where a vmapped group keeps its checkpoints (WORKDIR/checkpoints) and the
      shared statistics cache.
    devices: the mesh's devices.
    ds: the dataset when already loaded.
    group_config: a seed group's config, checked against and written to
      WORKDIR/config.json (a sweep group has none: each run's folder holds its config).
    interrupt_at_step: see `train_and_evaluate`.
  """
  changes, finished = check_configs(configs, dirs, workdir, group_config)
  done = {os.path.basename(d): workdir_lib.finished_summary(d)
          for d, f, ch in zip(dirs, finished, changes) if f and not ch}
  if len(done) == len(dirs):
    return done
  if ds is None:
    ds = setup.load_data_once(configs[0])
  model = setup.make_model(configs[0], ds)
  mode = "single" if len(configs) == 1 else group_mode(configs[0], model, ds, devices)
  if mode != "single":
    logging.info("Group of %d runs (%s), %s mode.", len(configs),
                 ", ".join(os.path.basename(d) for d in dirs), mode)
  if mode != "sequential":
    return train_program(configs, dirs, workdir, devices=devices, ds=ds, model=model,
                         changes=changes, interrupt_at_step=interrupt_at_step)
  summaries, programs = {}, []  # programs: [(context, compiled programs)], shared
  for c, d, ch in zip(configs, dirs, changes):
    name = os.path.basename(d)
    if name in done:
      logging.info("%s finished already; not trained again.", d)
      summaries[name] = done[name]
      continue
    try:
      summaries.update(train_program([c], [d], d, devices=devices, ds=ds, model=model,
                                     changes=[ch], programs=programs,
                                     interrupt_at_step=interrupt_at_step))
    except NonFiniteLossError as e:  # this run stopped; the others go on, as in vmap
      summaries[name] = {"status": "failed", "seed": int(c.seed), "failed_at_step": e.step,
                         "error": str(e), "checkpoint": _how_trained([d], d, 0, None)}
      if jax.process_index() == 0:
        writers.write_json(os.path.join(d, writers.SUMMARY_FILE), summaries[name])
  failed = [n for n, v in summaries.items() if v.get("status") == "failed"]
  if failed and len(failed) == len(summaries):
    raise NonFiniteLossError(
        f"Non-finite loss in every run of the group ({', '.join(failed)}): "
        + summaries[failed[0]]["error"])
  return summaries


def _how_trained(dirs, workdir: str, r: int, num_runs: int | None) -> dict[str, Any]:
  """Run r's summary "checkpoint" entry: alone, or vmapped with the folders of its
  group (relative to its own), and where its states are."""
  d = dirs[r]
  return {"mode": "vmapped" if num_runs else "alone",
          "group": [os.path.relpath(g, d) for g in dirs] if num_runs else None,
          "workdir": os.path.relpath(workdir, d), "run": r if num_runs else None,
          "num_runs": num_runs}


def _holds_run(folder: str) -> bool:
  """The folder holds a run: checkpoints or a summary."""
  ckpt = os.path.join(folder, "checkpoints")
  return (os.path.isdir(ckpt) and bool(os.listdir(ckpt))) or os.path.exists(
      os.path.join(folder, writers.SUMMARY_FILE))


def check_configs(configs, dirs, workdir: str, group_config=None):
  """Before any data is loaded: each run's config against its folder's config.json, and
  a seed group's config against WORKDIR's (`workdir.check_workdir_config`, which
  writes them). Returns (each run's accepted changes, whether each had finished).

  Raises:
    WorkdirError: a config differs in a key the policy refuses (a finished run would be
      relabelled; an unfinished one resumed under another config).
  """
  write = jax.process_index() == 0
  finished = [workdir_lib.finished_summary(d) is not None for d in dirs]
  group_run = _holds_run(workdir)
  if group_config is not None:
    workdir_lib.check_workdir_config(
        group_config, workdir, write=write, finished=all(finished),
        has_run=group_run or any(os.path.isdir(d) for d in dirs))
  changes = [workdir_lib.check_workdir_config(
      c, workdir_lib.make_workdir(d), write=write, finished=f,
      has_run=_holds_run(d) or (group_config is None and group_run))
             for c, d, f in zip(configs, dirs, finished)]
  return changes, finished


def train_program(configs, dirs, workdir, *, devices, ds, model, changes,
                  programs: list | None = None, interrupt_at_step: int | None = None
                  ) -> dict[str, dict[str, Any]]:
  """The runs `configs` (checked: `check_configs`, whose `changes` their summaries
  record) as one program, vmapped over a run axis when R > 1 (see `train_runs` for the
  arguments); `programs`: [(context, compiled programs)] to reuse between runs with
  equal contexts (a sequential group)."""
  # The program: model, mesh, schedule, optimizer, method, contexts, statistics, step.
  program = program_lib.assemble(configs, ds, devices=devices, workdir=workdir,
                                 model=model, programs=programs)
  # The state: initial, or the latest checkpoint's.
  ckpt = checkpoint_lib.Checkpointer(workdir, max_to_keep=program.config.max_to_keep)
  state, start, resumed = program_lib.init_or_restore(program, ckpt)
  # The metric writers, one per run.
  writer = writers.RunWriters([
      setup.open_writer(d, start, resumed, tensorboard=program.config.tensorboard)
      for d in dirs])
  # The loop: steps, logs, checkpoints, quick evaluations.
  state, train_time = loop.train(program, state, ckpt, writer, start=start,
                                 interrupt_at_step=interrupt_at_step)
  # The final evaluation and each run's summary.json.
  summaries = summary_lib.finish_runs(
      program, dirs, state, writer=writer, train_time=train_time,
      resumed_from_step=start if resumed else None, changes=changes,
      training=[_how_trained(dirs, workdir, r, program.num_runs) for r in range(len(dirs))])
  writer.close()
  ckpt.close()
  return summaries
