"""The training loop of one program (R ≥ 1 runs, `groups.train_runs`): steps with
logging, checkpoints and quick evaluations, and the stop on a non-finite loss.

Per dispatch the loop calls the program's compiled `TrainStep` (`program.make_step`)
for k = config.steps_per_call steps (a `lax.scan`), or single steps where a log,
checkpoint or evaluation falls inside a block, so these happen at the same steps for
every k:
- a log line with step rate and ETA every `log_every_steps` (metrics.jsonl, TensorBoard);
- a checkpoint every `checkpoint_every_steps` (never of a non-finite state: a run whose
  loss or gradient turns NaN/inf stops updating at that step; the loop stops when every
  run has, naming the step and the last good checkpoint);
- a quick test evaluation every `eval.every_epochs` (the final evaluation's compiled
  program; the summable metrics, and the pooled ones only with
  `eval.pooled_every_epoch`).
"""
from __future__ import annotations

import time

from absl import logging
import jax
import numpy as np

from mixjax import eval as eval_lib
from mixjax.errors import NonFiniteLossError
from mixjax.sharding import to_host
from mixjax.train import state as state_lib
from mixjax.train import writers


class Interrupted(Exception):
  """Raised by `interrupt_at_step` (tests): an abrupt stop, nothing saved."""


def run_slice(state, r: int):
  """Run r of a stacked (group) state, as the state of a single run."""
  return jax.tree.map(lambda a: a[r], state)


def check_finite(state, ckpt, writer, failed: dict[int, int]) -> None:
  """Stops when every run has had a non-finite loss or gradient.

  `failed` ({run: step} of the runs known to have failed) is updated here: a newly
  failed run is logged with its step (its state stopped updating at that step, so the
  others of a group go on). When every run has failed (a lone run: when it has),
  NonFiniteLossError is raised; the message names the step and the last good checkpoint.
  Closing the writer and the checkpointer is the caller's (`groups.train_program` closes
  them on every way out).
  """
  bad = np.atleast_1d(to_host(state.first_nonfinite))
  for r, b in enumerate(bad):
    if b != state_lib.NO_NONFINITE and r not in failed:
      failed[r] = int(b)
      if bad.size > 1:
        logging.warning("Run %d of the group (%s): non-finite loss or gradient at step "
                        "%d; it stopped updating there and is marked failed; the other "
                        "runs continue.", r, writer.writers[r].path, b)
  if len(failed) < bad.size:
    return
  first = int(bad.min())
  last = ckpt.latest_step()
  msg = (f"Non-finite loss or gradient at step {first} (NaN/inf)"
         + (" in every run of the group" if bad.size > 1 else "")
         + "; training stopped. "
         + (f"The last good checkpoint is step {last} in {ckpt.directory}. "
            if last is not None else "No checkpoint was saved before it. ")
         + "Lower the learning rate (config.optimizer.lr) or check the data, and "
         "rerun with a fresh --workdir (or add --config.allow_config_change=True to "
         "continue from the last good checkpoint).")
  logging.info(msg)  # the log file; the user sees it once, as main's error line
  raise NonFiniteLossError(msg, step=first)  # the caller closes `ckpt` and `writer`


def save(state, ckpt, writer, spe: int, failed: dict[int, int], feed=None) -> None:
  """A checkpoint of `state` (finite, or with its failed runs frozen at their last good
  step), with its position in the data; for a streamed split also the loader's
  position, metadata "input" (`feed.state(step)`: `feeding.StreamFeeder`)."""
  check_finite(state, ckpt, writer, failed)
  s = int(np.atleast_1d(to_host(state.step))[0])
  meta = {"step": s, "epoch": s // spe, "batch_in_epoch": s % spe, "steps_per_epoch": spe}
  if hasattr(feed, "state"):
    meta["input"] = feed.state(s)
  ckpt.save(s, state, meta)


def train(program, state, ckpt, writer: writers.RunWriters, *, start: int,
          interrupt_at_step: int | None = None):
  """Steps `start` .. total − 1 of `program` (a `program.Program`) with logging,
  checkpoints and quick test evaluations; the final state is checkpointed. Returns the
  state and the time taken (seconds).

  `program.step(state, s, n)` is the program's `TrainStep`: config.steps_per_call steps
  per dispatch (a `lax.scan`), single steps where a log, checkpoint or evaluation falls
  inside a block, so they happen at the same steps for every k.

  With `program.num_runs`, `state` is a vmapped group's (leading run axis); metrics and
  evaluations go to each run's writer, and a run that fails is frozen, not fatal
  (`check_finite`).

  `interrupt_at_step`: tests only: raise `Interrupted` after this many steps, nothing
  saved, as a killed process would stop.
  """
  config, step, predict, ds = program.config, program.step, program.predict, program.ds
  feed = getattr(step, "feed", None)
  total, spe = program.schedule.total_steps, program.schedule.steps_per_epoch
  devices, num_runs = program.devices, program.num_runs
  logging.info("Training %s on %s with %s: %d steps (%d per epoch, %.1f epochs) on %d "
               "devices, global batch %d, starting at step %d%s.", config.method.name,
               config.dataset.name, config.model.name, total, spe, total / spe,
               len(devices), config.batch_size, start,
               f", {num_runs} runs vmapped" if num_runs else "")
  failed: dict[int, int] = {}
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
    state, m = step(state, s, n)
    if s == start:  # compilation (unless cached) and the first step
      jax.block_until_ready(m["loss"])
      logging.info("First training step took %.2f s (its compilation included).",
                   time.time() - t_start)
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
      raise Interrupted(f"interrupted after step {done}")
    if done % config.log_every_steps == 0 or done == total:
      m = {k: to_host(v) for k, v in m.items()}
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
      save(state, ckpt, writer, spe, failed, feed)
    if eval_every and done % eval_every == 0 and done != total:
      check_finite(state, ckpt, writer, failed)
      for r in range(num_runs or 1):
        if failed and r in failed:
          continue
        variables = (state if num_runs is None else run_slice(state, r)).variables
        res = eval_lib.evaluate(predict, variables, ds, num_bins=config.eval.num_bins,
                                rescale=False, calibrate=False,
                                pooled=config.eval.pooled_every_epoch)
        logging.info("step %d%s: test accuracy %.4f nll %.4f ece %.4f", done,
                     f" (run {r})" if num_runs else "", res["accuracy"], res["nll"],
                     res["ece"])
        writer.write_run(r, done, {"test/" + k: v for k, v in res.items()})

  if start < total or ckpt.latest_step() != total:
    save(state, ckpt, writer, spe, failed, feed)
  return state, time.time() - t_start


def _fmt_time(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
