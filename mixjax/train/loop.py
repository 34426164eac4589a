"""`train_and_evaluate(config, workdir)`: the whole run, from data to `summary.json`.

  1. Validate the config (before anything is loaded or compiled), check it against the
     workdir's config.json (a changed config does not resume silently:
     `config.check_workdir_config`), load the dataset, build the sampler, the model
     (`models.build_model`, BatchNorm over the mesh axis "data") and the method.
  2. DataStats of the training split (x̄, ȳ, Σ; `mixjax.theory.data_stats`) when the
     method or the test-time rescaling needs them, cached in `WORKDIR/data_stats.npz`
     (`theory.stats.cached_data_stats`).
  3. Create the state replicated on the mesh, restore the latest checkpoint if any (same
     command = resume; an unreadable one falls back to the previous one, see
     `checkpoint`), record the step resumed from (`resumed_from_step` in metrics.jsonl
     and summary.json), put the training set on device (replicated) when it fits.
  4. Train: `step.make_train_step`; a log line with step rate and ETA every
     `log_every_steps`; checkpoints every `checkpoint_every_steps` (never of a
     non-finite state: a NaN/inf loss stops the run with the step named, and the last
     checkpoint is the last good state); a quick test evaluation every
     `eval.every_epochs`.
  5. Final evaluation (`mixjax.eval.evaluate`): test accuracy, NLL, ECE (15 bins), Brier;
     the same after temperature scaling fitted on the validation split; for the mixup
     family (mixup, regmixup, erm_transformed, perturbed_erm, approx) the same again with
     test-time rescaling (THEORY.md §5, `theory.rescaled` with θ̄ of the training law,
     `samplers.regmixup_equivalent` for RegMixup), side by side. Printed and written to
     `WORKDIR/summary.json`; the logits and labels it was computed from go to
     `WORKDIR/predictions.npz` (`writers.write_summary`).
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Callable

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mixjax import data as data_lib
from mixjax import eval as eval_lib
from mixjax import losses as losses_lib
from mixjax import models as models_lib
from mixjax import samplers as samplers_lib
from mixjax import theory
from mixjax.theory import stats as stats_lib
from mixjax.train import checkpoint as checkpoint_lib
from mixjax.train import config as config_lib
from mixjax.train import methods as methods_lib
from mixjax.train import optim
from mixjax.train import state as state_lib
from mixjax.train import step as step_lib
from mixjax.train import writers

STATS_FILE = "data_stats.npz"
# The last compiled train step and its key (`make_step`): one entry, so that the runs of
# a sequential seed group share one compilation and nothing else is kept alive.
_STEP_CACHE: dict[str, Any] = {}
# Hold the training set on device when it takes at most this many bytes per device.
MAX_ON_DEVICE_BYTES = 4 << 30


class NonFiniteLossError(FloatingPointError):
  """The loss or a gradient became NaN/inf; the message names the step."""


class _Interrupted(Exception):
  """Raised by `interrupt_at_step` (tests): an abrupt stop, nothing saved."""


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       devices=None, interrupt_at_step: int | None = None
                       ) -> dict[str, Any]:
  """Trains and evaluates as configured; resumes from WORKDIR's latest checkpoint.

  Args:
    config: a config of `experiments/*.py` (see `mixjax.train.config`).
    workdir: output directory (checkpoints/, metrics.jsonl, tb/, data_stats.npz,
      summary.json).
    devices: the devices of the mesh (default: all devices of all processes).
    interrupt_at_step: tests only: stop abruptly (nothing saved, `_Interrupted` raised)
      after this many steps, as a killed process would.

  Returns:
    The summary dict (also written to WORKDIR/summary.json by process 0).

  Raises:
    ConfigError: a bad config (a ValueError; before anything is loaded or compiled where
      the problem can be seen from the config alone).
    WorkdirError: the workdir cannot be created, holds a run started with a different
      config (outside `config.RESUMABLE_CHANGES`, unless config.allow_config_change),
      or holds checkpoints none of which can be restored.
    NonFiniteLossError: the loss became NaN/inf; the message names the step and the
      last good checkpoint.
  """
  devices = jax.devices() if devices is None else list(devices)
  config_lib.validate_config(config, num_devices=len(devices))
  if config.num_seeds > 1:
    return train_group(config, workdir, devices=devices,
                       interrupt_at_step=interrupt_at_step)
  return _train_single(config, workdir, devices=devices,
                       interrupt_at_step=interrupt_at_step)


def _train_single(config, workdir: str, *, devices, interrupt_at_step=None, ds=None):
  """One run (config.num_seeds == 1); `ds` preloaded by a sequential group."""
  workdir = config_lib.make_workdir(workdir)
  ckpt = checkpoint_lib.Checkpointer(workdir, max_to_keep=config.max_to_keep)
  config_lib.check_workdir_config(
      config, workdir, write=jax.process_index() == 0,
      has_run=bool(ckpt.all_steps())
      or os.path.exists(os.path.join(workdir, writers.SUMMARY_FILE)))
  mesh = step_lib.make_mesh(devices)

  if ds is None:
    ds, spe = load_data(config)
  else:
    spe = data_lib.steps_per_epoch(int(ds.train_x.shape[0]), config.batch_size)
  sampler = training_sampler(config)
  model = make_model(config, ds)
  total = config_lib.total_steps(config, int(ds.train_x.shape[0]))
  moments, stats = training_law_and_stats(config, sampler, ds, workdir)
  ctx = method_context(config, sampler, moments)
  tx, schedule = optim.make_optimizer(config.optimizer, spe, total)
  root = jax.random.key_data(jax.random.key(config.seed))
  state, resumed = create_or_restore_state(config, model, tx, mesh, ckpt, root, ds)
  start = int(_to_host(state.step))
  writer = writers.RunWriters([open_writer(workdir, start, resumed,
                                              tensorboard=config.tensorboard)])
  steps, batch_args = make_step(config, ds, mesh, model, tx, schedule, ctx, stats, root)
  predict = eval_lib.Predictor(model, config.eval.batch_size,
                               step_lib.make_mesh(jax.local_devices()), stats=stats,
                               theta_bar=ctx.theta_bar)
  state, train_time = train(
      config, state, steps, batch_args, predict, ds, ckpt, writer, start=start,
      total=total, spe=spe, devices=devices, interrupt_at_step=interrupt_at_step)
  check_finite(state, ckpt, writer)
  summary = run_summary(config, state, total=total, spe=spe, num_devices=len(devices),
                        moments=moments, train_time=train_time,
                        resumed_from_step=start if resumed else None)
  summary["checkpoint"] = {"workdir": ".", "run": None, "num_runs": None}
  results, logits, logits_rescaled = final_evaluation(config, predict, state, ds)
  summary.update(results)
  writer.write(total, final_records(summary))
  writer.close()
  ckpt.close()
  writers.write_summary(workdir, summary, ds, logits, logits_rescaled)
  return summary


# ----------------------------------------------------------------------------- groups


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


def run_dir(workdir: str, run_config: ml_collections.ConfigDict) -> str:
  return os.path.join(workdir, f"seed_{run_config.seed}")


def has_convolution(model, input_shape) -> bool:
  """Whether the model's forward pass contains a convolution (from its jaxpr)."""
  x = jnp.zeros((1,) + tuple(input_shape), jnp.float32)
  jaxpr = jax.make_jaxpr(lambda v: model.init(jax.random.key(0), v, train=False))(x)
  return "conv_general_dilated" in str(jaxpr)


