"""Sweeps: a config file's `get_sweep()` points, their folder names, which of them train
as one vmapped program, and `train_sweep`, which trains them all in one process
(`python -m mixjax.main --config=F --workdir=W --sweep`).

Config files (`experiments/*.py`) are loaded by path (`load_config_module`); a file's
`:arg` is passed to its `get_config` and `get_sweep`.
"""
from __future__ import annotations

import copy
import json
import os
import re
import types
from typing import Any

from absl import logging
import jax
import ml_collections

from mixjax.errors import ConfigError, NonFiniteLossError
from mixjax.train import config as config_lib
from mixjax.train import groups
from mixjax.train import setup
from mixjax.train import validate
from mixjax.train import workdir as workdir_lib
from mixjax.train import writers


load_config_module = config_lib.load_config_module  # where the sweeps' users find it


def sweep_config(config: ml_collections.ConfigDict, overrides: dict[str, Any]
                 ) -> ml_collections.ConfigDict:
  """A copy of `config` with `overrides` ({"a.b": value}) applied; unknown keys raise.
  The copy keeps the config's placeholders (e.g. `dataset.data_dir`, None until set),
  so a config built from another with this stays overridable from the command line."""
  config = copy.deepcopy(config)
  for path, value in overrides.items():
    node = config
    *parents, leaf = path.split(".")
    for p in parents:
      node = node[p]
    if leaf not in node:
      raise ConfigError(f"Sweep override {path!r}: no such config key. "
                        + validate.unknown_key_hint(node, leaf))
    if isinstance(node[leaf], ml_collections.ConfigDict) and isinstance(value, dict):
      node[leaf] = ml_collections.ConfigDict(value)
    else:
      node[leaf] = value
  return config


def load_sweep(config_path: str, module: types.ModuleType | None = None) -> list[dict]:
  """`get_sweep()` of a config file (or of its already loaded `module`), called with the
  file's `:arg` when it has one (as `get_config`): one override dict {"a.b": value} per
  point (ConfigError if the file has none)."""
  module = module or config_lib.load_config_module(config_path)
  if not hasattr(module, "get_sweep"):
    raise ConfigError(f"{config_path} has no get_sweep(); nothing to sweep.")
  arg = config_path.split(":", 1)[1] if ":" in config_path else None
  return list(module.get_sweep(arg) if arg is not None else module.get_sweep())


def flag_value(value: Any) -> str:
  """A sweep value as a --config.<key>= flag value (dicts as JSON, tuples as literals)."""
  if isinstance(value, dict):
    return json.dumps(value)
  if isinstance(value, (list, tuple)):
    return "(" + ", ".join(repr(v) for v in value) + ("," if len(value) == 1 else "") + ")"
  return str(value)


def point_name(index: int, overrides: dict) -> str:
  """The folder of sweep point `index`, e.g. '00_method.name=erm' → '00_method=erm'."""
  parts = []
  for k, v in overrides.items():
    if isinstance(v, dict):
      parts.extend(f"{a}={b}" for a, b in v.items())
    else:
      parts.append(f"{k.split('.')[-2] if k.endswith('.name') else k.split('.')[-1]}="
                   f"{flag_value(v)}")
  return f"{index:02d}_" + (re.sub(r"[^A-Za-z0-9_.,=+-]", "", "_".join(parts)) or "default")


def sweep_point_configs(config: ml_collections.ConfigDict, config_path: str
                        ) -> list[tuple[str, ml_collections.ConfigDict]]:
  """(folder name, config) of every point of `config_path`'s get_sweep(), applied to the
  resolved `config` (the file's get_config() plus the command line's overrides).

  Raises:
    ConfigError: the file has no get_sweep(), a point names an unknown key, or a point
      sets a key that the command line also set (which should win is ambiguous).
  """
  module = config_lib.load_config_module(config_path)
  arg = config_path.split(":", 1)[1] if ":" in config_path else None
  file_config = module.get_config(arg) if arg is not None else module.get_config()
  cli = set(workdir_lib.config_changes(json.loads(workdir_lib.config_to_json(file_config)),
                                       json.loads(workdir_lib.config_to_json(config))))
  points = []
  for i, overrides in enumerate(load_sweep(config_path, module)):
    both = sorted(k for k in overrides
                  if any(c == k or c.startswith(k + ".") for c in cli))
    if both:
      raise ConfigError(
          f"Sweep point {i} ({overrides}) sets {', '.join(both)}, which the command line "
          "also sets; drop the --config flag for it, or edit get_sweep().")
    points.append((point_name(i, overrides), sweep_config(config, overrides)))
  return points


