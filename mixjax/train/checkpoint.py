"""Checkpoints through Orbax's `CheckpointManager`.

A checkpoint holds the whole `TrainState` (params, batch_stats, opt_state, step, the
root PRNG key, first_nonfinite) plus JSON metadata with the data position (`epoch`,
`batch_in_epoch`, `steps_per_epoch`). The example order is a function of (key, epoch),
so restoring the state is enough for the resumed run to see exactly the batches, λ draws
and augmentations the uninterrupted run would have seen. `max_to_keep` bounds the disk
use; `restore_latest` restores the newest checkpoint with the shardings of a template
state, or returns None when the directory holds none.

A checkpoint that cannot be restored (files truncated or corrupted, or a state of
another shape) is never papered over: `restore_latest` tries older ones in turn, and once
one restores it deletes the newer unreadable ones with a one-line warning; when none can
be restored it raises `WorkdirError`, one line naming the folder, the kind of problem
(damaged, or a state of other shapes or structure) and what to do (the run must not
start from scratch over existing checkpoints). Orbax's and TensorStore's own words (a
900-character TensorStore spec for a truncated file) go to the absl log at INFO, not
to the message. A folder Orbax did not finish writing (killed mid-save) is not a
checkpoint: Orbax renames it into place only once everything is written.

Quiet failures: Orbax restores in a fresh asyncio event loop and closes it as soon as the
restore raises, abandoning the reads still in flight. Each then prints a traceback as an
unraisable exception (tens of them for one damaged checkpoint, on stderr and in pytest's
warnings summary): a TensorStore read that finishes calls back into the closed loop
("RuntimeError: Event loop is closed"), and an Orbax read coroutine closed by the
garbage collector turns its GeneratorExit into an Exception. They carry nothing: the
restore already failed and is reported. `restore` therefore installs, once, a
`sys.unraisablehook` that drops exactly those two (`_is_abandoned_read`) and passes
every other unraisable exception to the hook it replaced. Orbax's own warnings and
errors while it reads checkpoints (opening the manager, `restore`) are logged at INFO.

Never call `save` with a non-finite state: the loop checks `first_nonfinite` first, so
the newest checkpoint is always the last good one.
"""
from __future__ import annotations

import logging as py_logging
import os
import re
import sys
import traceback
from typing import Any

from absl import logging
import jax
import orbax.checkpoint as ocp

from mixjax.errors import WorkdirError, one_line

# > 0 while Orbax reads checkpoints (opening a manager reads every step's metadata, and
# `restore`); it logs from its own threads, so the flag is process-wide.
_reading = [0]


class _QuietOrbax(py_logging.Filter):
  """Drops Orbax's INFO chatter (a dozen lines per save) from the absl log, and logs
  Orbax's warnings and errors while it reads checkpoints at INFO (a damaged checkpoint
  is reported by `restore_latest` itself, in one line)."""

  def filter(self, record: py_logging.LogRecord) -> bool:
    if "/orbax/" not in record.pathname or record.levelno < py_logging.WARNING:
      return "/orbax/" not in record.pathname
    if _reading[0] and record.levelno < py_logging.CRITICAL:
      record.levelno, record.levelname = py_logging.INFO, "INFO"
      return py_logging.getLogger("absl").isEnabledFor(py_logging.INFO)
    return True


py_logging.getLogger("absl").addFilter(_QuietOrbax())


class _QuietAbandonedGather(py_logging.Filter):
  """Drops asyncio's "exception was never retrieved" error for a future whose exception
  was raised in Orbax's checkpoint code: the gather of a restore that failed (its error
  is reported by `restore_latest`), collected later by the garbage collector, whose
  traceback would otherwise reach stderr at any later point of the process. Every other
  asyncio record passes."""

  def filter(self, record: py_logging.LogRecord) -> bool:
    if "exception was never retrieved" not in record.getMessage() or not record.exc_info:
      return True
    tb = record.exc_info[2]
    return not any(f"{os.sep}orbax{os.sep}checkpoint{os.sep}" in f.filename
                   for f in traceback.extract_tb(tb))


py_logging.getLogger("asyncio").addFilter(_QuietAbandonedGather())


def _is_abandoned_read(unraisable) -> bool:
  """An unraisable exception of a read that a failed restore abandoned: a TensorStore
  read finishing after Orbax closed its event loop (RuntimeError 'Event loop is closed'
  raised in asyncio's `call_soon_threadsafe`), or an Orbax read coroutine closed when
  it is garbage-collected (its `except BaseException` turns the GeneratorExit into an
  Exception)."""
  exc = unraisable.exc_value
  if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
    return any(f.name == "call_soon_threadsafe"
               and f.filename.endswith(os.path.join("asyncio", "base_events.py"))
               for f in traceback.extract_tb(unraisable.exc_traceback))
  code = getattr(unraisable.object, "cr_code", None)
  return (isinstance(exc, Exception) and isinstance(exc.__cause__, GeneratorExit)
          and code is not None
          and f"{os.sep}orbax{os.sep}checkpoint{os.sep}" in code.co_filename)