def group_mode(config: ml_collections.ConfigDict, model, ds, devices) -> str:
  """"vmap" or "sequential" for a seed group (config.group_mode, or the choice of
  "auto"): sequential where vmapping is slower or impossible, i.e. convolutional models
  on CPU (XLA:CPU runs a vmapped convolution slower than the same runs one after
  another) and training sets fed from the host; vmap otherwise."""
  fits = config.data_on_device and (
      ds.train_x.nbytes + ds.train_y.nbytes <= MAX_ON_DEVICE_BYTES)
  if config.group_mode == "vmap":
    if not fits:
      raise config_lib.ConfigError(
          "config.group_mode='vmap' needs the training set held on device "
          "(config.data_on_device=True and at most 4 GiB); use "
          "--config.group_mode=sequential.")
    return "vmap"
  if config.group_mode == "sequential" or not fits:
    return "sequential"
  on_cpu = any(d.platform == "cpu" for d in devices)
  return "sequential" if on_cpu and has_convolution(model, ds.input_shape) else "vmap"


def train_group(config: ml_collections.ConfigDict, workdir: str, *, devices,
                interrupt_at_step: int | None = None) -> dict[str, Any]:
  """A seed group: config.num_seeds runs of `config` with seeds seed, seed+1, ….

  Each run writes what a single run writes (config.json with its own seed and
  num_seeds=1, metrics.jsonl, tb/, summary.json, predictions.npz) in WORKDIR/seed_<s>/;
  WORKDIR/config.json holds the group's config and WORKDIR/summary.json the group's
  summary (`writers.write_group_summary`: mean ± std over the finished runs). The runs
  share the data (the validation split is config.dataset.split_seed's) and the
  statistics; every run takes the steps it takes when trained alone.

  Modes (`group_mode`):
    vmap: one program; the state has a leading run axis and the step is vmapped over
      it; one Orbax checkpoint in WORKDIR/checkpoints holds all runs, so the group
      resumes together. A run whose loss turns NaN/inf stops updating at that step (the
      step's own guard), is marked failed in its summary with the step named, and the
      others continue; the group fails (exit 3) only when every run has.
    sequential: the runs one after another in this process, sharing the loaded data
      and one compiled step; each run checkpoints in its own folder, and a finished
      run (summary.json present) is not trained again on resume.

  Returns:
    The group summary, with "runs": {folder: that run's summary}.
  """
  workdir = config_lib.make_workdir(workdir)
  runs = run_configs(config)
  dirs = [run_dir(workdir, c) for c in runs]
  ds, spe = load_data(config)
  model = make_model(config, ds)
  mode = group_mode(config, model, ds, devices)
  logging.info("Seed group of %d runs (seeds %d..%d), %s mode.", len(runs),
               runs[0].seed, runs[-1].seed, mode)
  if mode == "sequential":
    ckpt_dir = os.path.join(workdir, "checkpoints")  # a single run's, in this workdir
    config_lib.check_workdir_config(
        config, workdir, write=jax.process_index() == 0,
        has_run=any(os.path.isdir(d) for d in dirs)
        or os.path.exists(os.path.join(workdir, writers.SUMMARY_FILE))
        or (os.path.isdir(ckpt_dir) and bool(os.listdir(ckpt_dir))))
    summaries = {}
    for c, d in zip(runs, dirs):
      path = os.path.join(d, writers.SUMMARY_FILE)
      if os.path.exists(path):
        logging.info("%s finished already; not trained again.", d)
        with open(path) as f:
          summaries[os.path.basename(d)] = json.load(f)
        continue
      summary = _train_single(c, d, devices=devices, interrupt_at_step=interrupt_at_step,
                              ds=ds)
      summaries[os.path.basename(d)] = summary | {"seed": int(c.seed), "status": "ok"}
  else:
    summaries = _train_vmapped(config, runs, dirs, workdir, devices=devices, ds=ds,
                               spe=spe, model=model, interrupt_at_step=interrupt_at_step)
  group = writers.write_group_summary(workdir, summaries)
  return group | {"runs_summaries": summaries}


