"""`train_run(config, workdir)`: one run, from data to `summary.json`, and its loop.

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
     test-time rescaling (docs/THEORY.md §5, `theory.rescaled` with θ̄ of the training law,
     `samplers.regmixup_equivalent` for RegMixup), side by side. Printed and written to
     `WORKDIR/summary.json`; the logits and labels it was computed from go to
     `WORKDIR/predictions.npz` (`writers.write_summary`).
"""
from __future__ import annotations

import os
import time
from typing import Any

from absl import logging
import jax
import ml_collections
import numpy as np

from mixjax import data as data_lib
from mixjax import eval as eval_lib
from mixjax.train import checkpoint as checkpoint_lib
from mixjax.train import config as config_lib
from mixjax.train import methods as methods_lib
from mixjax.train import optim
from mixjax.train import setup
from mixjax.train import state as state_lib
from mixjax.train import step as step_lib
from mixjax.train import writers


class NonFiniteLossError(FloatingPointError):
  """The loss or a gradient became NaN/inf; the message names the step."""


class _Interrupted(Exception):
  """Raised by `interrupt_at_step` (tests): an abrupt stop, nothing saved."""


def train_run(config, workdir: str, *, devices, interrupt_at_step=None, ds=None):
  """One run (config.num_seeds == 1), the steps of the module docstring; `ds`: the
  dataset when already loaded (a sequential seed group, a sweep). Returns the summary.
  The entry point is `groups.train_and_evaluate`, which validates the config first."""
  workdir = config_lib.make_workdir(workdir)
  ckpt = checkpoint_lib.Checkpointer(workdir, max_to_keep=config.max_to_keep)
  config_lib.check_workdir_config(
      config, workdir, write=jax.process_index() == 0,
      has_run=bool(ckpt.all_steps())
      or os.path.exists(os.path.join(workdir, writers.SUMMARY_FILE)))
  mesh = step_lib.make_mesh(devices)

  if ds is None:
    ds, spe = setup.load_data(config)
  else:
    spe = data_lib.steps_per_epoch(int(ds.train_x.shape[0]), config.batch_size)
  sampler = setup.training_sampler(config)
  model = setup.make_model(config, ds)
  total = config_lib.total_steps(config, int(ds.train_x.shape[0]))
  moments, stats = setup.training_law_and_stats(config, sampler, ds, workdir)
  ctx = setup.method_context(config, sampler, moments)
  tx, schedule = optim.make_optimizer(config.optimizer, spe, total)
  root = jax.random.key_data(jax.random.key(config.seed))
  state, resumed = setup.create_or_restore_state(config, model, tx, mesh, ckpt, root, ds)
  start = int(setup.to_host(state.step))
  writer = writers.RunWriters([setup.open_writer(workdir, start, resumed,
                                              tensorboard=config.tensorboard)])
  steps, batch_args = setup.make_step(config, ds, mesh, model, tx, schedule, ctx, stats, root)
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


def run_slice(state, r: int):
  """Run r of a stacked (group) state, as the state of a single run."""
  return jax.tree.map(lambda a: a[r], state)


def final_records(summary: dict[str, Any]) -> dict[str, Any]:
  return ({"final/" + k: v for k, v in summary["test"].items()}
          | {"final_rescaled/" + k: v for k, v in summary.get("test_rescaled", {}).items()})


# ----------------------------------------------------------------------------- setup


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
  bad = np.atleast_1d(setup.to_host(state.first_nonfinite))
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
  s = int(np.atleast_1d(setup.to_host(state.step))[0])
  ckpt.save(s, state, {"step": s, "epoch": s // spe, "batch_in_epoch": s % spe,
                       "steps_per_epoch": spe})


def train(config: ml_collections.ConfigDict, state, steps, batch_args, predict, ds,
          ckpt, writer: writers.RunWriters, *, start: int, total: int, spe: int, devices,
          interrupt_at_step: int | None = None, num_runs: int | None = None):
  """Steps `start` .. `total` − 1 with logging, checkpoints and quick test evaluations;
  the final state is checkpointed. Returns the state and the time taken (seconds).

  `steps(n)` / `batch_args(s, n)` come from `setup.make_step`: config.steps_per_call steps per
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
      m = {k: setup.to_host(v) for k, v in m.items()}
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
      "param_l1": float(sum(np.abs(setup.to_host(p)).astype(np.float64).sum()
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


def _fmt_time(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
