"""The trainer's entry points: `train_and_evaluate` (one run, `loop.train_run`, or a seed
group, `--config.num_seeds=K`, `train_group`) and sweeps (`--sweep`, `train_sweep`).

A seed group trains K seeds of one config, vmapped in one program (the state stacked on
a leading run axis, one Orbax checkpoint for all) or one after another sharing one
compiled step (`group_mode`). A sweep trains every point of a config file's
`get_sweep()`; points that differ only in the seed, the λ-law's parameters (one sampler
structure) and the optimizer's lr and weight decay train as one vmapped program
(`law_groups`, `step.RunParams`). Every run writes what a single run writes, in its own
folder, and equals the same run trained alone.
"""
from __future__ import annotations

import json
import os
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections

from mixjax import eval as eval_lib
from mixjax import samplers as samplers_lib
from mixjax.train import checkpoint as checkpoint_lib
from mixjax.train import config as config_lib
from mixjax.train import loop
from mixjax.train import optim
from mixjax.train import setup
from mixjax.train import state as state_lib
from mixjax.train import step as step_lib
from mixjax.train import writers


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       devices=None, interrupt_at_step: int | None = None
                       ) -> dict[str, Any]:
  """Trains and evaluates as configured (one run, `loop.train_run`, or a seed group of
  config.num_seeds runs, `train_group`); resumes from WORKDIR's latest checkpoint.

  Args:
    config: a config of `experiments/*.py` (see `mixjax.train.config`).
    workdir: output directory (checkpoints/, metrics.jsonl, tb/, data_stats.npz,
      summary.json).
    devices: the devices of the mesh (default: all devices of all processes).
    interrupt_at_step: tests only: stop abruptly (nothing saved, `loop._Interrupted` raised)
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
    return train_group(config, workdir, devices=devices, interrupt_at_step=interrupt_at_step)
  return loop.train_run(config, workdir, devices=devices, interrupt_at_step=interrupt_at_step)


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


def group_mode(config: ml_collections.ConfigDict, model, ds, devices) -> str:
  """"vmap" or "sequential" for a seed group (config.group_mode, or the choice of
  "auto"): sequential where vmapping is slower or impossible, i.e. convolutional models
  on CPU (XLA:CPU runs a vmapped convolution slower than the same runs one after
  another) and training sets fed from the host; vmap otherwise."""
  fits = config.data_on_device and (
      ds.train_x.nbytes + ds.train_y.nbytes <= setup.MAX_ON_DEVICE_BYTES)
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
  return "sequential" if on_cpu and setup.has_convolution(model, ds.input_shape) else "vmap"


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
  ds, spe = setup.load_data(config)
  model = setup.make_model(config, ds)
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
      summary = loop.train_run(c, d, devices=devices, interrupt_at_step=interrupt_at_step,
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
  its index in it ("checkpoint"), for `trained.TrainedRun`.
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
  run_samplers = [setup.training_sampler(c) for c in runs]
  run_moments = [setup.training_moments(c, s) for c, s in zip(runs, run_samplers)]
  moments, stats = setup.training_law_and_stats(config, run_samplers[0], ds, workdir)
  params = run_params(runs, run_samplers, run_moments)
  ctx = setup.method_context(config, run_samplers[0], moments)
  tx, schedule = optim.make_optimizer(config.optimizer, spe, total)
  roots = jnp.stack([jax.random.key_data(jax.random.key(c.seed)) for c in runs])
  state, resumed = setup.create_or_restore_state(config, model, tx, mesh, ckpt, roots,
                                                 ds, num_runs=num_runs)
  start = int(setup.to_host(state.step)[0])
  writer = writers.RunWriters([
      setup.open_writer(d, start, resumed, tensorboard=config.tensorboard) for d in dirs])
  steps, batch_args = setup.make_step(config, ds, mesh, model, tx, schedule, ctx, stats,
                                      roots, num_runs=num_runs, runs=params)
  predict = eval_lib.Predictor(model, config.eval.batch_size,
                               step_lib.make_mesh(jax.local_devices()), stats=stats,
                               theta_bar=ctx.theta_bar)
  state, train_time = loop.train(
      config, state, steps, batch_args, predict, ds, ckpt, writer, start=start,
      total=total, spe=spe, devices=devices, interrupt_at_step=interrupt_at_step,
      num_runs=num_runs)
  summaries = {}
  for r, (c, d) in enumerate(zip(runs, dirs)):
    run_state = loop.run_slice(state, r)
    summary = loop.run_summary(c, run_state, total=total, spe=spe,
                               num_devices=len(devices), moments=run_moments[r],
                               train_time=train_time,
                               resumed_from_step=start if resumed else None)
    summary["seed"] = int(c.seed)
    summary["checkpoint"] = {"workdir": os.path.relpath(workdir, d), "run": r,
                             "num_runs": num_runs}
    bad = int(setup.to_host(run_state.first_nonfinite))
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
      results, logits, logits_rescaled = loop.final_evaluation(c, run_predict, run_state, ds)
      summary.update(results)
      writer.write_run(r, total, loop.final_records(summary))
      writers.write_summary(d, summary, ds, logits, logits_rescaled)
    summaries[os.path.basename(d)] = summary
  writer.close()
  ckpt.close()
  return summaries


def run_params(runs, run_samplers, run_moments) -> step_lib.RunParams | None:
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
    key = setup.law_group_key(c)
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
  ds, spe = setup.load_data(base)
  model = setup.make_model(base, ds)
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
    finished = {points[i][0]: done(points[i][0]) for i in idx}  # before this session
    summaries, ds = {}, None
    if len(idx) > 1 and not any(finished.values()):
      try:
        group_summaries, ds = _sweep_group(points, idx, workdir, devices)
        summaries = group_summaries or {}
      except loop.NonFiniteLossError as e:
        for i in idx:
          failed.append(points[i][0])
          results[points[i][0]] = {"status": "failed", "error": str(e)}
        continue
    for i in idx:
      name, c = points[i]
      summary = summaries.get(name) or finished[name]
      if summary is None:
        logging.info("Sweep point %s.", name)
        try:
          if ds is None:  # (a point with num_seeds > 1 is a group of its own: ds is None)
            summary = train_and_evaluate(c, os.path.join(workdir, name), devices=devices)
          else:  # a point of a law group that could not be vmapped: its data is loaded
            summary = loop.train_run(c, os.path.join(workdir, name), devices=devices,
                                     ds=ds)
        except loop.NonFiniteLossError as e:
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
    raise loop.NonFiniteLossError(
        f"{len(failed)} of {len(points)} sweep points stopped on a non-finite loss: "
        f"{', '.join(failed)} (their messages are in {workdir}/summary.json); the other "
        "points finished.")
  return results