def _train_vmapped(config, runs, dirs, workdir, *, devices, ds, spe, model,
                   interrupt_at_step=None, group_config: bool = True
                   ) -> dict[str, dict[str, Any]]:
  """The runs of a group as one vmapped program (see `train_group`).

  `runs` may differ in the seed, in the λ-law's parameters (`sampler`, one sampler
  structure) and in the optimizer's lr and weight decay (a group of sweep points,
  `train_sweep`); those enter the step as arrays (`step.RunParams`), each run with its
  own θ̄ for the rescaling. `group_config`: check and write `config` as
  WORKDIR/config.json (a seed group); else each run's folder holds the only config
  check (a group of sweep points). Each run's summary names the group checkpoint and
  its index in it ("checkpoint"), for `load_run`.
  """
  num_runs = len(runs)
  ckpt = checkpoint_lib.Checkpointer(workdir, max_to_keep=config.max_to_keep)
  has_run = bool(ckpt.all_steps()) or any(
      os.path.exists(os.path.join(d, writers.SUMMARY_FILE)) for d in dirs)
  if group_config:
    config_lib.check_workdir_config(config, workdir, write=jax.process_index() == 0,
                                    has_run=has_run)
  for c, d in zip(runs, dirs):
    config_lib.check_workdir_config(c, config_lib.make_workdir(d),
                                    has_run=has_run and not group_config,
                                    write=jax.process_index() == 0)
  mesh = step_lib.make_mesh(devices)
  total = config_lib.total_steps(config, int(ds.train_x.shape[0]))
  run_samplers = [training_sampler(c) for c in runs]
  run_moments = [training_moments(c, s) for c, s in zip(runs, run_samplers)]
  moments, stats = training_law_and_stats(config, run_samplers[0], ds, workdir)
  params = run_params(config, runs, run_samplers, run_moments)
  ctx = method_context(config, run_samplers[0], moments)
  tx, schedule = optim.make_optimizer(config.optimizer, spe, total)
  roots = jnp.stack([jax.random.key_data(jax.random.key(c.seed)) for c in runs])
  state, resumed = create_or_restore_state(config, model, tx, mesh, ckpt, roots, ds,
                                           num_runs=num_runs)
  start = int(_to_host(state.step)[0])
  writer = writers.RunWriters([open_writer(d, start, resumed, tensorboard=config.tensorboard)
                               for d in dirs])
  steps, batch_args = make_step(config, ds, mesh, model, tx, schedule, ctx, stats, None,
                                num_runs=num_runs, runs=params, steps_per_epoch=spe,
                                total=total)
  predict = eval_lib.Predictor(model, config.eval.batch_size,
                               step_lib.make_mesh(jax.local_devices()), stats=stats,
                               theta_bar=ctx.theta_bar)
  state, train_time = train(
      config, state, steps, batch_args, predict, ds, ckpt, writer, start=start,
      total=total, spe=spe, devices=devices, interrupt_at_step=interrupt_at_step,
      num_runs=num_runs)
  summaries = {}
  for r, (c, d) in enumerate(zip(runs, dirs)):
    run_state = run_slice(state, r)
    summary = run_summary(c, run_state, total=total, spe=spe, num_devices=len(devices),
                          moments=run_moments[r], train_time=train_time,
                          resumed_from_step=start if resumed else None)
    summary["seed"] = int(c.seed)
    summary["checkpoint"] = {"workdir": os.path.relpath(workdir, d), "run": r,
                             "num_runs": num_runs}
    bad = int(_to_host(run_state.first_nonfinite))
    if bad != state_lib.NO_NONFINITE:
      summary.update(status="failed", failed_at_step=bad,
                     error=f"non-finite loss or gradient at step {bad}; the run stopped "
                           "updating there (the other runs of the group continued).")
      if jax.process_index() == 0:
        writers.write_json(os.path.join(d, writers.SUMMARY_FILE), summary)
    else:
      summary["status"] = "ok"
      run_predict = predict if run_moments[r] is None else predict.with_theta_bar(
          float(run_moments[r].mean))
      results, logits, logits_rescaled = final_evaluation(c, run_predict, run_state, ds)
      summary.update(results)
      writer.write_run(r, total, final_records(summary))
      writers.write_summary(d, summary, ds, logits, logits_rescaled)
    summaries[os.path.basename(d)] = summary
  writer.close()
  ckpt.close()
  return summaries


def run_params(config: ml_collections.ConfigDict, runs, run_samplers, run_moments
               ) -> step_lib.RunParams | None:
  """The runs' own values that differ within a vmapped group (`step.RunParams`): the
  λ-laws (stacked, with their θ-moments) and the optimizer's lr and weight decay; None
  when every run shares them all (a seed group)."""
  laws = run_moments[0] is not None and any(s != run_samplers[0] for s in run_samplers)
  lrs = [float(c.optimizer.lr) for c in runs]
  wds = [float(c.optimizer.weight_decay) for c in runs]
  optimizer = len(set(lrs)) > 1 or len(set(wds)) > 1
  if not laws and not optimizer:
    return None
  return step_lib.RunParams(
      sampler=samplers_lib.stack(run_samplers) if laws else None,
      moments=samplers_lib.stack_moments(run_moments) if laws else None,
      lr=jnp.asarray(lrs, jnp.float32) if optimizer else None,
      weight_decay=jnp.asarray(wds, jnp.float32) if optimizer else None)


# Keys a vmapped group of sweep points may differ in: they enter the step as arrays.
_PER_RUN_KEYS = (("seed",), ("sampler", "name"), ("sampler", "params"), ("optimizer", "lr"),
                 ("optimizer", "weight_decay"))


def _law_group_key(config: ml_collections.ConfigDict) -> str:
  """What a group of sweep points must share to train as one vmapped program: the
  config but for the seed, the λ-law's parameters and the optimizer's lr and weight
  decay; the laws must have one structure (`samplers.structure`: e.g. Beta(α) for
  several α, or two-atom laws)."""
  d = json.loads(_seedless_json(config))
  for keys in _PER_RUN_KEYS:
    node = d
    for k in keys[:-1]:
      node = node.get(k, {})
    node.pop(keys[-1], None)
  if config.method.name in methods_lib.MIXUP_FAMILY:
    d["sampler_structure"] = samplers_lib.structure(training_sampler(config))
  return json.dumps(d, sort_keys=True)


