"""Checkpoints through Orbax's `CheckpointManager`.

A checkpoint holds the whole `TrainState` (params, batch_stats, opt_state, step, the
root PRNG key, first_nonfinite) plus JSON metadata with the data position (`epoch`,
`batch_in_epoch`, `steps_per_epoch`). The example order is a function of (key, epoch),
so restoring the state is enough for the resumed run to see exactly the batches, λ draws
and augmentations the uninterrupted run would have seen. `max_to_keep` bounds the disk
use; `restore_latest` restores the newest checkpoint with the shardings of a template
state, or returns None when the directory holds none.

A checkpoint that cannot be restored (files truncated or corrupted, or a state of
another shape) is never papered over: `restore_latest` logs a warning naming it, deletes
it and restores the previous one, trying older ones in turn; when none can be restored it
raises `WorkdirError` naming the folder (the run must not start from scratch over
existing checkpoints). A folder Orbax did not finish writing (killed mid-save) is not a
checkpoint: Orbax renames it into place only once everything is written.

Never call `save` with a non-finite state: the loop checks `first_nonfinite` first, so
the newest checkpoint is always the last good one.
"""
from __future__ import annotations

import logging as py_logging
import os
from typing import Any

from absl import logging
import jax
import orbax.checkpoint as ocp

from mixjax.errors import WorkdirError, one_line


class _QuietOrbax(py_logging.Filter):
  """Drops Orbax's INFO chatter (a dozen lines per save) from the absl log."""

  def filter(self, record: py_logging.LogRecord) -> bool:
    return record.levelno >= py_logging.WARNING or "/orbax/" not in record.pathname


py_logging.getLogger("absl").addFilter(_QuietOrbax())



class Checkpointer:
  """Thin wrapper of `ocp.CheckpointManager` for `TrainState` + metadata."""

  def __init__(self, workdir: str, *, max_to_keep: int = 2, asynchronous: bool = False):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True,
            enable_async_checkpointing=asynchronous))

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
    out = self._manager.restore(int(step), args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), metadata=ocp.args.JsonRestore()))
    return out["state"], dict(out["metadata"])

  def restore_latest(self, template: Any) -> tuple[Any, dict[str, Any]] | None:
    """The newest checkpoint that restores into `template`, or None if there is none.

    Unreadable newer checkpoints are logged and deleted once an older one restored (so
    the resumed run can save those steps again).

    Raises:
      WorkdirError: there are checkpoints and none of them can be restored.
    """
    steps = sorted(self.all_steps(), reverse=True)
    failed = []
    for step in steps:
      try:
        out = self.restore(step, template)
      except Exception as e:  # pylint: disable=broad-except  (Orbax/TensorStore errors)
        failed.append((step, f"{type(e).__name__}: {one_line(e, 280)}"))
        logging.warning("Checkpoint step %d in %s cannot be restored (%s); trying the "
                        "previous one.", step, self.directory, failed[-1][1])
        continue
      for bad, _ in failed:
        logging.warning("Deleting unreadable checkpoint step %d in %s; resuming from "
                        "step %d.", bad, self.directory, step)
        self._manager.delete(bad)
      return out
    if not failed:
      return None
    raise WorkdirError(
        f"None of the {len(steps)} checkpoint(s) in {self.directory} (steps "
        f"{', '.join(str(s) for s, _ in failed)}) can be restored into this run's "
        f"state; the newest fails with: {failed[0][1]}. If the model or another "
        "setting that changes the state's shapes differs from the run that wrote them, "
        "use a fresh --workdir; if the files are damaged, delete that folder to start "
        "over (its training progress is lost).")

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
