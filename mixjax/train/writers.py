"""What a run writes: metrics (`WORKDIR/metrics.jsonl` always, TensorBoard event files via
tensorboardX when it is installed; both from process 0 only, other processes get a no-op
writer, so a multi-host run writes each record once) and the final evaluation
(`summary.json`, its printed table, and `predictions.npz`).
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any, Mapping

from absl import logging
import jax
import numpy as np

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
PREDICTIONS_FILE = "predictions.npz"
# The evaluations a seed group's summary averages over its runs.
GROUP_COLUMNS = ("test", "val", "test_rescaled", "val_rescaled")


def _py(v: Any) -> Any:
  if isinstance(v, (np.ndarray, np.generic, jax.Array)):
    v = np.asarray(v)
    return v.item() if v.ndim == 0 else v.tolist()
  return v


def import_tensorboardx():
  """`import tensorboardX`, without importing PyTorch.

  tensorboardX imports torch when it is installed, only to accept torch tensors as values
  (`writer.numpy_compatible`); that import takes seconds of a run's start-up. mixjax writes
  Python floats, so while tensorboardX is imported `torch` is marked unimportable (an
  entry None in `sys.modules`, the documented way to block an import) and unmarked after.
  A torch that is already imported is left alone."""
  if "tensorboardX" in sys.modules or "torch" in sys.modules:
    import tensorboardX  # pylint: disable=g-import-not-at-top
    return tensorboardX
  sys.modules["torch"] = None
  try:
    import tensorboardX  # pylint: disable=g-import-not-at-top
  finally:
    if sys.modules.get("torch", 0) is None:
      del sys.modules["torch"]
  return tensorboardX


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
          self._tb = import_tensorboardx().SummaryWriter(os.path.join(workdir, "tb"))
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


class RunWriters:
  """One `MetricWriter` per run of a group (a single run is a group of one).

  `write(step, scalars[, skip])` gives run r the r-th entry of every (R,)-shaped value and every
  scalar as is; `write_run(r, step, scalars)` writes to run r only.
  """

  def __init__(self, writers: list[MetricWriter]):
    self.writers = list(writers)

  def write(self, step: int, scalars: Mapping[str, Any], skip=()) -> None:
    """Writes to every run but those in `skip` (e.g. the failed runs of a group)."""
    for r, w in enumerate(self.writers):
      if r in skip:
        continue
      w.write(step, {k: _run_value(v, r) for k, v in scalars.items()})

  def write_run(self, r: int, step: int, scalars: Mapping[str, Any]) -> None:
    self.writers[r].write(step, scalars)

  def close(self) -> None:
    for w in self.writers:
      w.close()


def _run_value(v: Any, r: int) -> Any:
  a = np.asarray(v) if isinstance(v, (np.ndarray, np.generic, jax.Array)) else v
  return a[r] if isinstance(a, np.ndarray) and a.ndim >= 1 else a


def write_text(path: str, text: str) -> None:
  """`text` at `path`, atomically (a temporary file, then a rename), so a killed process
  never leaves a truncated file (a summary's presence means "finished")."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def write_json(path: str, value: Any) -> None:
  """`value` as indented JSON at `path`, atomically (`write_text`)."""
  write_text(path, json.dumps(value, indent=2))


def write_group_summary(workdir: str, summaries: dict[str, dict[str, Any]]) -> dict:
  """WORKDIR/summary.json of a seed group: each run's folder, status and test metrics,
  and per metric the mean, sample standard deviation and count over the runs that
  finished (`GROUP_COLUMNS`: "test", "val", and the rescaled ones when the runs have
  them). Printed as a table.

  Args:
    workdir: the group's folder.
    summaries: run folder name (e.g. "seed_3") -> that run's summary dict.
  """
  ok = {k: v for k, v in summaries.items() if v.get("status", "ok") == "ok"}
  group: dict[str, Any] = {
      "num_runs": len(summaries), "num_finished": len(ok),
      "runs": {k: {"status": v.get("status", "ok"), "seed": v.get("seed"),
                   **({"failed_at_step": v["failed_at_step"]}
                      if "failed_at_step" in v else {}),
                   "test": v.get("test")} for k, v in summaries.items()}}
  for col in GROUP_COLUMNS:
    rows = [v[col] for v in ok.values() if v.get(col)]
    if not rows:
      continue
    group[col] = {}
    for metric in rows[0]:
      vals = np.asarray([r[metric] for r in rows], np.float64)
      group[col][metric] = {"mean": float(vals.mean()), "n": int(vals.size),
                            "std": float(vals.std(ddof=1)) if vals.size > 1 else 0.0}
  if jax.process_index() == 0:
    write_json(os.path.join(workdir, SUMMARY_FILE), group)
    lines = [f"Seed group: {len(ok)} of {len(summaries)} runs finished "
             "(mean ± sample std over the finished runs):"]
    for col in GROUP_COLUMNS:
      for metric, st in group.get(col, {}).items():
        lines.append(f"  {col + '/' + metric:<34}{st['mean']:>10.4f} ± {st['std']:.4f}")
    for k, v in summaries.items():
      if k not in ok:
        lines.append(f"  {k}: FAILED (non-finite loss at step {v.get('failed_at_step')})")
    print("\n".join(lines), flush=True)
  return group


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  """All records of `WORKDIR/metrics.jsonl` in order."""
  with open(os.path.join(workdir, METRICS_FILE)) as f:
    return [json.loads(line) for line in f if line.strip()]


def format_summary(summary: dict[str, Any]) -> str:
  """The final table: one column per evaluation (plain, and rescaled when present),
  headed by the run's seed and law; with shifted test sets (config.eval.shift), a row
  per set (accuracy, NLL, ECE in each column) and their mean."""
  cols = [("test", summary["test"], summary.get("val") or {})]
  if summary.get("test_rescaled"):
    # A Monte-Carlo θ̄ (a user law without exact moments) shows its standard error.
    se = summary.get("theta_bar_stderr")
    theta = f"{summary['theta_bar']:.4f}" + (f"±{se:.1g}" if se else "")
    cols.append((f"rescaled (θ̄={theta})", summary["test_rescaled"],
                 summary.get("val_rescaled") or {}))
  rows = ["accuracy", "nll", "ece", "brier", "classwise_ece", "adaptive_ece",
          "smooth_ece", "aurc", "ece_temp_scaled", "nll_temp_scaled"]
  sampler = summary.get("sampler") or {}
  law = sampler.get("label") if isinstance(sampler, dict) else sampler
  lines = [f"Final evaluation of seed {summary.get('seed')} after {summary['step']} "
           f"steps ({summary['epochs']:.1f} epochs, {summary['method']}"
           + (f" {law}" if law and summary["method"] != "erm" else "")
           + f", {summary['dataset']}, {summary['model']}):",
           f"  {'test metric':<18}" + "".join(f"{name:>26}" for name, _, _ in cols)]
  for r in rows:
    if any(r in c for _, c, _ in cols):
      lines.append(f"  {r:<18}" + "".join(
          f"{c[r]:>26.4f}" if r in c else f"{'-':>26}" for _, c, _ in cols))
  shifts = [summary.get("shift"), summary.get("shift_rescaled")][:len(cols)]
  if shifts[0]:  # each shifted test set's accuracy, NLL, ECE, then their mean
    names = [k for k in shifts[0] if k != "mean"] + ["mean"]
    lines.append(f"  {'shifted test set':<18}" + "".join(
        f"{'accuracy':>10}{'nll':>8}{'ece':>8}" for _ in shifts))
    for n in names:
      lines.append(f"  {n:<18}" + "".join(
          f"{sh[n]['accuracy']:>10.4f}{sh[n]['nll']:>8.4f}{sh[n]['ece']:>8.4f}"
          if sh else f"{'-':>26}" for sh in shifts))
  for r in ("accuracy", "temperature"):
    if any(r in v for _, _, v in cols):
      lines.append(f"  {'val ' + r:<18}" + "".join(
          f"{v[r]:>26.4f}" if r in v else f"{'-':>26}" for _, _, v in cols))
  return "\n".join(lines)


def save_predictions(path: str, ds, logits: dict[str, np.ndarray],
                     logits_rescaled: dict[str, np.ndarray],
                     labels: dict[str, np.ndarray] | None = None) -> None:
  """Writes the final evaluation's inputs to `path` (.npz, atomically).

  Arrays: `<split>_logits` (n, c) float32 for every split evaluated ("test", "val" —
  the split temperature scaling is fitted on —, and "shift_<name>" for each shifted
  test set: of an in-memory one, example j is the shift of test example j),
  `<split>_logits_rescaled` with test-time rescaling, and the labels `test_labels`
  (n_test,) int32 (also those of the in-memory shifted sets) and `val_labels`, and
  `<split>_labels` for each split of `labels` (a streamed shifted set's,
  "shift_<name>"). Every number of summary.json's evaluations can be recomputed from
  them.
  """
  arrays = {"test_labels": ds.test_y}
  if "val" in logits:
    arrays["val_labels"] = ds.val_y
  arrays.update({f"{split}_labels": a for split, a in (labels or {}).items()})
  arrays.update({f"{split}_logits": a for split, a in logits.items()})
  arrays.update({f"{split}_logits_rescaled": a for split, a in logits_rescaled.items()})
  tmp = path + ".tmp.npz"
  np.savez(tmp, **{k: np.asarray(v) for k, v in arrays.items()})
  os.replace(tmp, path)


def write_summary(workdir: str, summary: dict[str, Any], ds, logits: dict[str, np.ndarray],
                  logits_rescaled: dict[str, np.ndarray],
                  labels: dict[str, np.ndarray] | None = None) -> None:
  """Process 0: `predictions.npz` (`save_predictions`), `summary.json`, and the table
  (`format_summary`) on stdout. The other processes (which evaluate too) write their
  summary to `summary.process_<i>.json`, for comparison."""
  text = format_summary(summary)
  if jax.process_index() == 0:
    save_predictions(os.path.join(workdir, PREDICTIONS_FILE), ds, logits, logits_rescaled,
                     labels)
    write_json(os.path.join(workdir, SUMMARY_FILE), summary)
    print(text, flush=True)
  else:
    name = SUMMARY_FILE.replace(".json", f".process_{jax.process_index()}.json")
    write_json(os.path.join(workdir, name), summary)