def law_groups(points: list[tuple[str, ml_collections.ConfigDict]]) -> list[list[int]]:
  """Sweep points that differ only in the seed, the λ-law's parameters (one sampler
  structure) and the optimizer's lr and weight decay, all with num_seeds = 1: the
  candidates for one vmapped program (in the order of their first point). Every other
  point is a group of its own."""
  groups: list[list[int]] = []
  by_key: dict[str, list[int]] = {}
  for i, (_, c) in enumerate(points):
    if c.num_seeds != 1:
      groups.append([i])
      continue
    key = _law_group_key(c)
    if key not in by_key:
      by_key[key] = []
      groups.append(by_key[key])
    by_key[key].append(i)
  return groups


def _sweep_group(points, idx, workdir, devices):
  """Points `idx` as one vmapped program (their laws and optimizer values stacked), in
  WORKDIR/<name> each, the group's checkpoints in WORKDIR/group_<first>_<size>.

  Returns (summaries by point name, or None when the points cannot share one program:
  a convolutional model on CPU or data fed from the host (`group_mode`); the dataset,
  for the points to train one by one without loading it again)."""
  configs = [points[i][1] for i in idx]
  base = configs[0]
  ds, spe = load_data(base)
  model = make_model(base, ds)
  if group_mode(base, model, ds, devices) != "vmap":
    return None, ds
  group_dir = config_lib.make_workdir(
      os.path.join(workdir, f"group_{idx[0]:03d}_{len(idx)}"))
  logging.info("Sweep points %s: one vmapped program (%d runs).",
               ", ".join(points[i][0] for i in idx), len(idx))
  return _train_vmapped(base, configs, [os.path.join(workdir, points[i][0]) for i in idx],
                        group_dir, devices=devices, ds=ds, spe=spe, model=model,
                        group_config=False), ds


def train_sweep(points: list[tuple[str, ml_collections.ConfigDict]], workdir: str, *,
                devices=None) -> dict[str, Any]:
  """Every sweep point (`config.sweep_point_configs`) in this process.

  Point `name` trains in WORKDIR/<name> (a seed group when its num_seeds > 1), so each
  point has its own config.json, metrics and summary.json; a finished point
  (summary.json present) is not trained again. Every point's config is validated before
  the first one trains. Points that differ only in the seed, the λ-law's parameters
  (one sampler structure: e.g. Beta(α) for several α) and the optimizer's lr and weight
  decay (`law_groups`) train as one vmapped program where `group_mode` would vmap
  (dense models; not convolutions on CPU), those values entering the step as arrays
  (`step.RunParams`), with one group checkpoint in WORKDIR/group_<first>_<size>; laws
  of different structures compile separately. Other points train one after another
  (points that differ only in the seed sharing a compiled step). A point whose loss
  turns NaN is recorded as failed; the others go on.

  Returns:
    {name: {"status", "test", "test_rescaled"}}, also written to WORKDIR/summary.json.

  Raises:
    ConfigError: a point's config is invalid (before anything trains).
    NonFiniteLossError: after all points ran, naming the points that failed.
  """
  devices = jax.devices() if devices is None else list(devices)
  for name, c in points:
    try:
      config_lib.validate_config(c, num_devices=len(devices))
    except ValueError as e:
      raise config_lib.ConfigError(f"sweep point {name}: {e}") from e
  workdir = config_lib.make_workdir(workdir)
  results, failed = {}, []

  def done(name: str) -> dict | None:
    path = os.path.join(workdir, name, writers.SUMMARY_FILE)
    if not os.path.exists(path):
      return None
    with open(path) as f:
      return json.load(f)

  for idx in law_groups(points):
    todo = [i for i in idx if done(points[i][0]) is None]
    summaries, ds = {}, None
    if len(todo) == len(idx) > 1:
      try:
        group_summaries, ds = _sweep_group(points, idx, workdir, devices)
        summaries = group_summaries or {}
      except NonFiniteLossError as e:
        for i in idx:
          failed.append(points[i][0])
          results[points[i][0]] = {"status": "failed", "error": str(e)}
        continue
    for i in idx:
      name, c = points[i]
      summary = summaries.get(name) or done(name)
      if summary is None:
        logging.info("Sweep point %s.", name)
        try:
          if ds is None:  # (a point with num_seeds > 1 is a group of its own: ds is None)
            summary = train_and_evaluate(c, os.path.join(workdir, name), devices=devices)
          else:  # a point of a law group that could not be vmapped: its data is loaded
            summary = _train_single(c, os.path.join(workdir, name), devices=devices,
                                    ds=ds)
        except NonFiniteLossError as e:
          failed.append(name)
          results[name] = {"status": "failed", "error": str(e)}
          continue
      if summary.get("status") == "failed":
        failed.append(name)
      results[name] = {"status": summary.get("status", "ok"), "test": summary.get("test"),
                       "test_rescaled": summary.get("test_rescaled")}
  if jax.process_index() == 0:
    writers.write_json(os.path.join(workdir, writers.SUMMARY_FILE), results)
  if failed:
    raise NonFiniteLossError(
        f"{len(failed)} of {len(points)} sweep points stopped on a non-finite loss: "
        f"{', '.join(failed)} (their messages are in {workdir}/summary.json); the other "
        "points finished.")
  return results