def law_groups(points: list[tuple[str, ml_collections.ConfigDict]]) -> list[list[int]]:
  """Sweep points that differ only in `setup.per_run_keys` (the seed, the law's
  parameters within one sampler structure, η, the optimizer's lr and weight decay), all
  with num_seeds = 1: the candidates for one vmapped program, in the order of their
  first point. Every other point is a group of its own. A function of the sweep file
  alone: a resumed or partly finished sweep trains the same groups."""
  groups: list[list[int]] = []
  by_key: dict[str, list[int]] = {}
  for i, (_, c) in enumerate(points):
    if c.num_seeds != 1:
      groups.append([i])
      continue
    key = setup.group_key(c)
    if key not in by_key:
      by_key[key] = []
      groups.append(by_key[key])
    by_key[key].append(i)
  return groups




def train_sweep(points: list[tuple[str, ml_collections.ConfigDict]], workdir: str, *,
                devices=None) -> dict[str, Any]:
  """Every sweep point (`sweep_point_configs`) in this process.

  Point `name` trains in WORKDIR/<name> (a seed group when its num_seeds > 1), so each
  point has its own config.json, metrics and summary.json; a finished point
  (summary.json present) is not trained again. Every point's config is validated before
  the first one trains. The points of a `law_groups` group train through
  `groups.train_runs`: one vmapped program where `group_mode` would vmap (dense models;
  not convolutions on CPU), the group's checkpoints in WORKDIR/group_<first>_<size>,
  otherwise one after another. A point whose loss turns NaN is recorded as failed; the
  others go on.

  Returns:
    {name: {"status", "test", "test_rescaled"}}, also written to WORKDIR/summary.json.

  Raises:
    ConfigError: a point's config is invalid (before anything trains).
    NonFiniteLossError: after all points ran, naming the points that failed.
  """
  devices = jax.devices() if devices is None else list(devices)
  for name, c in points:
    try:
      validate.validate_config(c, num_devices=len(devices))
    except ValueError as e:
      raise ConfigError(f"sweep point {name}: {e}") from e
  workdir = workdir_lib.make_workdir(workdir)
  results, failed = {}, []
  for idx in law_groups(points):
    names = [points[i][0] for i in idx]
    try:
      if points[idx[0]][1].num_seeds > 1:  # a seed group of its own
        summaries = {names[0]: groups.train_and_evaluate(
            points[idx[0]][1], os.path.join(workdir, names[0]), devices=devices)}
      else:
        if len(idx) > 1:
          logging.info("Sweep points %s: one group.", ", ".join(names))
        group_dir = workdir if len(idx) == 1 else os.path.join(
            workdir, f"group_{idx[0]:03d}_{len(idx)}")
        dirs = [os.path.join(workdir, n) for n in names]
        summaries = groups.train_runs(
            [points[i][1] for i in idx], dirs, workdir_lib.make_workdir(
                dirs[0] if len(idx) == 1 else group_dir), devices=devices)
    except NonFiniteLossError as e:
      for n in names:
        failed.append(n)
        results[n] = {"status": "failed", "error": str(e)}
      continue
    for n in names:
      summary = summaries[n]
      if summary.get("status") == "failed":
        failed.append(n)
      results[n] = {"status": summary.get("status", "ok"), "test": summary.get("test"),
                    "test_rescaled": summary.get("test_rescaled")}
  if jax.process_index() == 0:
    writers.write_json(os.path.join(workdir, writers.SUMMARY_FILE), results)
  if failed:
    raise NonFiniteLossError(
        f"{len(failed)} of {len(points)} sweep points stopped on a non-finite loss: "
        f"{', '.join(failed)} (their messages are in {workdir}/summary.json); the other "
        "points finished.")
  return results
