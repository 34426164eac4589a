"""Metric writers: `WORKDIR/metrics.jsonl` always, TensorBoard event files via
tensorboardX when it is installed; both from process 0 only (other processes get a
no-op writer), so a multi-host run writes each record once.
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping

from absl import logging
import jax
import numpy as np

METRICS_FILE = "metrics.jsonl"


def _py(v: Any) -> Any:
  if isinstance(v, (np.ndarray, np.generic, jax.Array)):
    v = np.asarray(v)
    return v.item() if v.ndim == 0 else v.tolist()
  return v


class MetricWriter:
  """Writes `{"step": s, **scalars}` records (one JSON line each) and TB scalars.

  `truncate_after(step)` drops JSONL records written after `step`: on resume from a
  checkpoint at step s, the records a killed run wrote past s are replaced by the
  resumed run's, so the file reads as one uninterrupted run.
  """

  def __init__(self, workdir: str, *, enabled: bool | None = None,
               tensorboard: bool = True):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.path = os.path.join(workdir, METRICS_FILE)
    self._tb = None
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      if tensorboard:
        try:
          import tensorboardX  # pylint: disable=g-import-not-at-top
          self._tb = tensorboardX.SummaryWriter(os.path.join(workdir, "tb"))
        except ImportError:
          logging.info("tensorboardX not installed: writing %s only.", self.path)

  def truncate_after(self, step: int, *, drop_prefix: str | None = None) -> None:
    """Drops the records after `step` (and those with a key starting with drop_prefix)."""
    if not self.enabled or not os.path.exists(self.path):
      return
    with open(self.path) as f:
      records = [json.loads(line) for line in f if line.strip()]
    keep = lambda r: r.get("step", 0) <= step and not (
        drop_prefix and any(k.startswith(drop_prefix) for k in r))
    with open(self.path, "w") as f:
      for r in records:
        if keep(r):
          f.write(json.dumps(r) + "\n")

  def write(self, step: int, scalars: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), **{k: _py(v) for k, v in scalars.items()}}
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
    if self._tb is not None:
      for k, v in record.items():
        if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
          self._tb.add_scalar(k, v, int(step))

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      self._tb = None


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  """All records of `WORKDIR/metrics.jsonl` in order."""
  with open(os.path.join(workdir, METRICS_FILE)) as f:
    return [json.loads(line) for line in f if line.strip()]