class TrainedRun:
  """A run of a workdir, for analysis after training: its config, model, dataset and the
  model variables at any of its checkpoints.

  `TrainedRun(run_dir)` reads RUN_DIR/config.json and summary.json, whose "checkpoint"
  entry says where the run's states are: its own RUN_DIR/checkpoints, or those of the
  vmapped group it trained in (the run's index r in them). The states are restored on
  the local devices, as they were saved (so checkpoint `config.max_to_keep` steps
  at `config.checkpoint_every_steps` to keep a training trajectory).

  Attributes:
    config: the run's resolved config (ml_collections.ConfigDict).
    model: the Linen model it trained (`make_model`).
    ds: the dataset (`load_data`; pass `ds` to reuse one already loaded).
    steps: the checkpointed steps, ascending.
  """

  def __init__(self, run_dir: str, *, ds=None):
    with open(os.path.join(run_dir, "config.json")) as f:
      self.config = ml_collections.ConfigDict(_tuples(json.load(f)))
    with open(os.path.join(run_dir, writers.SUMMARY_FILE)) as f:
      where = json.load(f).get("checkpoint") or {"workdir": ".", "run": None,
                                                  "num_runs": None}
    self.ds = ds if ds is not None else load_data(self.config)[0]
    self.model = make_model(self.config, self.ds)
    self._run, num_runs = where["run"], where["num_runs"]
    self._ckpt = checkpoint_lib.Checkpointer(
        os.path.normpath(os.path.join(run_dir, where["workdir"])))
    self.steps = sorted(self._ckpt.all_steps())
    spe = data_lib.steps_per_epoch(int(self.ds.train_x.shape[0]), self.config.batch_size)
    tx, _ = optim.make_optimizer(self.config.optimizer, spe, config_lib.total_steps(
        self.config, int(self.ds.train_x.shape[0])))
    sample = jnp.zeros((1,) + tuple(self.ds.input_shape), jnp.float32)
    init = lambda k: state_lib.create_state(self.model, tx, k, sample)
    roots = jnp.zeros((num_runs or 1, 2), jnp.uint32)
    mesh = step_lib.make_mesh(jax.local_devices())
    self._template = jax.jit(jax.vmap(init) if num_runs else (lambda k: init(k[0])),
                             out_shardings=step_lib.replicated(mesh))(roots)

  def state(self, step: int | None = None) -> state_lib.TrainState:
    """The run's TrainState at checkpoint `step` (default: the last)."""
    if not self.steps:
      raise FileNotFoundError(f"No checkpoint in {self._ckpt.directory}.")
    state, _ = self._ckpt.restore(self.steps[-1] if step is None else step, self._template)
    return state if self._run is None else run_slice(state, self._run)

  def variables(self, step: int | None = None) -> dict[str, Any]:
    """{"params", "batch_stats"} at checkpoint `step` (default: the last), for
    `model.apply(variables, x, train=False)`."""
    return self.state(step).variables

  def close(self) -> None:
    self._ckpt.close()


def _tuples(value: Any) -> Any:
  """JSON lists back to the tuples the configs use."""
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value


def run_slice(state, r: int):
  """Run r of a stacked (group) state, as the state of a single run."""
  return jax.tree.map(lambda a: a[r], state)


def final_records(summary: dict[str, Any]) -> dict[str, Any]:
  return ({"final/" + k: v for k, v in summary["test"].items()}
          | {"final_rescaled/" + k: v for k, v in summary.get("test_rescaled", {}).items()})


# ----------------------------------------------------------------------------- setup


def load_data(config: ml_collections.ConfigDict):
  """The dataset (`data.load_dataset`) and the number of steps per epoch."""
  ds = data_lib.load_dataset(config.dataset.name, data_dir=config.dataset.data_dir,
                             val_fraction=config.dataset.val_fraction,
                             seed=config.dataset.split_seed, num_train=config.dataset.num_train,
                             **dict(config.dataset.kwargs))
  spe = data_lib.steps_per_epoch(int(ds.train_x.shape[0]), config.batch_size)  # rejects B > n
  if config.augment.enabled and not ds.is_image:
    raise config_lib.ConfigError(
        f"config.augment.enabled=True but {config.dataset.name} is not an image dataset; "
        "set --config.augment.enabled=False.")
  return ds, spe


def training_sampler(config: ml_collections.ConfigDict):
  """The λ-law of the mixup part (config.sampler)."""
  return samplers_lib.make_sampler(config.sampler.name, **dict(config.sampler.params))


def build_model(config: ml_collections.ConfigDict, num_classes: int, *,
                input_shape: tuple[int, ...] | None = None,
                bn_axis_name: str | None = step_lib.AXIS):
  """`models.build_model` for config.model: BatchNorm over `bn_axis_name`, the network
  seeing config.model.input_shape (same number of entries as the data's `input_shape`)."""
  target = config.model.input_shape
  model = models_lib.build_model(config.model.name, num_classes, dict(config.model.kwargs),
                                 input_shape=target, bn_axis_name=bn_axis_name)
  if target is not None and input_shape is not None:
    target = tuple(int(s) for s in target)
    if math.prod(target) != math.prod(input_shape):
      raise ValueError(
          f"config.model.input_shape={target} has {math.prod(target)} entries but the "
          f"dataset's examples have shape {tuple(input_shape)} ({math.prod(input_shape)}).")
  return model


def make_model(config: ml_collections.ConfigDict, ds):
  """`build_model` for the dataset; a model the method cannot train is a ConfigError."""
  input_shape = tuple(ds.input_shape)
  try:
    model = build_model(config, ds.num_classes, input_shape=input_shape)
  except (TypeError, ValueError) as e:
    raise config_lib.ConfigError(
        f"config.model ({config.model.name!r}, kwargs={dict(config.model.kwargs)}, "
        f"input_shape={config.model.input_shape}): {e}") from e
  if config.method.name == "approx" and _has_batch_stats(model, input_shape):
    raise config_lib.ConfigError(
        f"method 'approx' differentiates the model along input directions (JVPs), which "
        f"cannot carry BatchNorm batch statistics; model {config.model.name!r} has "
        "BatchNorm. Use a model without BatchNorm (mlp, lenet) or another method.")
  return model


def needs_stats(config: ml_collections.ConfigDict) -> bool:
  name = config.method.name
  return name in methods_lib.NEEDS_STATS or (
      name in methods_lib.MIXUP_FAMILY and config.eval.rescale)