def _drop_abandoned_reads() -> None:
  """Wraps the current `sys.unraisablehook` (once) so that it drops the tracebacks of
  reads that a failed restore abandoned (`_is_abandoned_read`; see the module
  docstring); every other unraisable exception goes to the wrapped hook."""
  previous = sys.unraisablehook
  if getattr(previous, "drops_abandoned_reads", False):
    return

  def hook(unraisable):
    if not _is_abandoned_read(unraisable):
      previous(unraisable)

  hook.drops_abandoned_reads = True
  sys.unraisablehook = hook


def _problem(error: BaseException) -> str:
  """What a failed restore says about the checkpoint, in a few words."""
  text = str(error)
  shapes = re.search(r"Requested shape: (\(.*?\)) is not compatible with the stored "
                     r"shape: (\(.*?\))", text)
  if shapes:
    return (f"holds arrays of other shapes than this run's state (stored "
            f"{shapes.group(2)}, here {shapes.group(1)})")
  if "tree structures do not match" in text:
    return "holds a state of another structure than this run's"
  return "cannot be read (damaged?)"



class Checkpointer:
  """Thin wrapper of `ocp.CheckpointManager` for `TrainState` + metadata."""

  def __init__(self, workdir: str, *, max_to_keep: int = 2, asynchronous: bool = False):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    _reading[0] += 1
    try:
      self._manager = ocp.CheckpointManager(
          self.directory,
          options=ocp.CheckpointManagerOptions(
              max_to_keep=max_to_keep, create=True,
              enable_async_checkpointing=asynchronous))
    finally:
      _reading[0] -= 1

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, metadata: dict[str, Any]) -> None:
    """Saves `state` and `metadata` under `step` (all processes must call it)."""
    self._manager.save(int(step), args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), metadata=ocp.args.JsonSave(metadata)),
        force=True)
    self._manager.wait_until_finished()

  def restore(self, step: int, template: Any = None) -> tuple[Any, dict[str, Any]]:
    """Restores checkpoint `step` with the structure, dtypes and shardings of `template`
    (a TrainState); without a template, as the saved tree of arrays (inspection)."""
    abstract = None if template is None else jax.tree.map(
        ocp.utils.to_shape_dtype_struct, template)
    _drop_abandoned_reads()
    _reading[0] += 1
    try:
      out = self._manager.restore(int(step), args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract), metadata=ocp.args.JsonRestore()))
    finally:
      _reading[0] -= 1
    return out["state"], dict(out["metadata"])

  def metadata(self, step: int) -> dict[str, Any]:
    """Checkpoint `step`'s JSON metadata alone (the data position; a streamed run's
    loader position under "input")."""
    _reading[0] += 1
    try:
      out = self._manager.restore(int(step), args=ocp.args.Composite(
          metadata=ocp.args.JsonRestore()))
    finally:
      _reading[0] -= 1
    return dict(out["metadata"])

  def restore_latest(self, template: Any) -> tuple[Any, dict[str, Any]] | None:
    """The newest checkpoint that restores into `template`, or None if there is none.

    Unreadable newer checkpoints are deleted, with a one-line warning each, once an older
    one restored (so the resumed run can save those steps again). Why each one failed
    (Orbax's and TensorStore's text) is logged at INFO.

    Raises:
      WorkdirError: there are checkpoints and none of them can be restored; one line
        naming the folder, the steps, the problem (damaged, or a state of other shapes
        or structure: `_problem`) and the fix.
    """
    steps = sorted(self.all_steps(), reverse=True)
    failed = []
    for step in steps:
      try:
        out = self.restore(step, template)
      except Exception as e:  # pylint: disable=broad-except  (Orbax/TensorStore errors)
        failed.append((step, _problem(e)))
        logging.info("Checkpoint step %d in %s cannot be restored: %s: %s", step,
                     self.directory, type(e).__name__, one_line(e))
        continue
      for bad, problem in failed:
        logging.warning("Checkpoint step %d in %s cannot be restored: it %s; deleting it "
                        "and resuming from step %d.", bad, self.directory, problem, step)
        self._manager.delete(bad)
      return out
    if not failed:
      return None
    which = (f"step {failed[0][0]}" if len(failed) == 1
             else f"steps {', '.join(str(s) for s, _ in failed)}")
    problem = failed[0][1]
    if problem.startswith("cannot be read"):
      raise WorkdirError(
          f"The checkpoint{'s' if len(failed) > 1 else ''} at {which} in {self.directory} "
          "cannot be read (damaged?): delete that folder to start over (its progress is "
          "lost) or use a fresh --workdir.")
    raise WorkdirError(
        f"The checkpoints in {self.directory} ({which}): the newest {problem}. The model "
        "or another setting that shapes the state differs from the run that wrote them: "
        "use a fresh --workdir.")

  def close(self) -> None:
    """Waits for pending saves and closes the manager (its threads and files)."""
    self._manager.wait_until_finished()
    self._manager.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
