"""A trained run, for analysis: its config, program (model, dataset, schedule, method
context) and the model variables at any of its checkpoints (`TrainedRun`)."""
from __future__ import annotations

import json
import os
from typing import Any

import jax

from mixjax.train import checkpoint as checkpoint_lib
from mixjax.train import loop
from mixjax.train import program as program_lib
from mixjax.train import setup
from mixjax.train import state as state_lib
from mixjax.train import workdir as workdir_lib


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
    program: its `program.Program`, assembled without statistics, step or predictor
      (`assemble(..., train=False)`): the model, the schedule, the optimizer, the
      method and the run's context (its law and the moments of the law it trained on).
    model: the Linen model it trained (`program.model`).
    ds: the dataset (`setup.load_data`; pass `ds` to reuse one already loaded).
    steps: the checkpointed steps, ascending.
  """

  def __init__(self, run_dir: str, *, ds=None):
    with open(os.path.join(run_dir, "config.json")) as f:
      self.config = workdir_lib.config_from_json(json.load(f))
    summary = workdir_lib.finished_summary(run_dir) or {}
    where = summary.get("checkpoint") or {"workdir": ".", "run": None, "num_runs": None}
    self.program = program_lib.assemble(
        [self.config], ds if ds is not None else setup.load_data_once(self.config),
        devices=jax.local_devices(), train=False)
    self.ds, self.model = self.program.ds, self.program.model
    self._run, num_runs = where["run"], where["num_runs"]
    self._ckpt = checkpoint_lib.Checkpointer(
        os.path.normpath(os.path.join(run_dir, where["workdir"])))
    self.steps = sorted(self._ckpt.all_steps())
    self._template = program_lib.state_template(self.program, num_runs)

  def state(self, step: int | None = None) -> state_lib.TrainState:
    """The run's TrainState at checkpoint `step` (default: the last)."""
    if not self.steps:
      raise FileNotFoundError(f"No checkpoint in {self._ckpt.directory}.")
    state, _ = self._ckpt.restore(self.steps[-1] if step is None else step, self._template)
    return state if self._run is None else loop.run_slice(state, self._run)

  def variables(self, step: int | None = None) -> dict[str, Any]:
    """{"params", "batch_stats"} at checkpoint `step` (default: the last), for
    `model.apply(variables, x, train=False)`."""
    return self.state(step).variables

  def close(self) -> None:
    self._ckpt.close()