def _stats_fingerprint(config, ds) -> dict[str, Any]:
  return {"dataset": config.dataset.name, "kwargs": json.dumps(dict(config.dataset.kwargs)),
          "val_fraction": float(config.dataset.val_fraction),
          "split_seed": int(config.dataset.split_seed), "n": int(ds.train_x.shape[0]),
          "rank": -1 if config.stats.rank is None else int(config.stats.rank)}


def load_or_compute_stats(config, ds, workdir: str) -> theory.DataStats:
  """DataStats of the training split (one-hot labels), cached in WORKDIR/data_stats.npz.

  The cache is used only when it was computed for the same dataset, split, seed and
  rank; it is written by process 0 (atomically) and the others compute their own.
  """
  return stats_lib.cached_data_stats(
      os.path.join(workdir, STATS_FILE), _stats_fingerprint(config, ds), ds.train_x,
      ds.train_y, num_classes=ds.num_classes, rank=config.stats.rank,
      write=jax.process_index() == 0)


def training_law_and_stats(config: ml_collections.ConfigDict, sampler, ds, workdir: str):
  """θ-moments of the law the model effectively trains on (the mixup family; RegMixup's
  is `samplers.regmixup_equivalent`), and the DataStats if the method or the rescaling
  needs them (float32 unless x64 is enabled)."""
  stats = load_or_compute_stats(config, ds, workdir) if needs_stats(config) else None
  if stats is not None and not jax.config.jax_enable_x64:
    stats = jax.tree.map(lambda a: np.asarray(a, np.float32), stats)
  return training_moments(config, sampler), stats


def training_moments(config: ml_collections.ConfigDict, sampler):
  """θ-moments of the law the model effectively trains on: `sampler`'s, RegMixup's
  `samplers.regmixup_equivalent`; None outside the mixup family."""
  if config.method.name not in methods_lib.MIXUP_FAMILY:
    return None
  law = sampler
  if config.method.name == "regmixup":
    law = samplers_lib.regmixup_equivalent(sampler, float(config.method.eta))
  return samplers_lib.theta_moments(law)


def method_context(config: ml_collections.ConfigDict, sampler, moments
                   ) -> methods_lib.MethodContext:
  return methods_lib.MethodContext(
      loss=losses_lib.get_loss(config.method.loss), sampler=sampler,
      theta_bar=float(moments.mean) if moments is not None else 1.0,
      granularity=config.mixing.granularity, pairing=config.mixing.pairing,
      fold=config.mixing.fold, global_draw=config.mixing.global_draw,
      eta=float(config.method.eta), num_draws=int(config.method.num_draws),
      estimator=config.method.estimator, num_probes=int(config.method.num_probes),
      terms=tuple(config.method.terms))


def create_or_restore_state(config: ml_collections.ConfigDict, model, tx, mesh, ckpt,
                            root, ds, *, num_runs: int | None = None):
  """The initial state replicated on `mesh`, or the latest restorable checkpoint's;
  and whether it was restored. With `num_runs`, `root` is (R, 2) (one key per run) and
  the state is the runs' states stacked on a leading axis."""
  sample = jnp.zeros((1,) + tuple(ds.input_shape), jnp.float32)
  init = lambda k: state_lib.create_state(model, tx, k, sample)
  if num_runs is not None:
    init = jax.vmap(init)
  state = jax.jit(init, out_shardings=step_lib.replicated(mesh))(root)
  restored = ckpt.restore_latest(state)
  if restored is None:
    return state, False
  state, meta = restored
  logging.info("Resumed from %s at step %d (epoch %d, batch %d of the epoch).",
               ckpt.directory, meta["step"], meta["epoch"], meta["batch_in_epoch"])
  return state, True


def open_writer(workdir: str, start: int, resumed: bool, *, tensorboard: bool = True
                ) -> writers.MetricWriter:
  """The metric writer (metrics.jsonl, and TensorBoard files unless `tensorboard` is
  False), its records after `start` (and the final ones) dropped."""
  writer = writers.MetricWriter(workdir, tensorboard=tensorboard)
  writer.truncate_after(start, drop_prefix="final")  # the final records are rewritten
  if resumed:
    writer.write(start, {"resumed_from_step": start})
  return writer


