"""Saving and loading study results with their provenance.

A study writes, per part, `<out>/<name>.json` (per-run rows, history, info, the study's
config and the provenance: package versions, git revision, devices, command line) and,
when it kept logits, `<out>/<name>_arrays.npz`. The `report` steps read only these files,
so tables and figures are remade without retraining.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np

from mixjax.provenance import provenance  # noqa: F401  (re-exported for the studies)



def _jsonable(x: Any) -> Any:
  if isinstance(x, dict):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, np.ndarray):
    return _jsonable(x.tolist())
  if isinstance(x, (np.floating, float)):
    v = float(x)
    return v if np.isfinite(v) else None
  if isinstance(x, (np.integer,)):
    return int(x)
  if isinstance(x, (np.bool_,)):
    return bool(x)
  return x


def save(out_dir: str, name: str, *, runs: list[dict], config: dict,
         history: dict | None = None, info: dict | None = None,
         arrays: dict[str, np.ndarray] | None = None, extra: dict | None = None) -> str:
  """Writes `<out_dir>/<name>.json` (+ `<name>_arrays.npz`); returns the JSON path.

  Args:
    out_dir: directory (created).
    name: file stem of this part of the study.
    runs: per-run rows (dicts of JSON-able values).
    config: the study configuration (the trainer config, laws, datasets, lengths).
    history: name -> array (num_checkpoints, R) (e.g. diagnostics along training).
    info: timings etc.
    arrays: large arrays (e.g. logits) for the npz file.
    extra: anything else JSON-able (e.g. non-training measurements).
  """
  os.makedirs(out_dir, exist_ok=True)
  record = {"name": name, "provenance": provenance(), "config": config, "runs": runs,
            "history": history or {}, "info": info or {}, "extra": extra or {}}
  path = os.path.join(out_dir, f"{name}.json")
  with open(path, "w") as f:
    json.dump(_jsonable(record), f, indent=1, ensure_ascii=False)
  if arrays:
    np.savez_compressed(os.path.join(out_dir, f"{name}_arrays.npz"), **arrays)
  return path


def load(out_dir: str, name: str) -> dict[str, Any]:
  """Reads a saved part; history entries come back as float arrays (None -> nan)."""
  path = os.path.join(out_dir, f"{name}.json")
  if not os.path.exists(path):
    raise ValueError(f"No saved results at {path}; run the study first (without --report_only).")
  with open(path) as f:
    record = json.load(f)
  record["history"] = {k: np.asarray([[np.nan if v is None else v for v in row]
                                      if isinstance(row, list) else
                                      (np.nan if row is None else row) for row in vals],
                                     dtype=np.float64)
                       for k, vals in record.get("history", {}).items()}
  npz = os.path.join(out_dir, f"{name}_arrays.npz")
  record["arrays"] = dict(np.load(npz)) if os.path.exists(npz) else {}
  return record


WALL_CLOCK = ("train_time_s", "seconds")  # row keys that measure time, not results
REVISION = ("code", "code_dirty")  # row keys that say where a run came from


def compare_rows(rows: list[dict], reference: list[dict],
                 ignore: tuple[str, ...] = WALL_CLOCK + REVISION) -> list[str]:
  """The differences between two lists of rows (e.g. a rerun against a saved record),
  value by value and bit for bit (NaN equals NaN; None equals NaN), ignoring `ignore`
  (wall-clock times, and the code revision a run was trained at);
  one line per differing row ("point: key a -> b, ..."), empty when they are equal."""
  def same(a, b):
    a, b = (math.nan if v is None else v for v in (a, b))
    return a == b or (isinstance(a, float) and isinstance(b, float) and a != a and b != b)

  if len(rows) != len(reference):
    return [f"{len(rows)} rows against {len(reference)}"]
  out = []
  for r, ref in zip(rows, reference):
    keys = [k for k in dict.fromkeys([*ref, *r]) if k not in ignore
            and not same(r.get(k), ref.get(k))]
    if keys:
      out.append(f"{ref.get('point', ref.get('law'))}: " + ", ".join(
          f"{k} {ref.get(k)!r} -> {r.get(k)!r}" for k in keys))
  return out