def make_step(config: ml_collections.ConfigDict, ds, mesh, model, tx, schedule, ctx,
              stats, root, *, num_runs: int | None = None,
              runs: step_lib.RunParams | None = None, steps_per_epoch: int | None = None,
              total: int | None = None
              ) -> tuple[Callable[[int], Callable], Callable[[int, int], tuple]]:
  """`(steps, batch_args)`: `steps(n)` is the compiled program that takes n steps per
  call (n = config.steps_per_call, or 1 for a remainder; `step.make_train_step`) and
  `batch_args(s, n)` its arguments after the state for steps s … s+n−1 (the training set
  held on device when it fits, else those steps' batches from the host, stacked when
  n > 1; then the statistics for the methods that use them).

  The programs are shared by every run whose config differs from this one's only in the
  seed (the runs of a sequential seed group, `train_group`): they are built and compiled
  once per process for them. `num_runs`: the programs of a vmapped group; `runs`: its
  runs' own λ-laws and optimizer values (`step.RunParams`), passed as the step's last
  argument (`steps_per_epoch` and `total` then build each run's optimizer).
  """
  num_train = int(ds.train_x.shape[0])
  augment_fn = None
  if config.augment.enabled:
    augment_fn = lambda k, im: data_lib.augment(
        k, im, crop_padding=config.augment.crop_padding, flip=config.augment.flip)
  train_bytes = ds.train_x.nbytes + ds.train_y.nbytes
  on_device = config.data_on_device and train_bytes <= MAX_ON_DEVICE_BYTES
  per_run = None if runs is None else tuple(f is not None for f in runs)
  cache_key = (_seedless_json(config) if runs is None else _law_group_key(config),
               per_run, num_train, on_device, num_runs,
               tuple(d.id for d in mesh.devices.flat), ds.num_classes)
  if _STEP_CACHE.get("key") != cache_key:
    _STEP_CACHE.clear()
    _STEP_CACHE.update(key=cache_key, programs={})
  programs = _STEP_CACHE["programs"]

  def steps(n: int) -> Callable:
    if n not in programs:
      programs[n] = step_lib.make_train_step(
          model=model, tx=tx, method=methods_lib.METHODS.get(config.method.name),
          ctx=ctx, mesh=mesh, num_classes=ds.num_classes, batch_size=config.batch_size,
          num_train=num_train if on_device else None, schedule=schedule,
          augment_fn=augment_fn, num_runs=num_runs, steps_per_call=n,
          make_tx=None if runs is None or runs.lr is None else (
              lambda lr, wd: optim.make_optimizer(config.optimizer, steps_per_epoch, total,
                                                  lr=lr, weight_decay=wd)))
    return programs[n]

  if on_device:
    x_src = step_lib.put_replicated(mesh, ds.train_x)
    y_src = step_lib.put_replicated(mesh, ds.train_y.astype(np.int32))
  else:
    logging.info("Training set (%.1f GB) fed from the host.", train_bytes / 1e9)
    data_key = jax.random.fold_in(jax.random.wrap_key_data(root), state_lib.KEY_DATA)
  stats_dev = None  # only the methods that use them get the statistics in the step
  if stats is not None and config.method.name in methods_lib.NEEDS_STATS:
    stats_dev = jax.tree.map(lambda a: step_lib.put_replicated(mesh, np.asarray(a)), stats)

  runs_dev = None if runs is None else jax.device_put(runs, step_lib.replicated(mesh))

  def batch_args(s: int, n: int = 1) -> tuple:
    if on_device:
      return x_src, y_src, stats_dev, runs_dev
    idx = np.stack([np.asarray(data_lib.batch_indices(
        data_key, t, num_examples=num_train, batch_size=config.batch_size))
                    for t in range(s, s + n)])
    if n == 1:
      idx = idx[0]
    axis = 0 if n == 1 else 1
    return (step_lib.put_sharded(mesh, ds.train_x[idx], axis=axis),
            step_lib.put_sharded(mesh, ds.train_y[idx].astype(np.int32), axis=axis),
            stats_dev, runs_dev)

  return steps, batch_args


# ----------------------------------------------------------------------------- the loop


def check_finite(state, ckpt, writer, failed: dict[int, int] | None = None) -> None:
  """Stops on a non-finite loss or gradient.

  A single run (`failed` None): raises NonFiniteLossError (after closing the writer and
  checkpointer) if a step of `state` had a non-finite loss or gradient; the message
  names the step and the last good checkpoint.

  A vmapped group (`failed` = {run: step} of the runs known to have failed, updated
  here): a newly failed run is logged with its step (its state stopped updating at that
  step, so the others go on); NonFiniteLossError only when every run has failed.
  """
  bad = np.atleast_1d(_to_host(state.first_nonfinite))
  if failed is not None:
    for r, b in enumerate(bad):
      if b != state_lib.NO_NONFINITE and r not in failed:
        failed[r] = int(b)
        logging.warning("Run %d of the group (%s): non-finite loss or gradient at step "
                        "%d; it stopped updating there and is marked failed; the other "
                        "runs continue.", r, writer.writers[r].path, b)
    if len(failed) < bad.size:
      return
  elif bad[0] == state_lib.NO_NONFINITE:
    return
  first = int(bad.min())
  last = ckpt.latest_step()
  msg = (f"Non-finite loss or gradient at step {first} (NaN/inf)"
         + (" in every run of the group" if failed is not None else "")
         + "; training stopped. "
         + (f"The last good checkpoint is step {last} in {ckpt.directory}. "
            if last is not None else "No checkpoint was saved before it. ")
         + "Lower the learning rate (config.optimizer.lr) or check the data, and "
         "rerun with a fresh --workdir (or add --config.allow_config_change=True to "
         "continue from the last good checkpoint).")
  logging.error(msg)
  writer.close()
  ckpt.close()
  raise NonFiniteLossError(msg)


def save(state, ckpt, writer, spe: int, failed: dict[int, int] | None = None) -> None:
  """A checkpoint of `state` (finite, or with its failed runs frozen at their last good
  step), with its position in the data."""
  check_finite(state, ckpt, writer, failed)
  s = int(np.atleast_1d(_to_host(state.step))[0])
  ckpt.save(s, state, {"step": s, "epoch": s // spe, "batch_in_epoch": s % spe,
                       "steps_per_epoch": spe})


def train(config: ml_collections.ConfigDict, state, steps, batch_args, predict, ds,
          ckpt, writer: writers.RunWriters, *, start: int, total: int, spe: int, devices,
          interrupt_at_step: int | None = None, num_runs: int | None = None):
  """Steps `start` .. `total` − 1 with logging, checkpoints and quick test evaluations;
  the final state is checkpointed. Returns the state and the time taken (seconds).

  `steps(n)` / `batch_args(s, n)` come from `make_step`: config.steps_per_call steps per
  dispatch (a `lax.scan`), single steps where a log, checkpoint or evaluation falls
  inside a block, so they happen at the same steps for every k.

  `num_runs`: `state` is a vmapped group's (leading run axis); metrics and evaluations
  go to each run's writer, and a run that fails is frozen, not fatal (`check_finite`).
  """
  logging.info("Training %s on %s with %s: %d steps (%d per epoch, %.1f epochs) on %d "
               "devices, global batch %d, starting at step %d%s.", config.method.name,
               config.dataset.name, config.model.name, total, spe, total / spe,
               len(devices), config.batch_size, start,
               f", {num_runs} runs vmapped" if num_runs else "")
  failed = {} if num_runs is not None else None
  t_start = t_last = time.time()
  s_last = start
  eval_every = config.eval.every_epochs * spe
  sync_every_step = len(devices) > 1 and any(d.platform == "cpu" for d in devices)
  k = int(config.steps_per_call)
  cadences = [c for c in (config.log_every_steps, config.checkpoint_every_steps,
                          eval_every) if c]

  def next_boundary(s: int) -> int:
    """The next step after s at which the loop logs, checkpoints, evaluates or stops."""
    b = min([total] + [(s // c + 1) * c for c in cadences])
    return min(b, interrupt_at_step) if interrupt_at_step and interrupt_at_step > s else b

  prev_loss = None
  s = start
  while s < total:
    # k steps per call up to the next boundary; single steps for a remainder.
    n = k if s + k <= next_boundary(s) else 1
    state, m = steps(n)(state, *batch_args(s, n))
    s += n
    # Bound the steps in flight: with several CPU devices, queued steps can starve the
    # collectives of the forced host devices of threads (an XLA rendezvous timeout), so
    # wait for each step; elsewhere (one CPU device, accelerators) keep one step in
    # flight, so that dispatching step s+1 overlaps step s.
    if sync_every_step:
      jax.block_until_ready(m["loss"])
    elif prev_loss is not None:
      jax.block_until_ready(prev_loss)
    prev_loss = m["loss"]
    done = s
    if interrupt_at_step is not None and done == interrupt_at_step:
      raise _Interrupted(f"interrupted after step {done}")
    if done % config.log_every_steps == 0 or done == total:
      m = {k: _to_host(v) for k, v in m.items()}
      check_finite(state, ckpt, writer, failed)
      now = time.time()
      rate = (done - s_last) / max(now - t_last, 1e-9)  # includes compilation at first
      t_last, s_last = now, done
      loss = np.asarray(m["loss"], np.float64)
      logging.info("step %d/%d (epoch %.2f) loss %.4f%s lr %.3g | %.1f steps/s, "
                   "%.0f examples/s, ETA %s", done, total, done / spe,
                   float(np.nanmean(loss)),
                   f" (mean of {loss.size} runs)" if loss.size > 1 else "",
                   float(np.atleast_1d(m["lr"])[0]), rate,
                   rate * config.batch_size * (num_runs or 1),
                   _fmt_time((total - done) / rate))
      writer.write(done, {"train/" + k: v for k, v in m.items() if k != "finite"}
                   | {"epoch": done / spe, "steps_per_sec": rate}, skip=failed or ())
    if done % config.checkpoint_every_steps == 0 and done != total:
      save(state, ckpt, writer, spe, failed)
    if eval_every and done % eval_every == 0 and done != total:
      check_finite(state, ckpt, writer, failed)
      for r in range(num_runs or 1):
        if failed and r in failed:
          continue
        variables = (state if num_runs is None else run_slice(state, r)).variables
        res = eval_lib.evaluate(predict, variables, ds, num_bins=config.eval.num_bins,
                                rescale=False, calibrate=False)
        logging.info("step %d%s: test accuracy %.4f nll %.4f ece %.4f", done,
                     f" (run {r})" if num_runs else "", res["accuracy"], res["nll"],
                     res["ece"])
        writer.write_run(r, done, {"test/" + k: v for k, v in res.items()})

  if start < total or ckpt.latest_step() != total:
    save(state, ckpt, writer, spe, failed)
  return state, time.time() - t_start


# ----------------------------------------------------------------------------- the end


def run_summary(config: ml_collections.ConfigDict, state, *, total: int, spe: int,
                num_devices: int, moments, train_time: float,
                resumed_from_step: int | None) -> dict[str, Any]:
  """What the run was (summary.json without the evaluations)."""
  return {
      "dataset": config.dataset.name, "model": config.model.name,
      "method": config.method.name, "sampler": config.sampler.name,
      "step": total, "epochs": total / spe, "num_devices": num_devices,
      "theta_bar": None if moments is None else float(moments.mean),
      "strength": None if moments is None else float(moments.strength),
      "train_time_s": train_time,
      "resumed_from_step": resumed_from_step,
      "process_index": jax.process_index(), "process_count": jax.process_count(),
      # Σ |w| over all parameters: a cheap fingerprint to compare runs and processes.
      "param_l1": float(sum(np.abs(_to_host(p)).astype(np.float64).sum()
                            for p in jax.tree.leaves(state.params))),
  }


def final_evaluation(config: ml_collections.ConfigDict, predict, state, ds):
  """{"test": metrics, "test_rescaled": metrics (the mixup family, if config.eval.rescale)}
  and the logits they were computed from (plain, rescaled)."""
  logits, logits_rescaled = {}, {}
  results = {"test": eval_lib.evaluate(predict, state.variables, ds,
                                       num_bins=config.eval.num_bins, rescale=False,
                                       logits=logits)}
  if config.eval.rescale and config.method.name in methods_lib.MIXUP_FAMILY:
    results["test_rescaled"] = eval_lib.evaluate(
        predict, state.variables, ds, num_bins=config.eval.num_bins, rescale=True,
        logits=logits_rescaled)
  return results, logits, logits_rescaled


# ----------------------------------------------------------------------------- helpers


def _seedless_json(config: ml_collections.ConfigDict) -> str:
  """The config as JSON without the keys a compiled step does not depend on."""
  d = json.loads(config_lib.config_to_json(config))
  for k in ("seed", "num_seeds", "group_mode", "log_every_steps", "tensorboard",
            "checkpoint_every_steps",
            "max_to_keep", "allow_config_change", "eval", "steps_per_call"):
    d.pop(k, None)
  d.get("dataset", {}).pop("data_dir", None)
  return json.dumps(d, sort_keys=True)


def _has_batch_stats(model, input_shape) -> bool:
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                             jnp.zeros((1,) + tuple(input_shape)),
                                             train=False))
  return bool(shapes.get("batch_stats"))


def _to_host(x) -> np.ndarray:
  """A replicated (possibly multi-process) array as a host NumPy array."""
  if getattr(x, "is_fully_addressable", True):
    return np.asarray(x)
  return np.asarray(x.addressable_data(0))


def _fmt_time(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
