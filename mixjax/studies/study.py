"""A study's config, and what happens after its training: rows, measurements, report.

A study is a folder `experiments/studies/<study>/`: its `config.py`, its report code and
study-specific measurements (other modules of the folder, loaded by `sibling`: the
folders are not packages), and a README.md linking its results in results/<study>/.
`config.py` is loaded by path as `--config` loads a config file
(`sweeps.load_config_module`; studies do not import each other; a study's config reads
no saved result). It holds
  * its question (the module docstring) and `SETTINGS`, the names of its settings;
  * `get_config(setting)`, `get_sweep(setting)`: the trainer config and the sweep points
    of a setting, trained by
      python -m mixjax.main --config=<file>:<setting> --sweep --workdir=W
    each point in W/<point folder> (`sweeps.point_name`; a point with num_seeds > 1 is a
    seed group, its runs in W/<point folder>/seed_<s>);
  * `report(out)`: writes OUT/report.md and its figures from the saved settings
    (`write_report`), never retraining;
and, where the study needs them,
  * `columns(setting, config) -> dict`: more columns of a run's row, computed from its
    config;
  * `measure(setting, runs) -> dict`: measurements on the trained runs (`Run`s) beyond
    their summaries, as `records.save` keyword arguments (history, arrays, extra, info);
  * `collect(setting) -> dict`: the whole record of a setting that trains nothing
    (`records.save` keyword arguments: runs, config, extra).

`collect(path, workdir, out)` reads a trained setting back from W: every point's
config.json and summary.json, the rows (`runs.rows`, plus `columns`), `measure`, and
writes OUT/<setting>.json with its provenance (`records.save`). It refuses a workdir
where a point has not finished, naming the training command. `python -m mixjax.studies`
runs it, then the study's `report`.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import sys
import types
from typing import Any

import ml_collections

from mixjax import provenance
from mixjax import samplers
from mixjax.errors import ConfigError
from mixjax.studies import records
from mixjax.studies import runs as runs_lib
from mixjax.train import groups
from mixjax.train import setup
from mixjax.train import sweeps
from mixjax.train import workdir as workdir_lib
from mixjax.train import writers


@dataclasses.dataclass
class Run:
  """A trained run of a study setting: its folder `name` under the workdir `root`, its
  config (config.json) and its summary (summary.json; None for a run stopped by a
  non-finite loss before writing one)."""
  name: str
  root: str
  config: ml_collections.ConfigDict
  summary: dict[str, Any] | None

  @property
  def dir(self) -> str:
    return os.path.join(self.root, self.name)


def load(path: str) -> tuple[types.ModuleType, str | None]:
  """The study module of `path` ("<file>[:<setting>]") and the setting (None if absent;
  ConfigError for a setting the study does not have)."""
  file, _, setting = path.partition(":")
  if not os.path.exists(file):
    raise ConfigError(f"--config={path}: no such study file {os.path.abspath(file)}.")
  module = sweeps.load_config_module(file)
  known = list(getattr(module, "SETTINGS", ()))
  if setting and setting not in known:
    raise ConfigError(f"--config={path}: unknown setting {setting!r}; known: "
                      f"{', '.join(known)}.")
  return module, setting or None


def sibling(file: str, name: str) -> types.ModuleType:
  """The module `<name>.py` in the folder of `file` (a study's config.py loading its
  report or measurements: study folders are not packages), loaded by path once per
  process and registered as "mixjax_study_<folder>_<name>"."""
  folder = os.path.dirname(os.path.abspath(file))
  key = f"mixjax_study_{os.path.basename(folder)}_{name}"
  if key not in sys.modules:
    spec = importlib.util.spec_from_file_location(key, os.path.join(folder, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    try:
      spec.loader.exec_module(module)
    except BaseException:
      del sys.modules[key]
      raise
  return sys.modules[key]


config_from_json = workdir_lib.config_from_json


def read_config(run_dir: str) -> ml_collections.ConfigDict:
  """RUN_DIR/config.json as a ConfigDict."""
  with open(os.path.join(run_dir, workdir_lib.CONFIG_FILE)) as f:
    return config_from_json(json.load(f))


def _as_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
  return json.loads(workdir_lib.config_to_json(config))


def sweep_runs(path: str, workdir: str) -> tuple[list[Run], dict[str, list]]:
  """The runs of the setting `path` ("<file>:<setting>") trained in WORKDIR, in sweep
  order, and the command-line overrides they were trained with ({key: [the study's
  value, the run's]}: e.g. a data folder, or a shortened pipeline check).

  Raises:
    ConfigError: a point of the sweep has no folder in WORKDIR, or has not finished
      (no summary.json, and the sweep's summary does not list it as failed).
  """
  module, setting = load(path)
  base = module.get_config(setting)
  train = f"python -m mixjax.main --config={path} --sweep --workdir={workdir}"
  swept = workdir_lib.finished_summary(workdir) or {}  # the sweep's {point: status}
  runs, overrides = [], {}
  for i, point in enumerate(sweeps.load_sweep(path, module)):
    name = sweeps.point_name(i, point)
    folder = os.path.join(workdir, name)
    if not os.path.exists(os.path.join(folder, workdir_lib.CONFIG_FILE)):
      raise ConfigError(f"{folder} holds no run: train the setting first, {train}")
    config = read_config(folder)
    expected = sweeps.sweep_config(base, point)
    for k, (a, b) in workdir_lib.config_changes(_as_json(expected), _as_json(config)).items():
      overrides[k] = [provenance.portable(v) if isinstance(v, str) else v for v in (a, b)]
    members = ([(f"{name}/seed_{c.seed}", c) for c in groups.run_configs(config)]
               if config.num_seeds > 1 else [(name, config)])
    for member, c in members:
      summary = workdir_lib.finished_summary(os.path.join(workdir, member))
      failed = (swept.get(name) or {}).get("status") == "failed"
      if summary is None and not failed:
        raise ConfigError(f"{os.path.join(workdir, member)} has not finished (no "
                          f"{writers.SUMMARY_FILE}): rerun {train}")
      runs.append(Run(member, workdir, c, summary))
  return runs, overrides


def _train_seconds(runs: list[Run]) -> float:
  """Training time: each program's loop time once (the runs of a vmapped group share
  one program, and so one `train_time_s`)."""
  programs = {}
  for r in runs:
    where = (r.summary or {}).get("checkpoint") or {"workdir": "."}
    programs[os.path.normpath(os.path.join(r.dir, where["workdir"]))] = float(
        (r.summary or {}).get("train_time_s") or 0.0)
  return sum(programs.values())


def _record(path: str, setting: str, runs: list[Run], overrides: dict) -> dict[str, Any]:
  """The setting's config record: the study's config of the setting (`get_config`, the
  keys the sweep sets shown as swept; the command line's overrides listed apart), the
  sweep's arms (`runs.arms`), seeds, laws and data sizes."""
  module, _ = load(path)
  pts = sweeps.load_sweep(path, module)
  first = runs[0].config
  ds = setup.load_data_once(first)
  laws = {}
  for r in runs:
    law = setup.training_sampler(r.config)
    if samplers.is_mask_law(law):  # its moments depend on the image size
      m = samplers.law_moments(law, tuple(ds.input_shape))
      laws.setdefault(law.label, {"label": law.label, "name": law.name,
                                  "image_shape": list(ds.input_shape),
                                  **{k: float(getattr(m, k)) for k in (
                                      "mean", "var", "gamma2", "strength",
                                      "global_strength")}})
    else:
      laws.setdefault(law.label, samplers.describe(law))
  file = path.partition(":")[0]
  folder, name = os.path.split(os.path.abspath(file))
  return {"setting": setting,
          "study": os.path.basename(folder) if name == "config.py" else name,
          "dataset": first.dataset.name, "dataset_kwargs": dict(first.dataset.kwargs),
          "train": runs_lib.config_record(module.get_config(setting), pts),
          "arms": runs_lib.arms(pts),
          "lr": float(first.optimizer.lr),
          "seeds": sorted({int(r.config.seed) for r in runs}), "laws": list(laws.values()),
          "data_sizes": {k: int(getattr(ds, k).shape[0])
                         for k in ("train_x", "val_x", "test_x")},
          "command_line_overrides": overrides}


def collect(path: str, workdir: str | None, out: str) -> str:
  """Reads the setting `path` ("<file>:<setting>") back from WORKDIR (module
  docstring), or computes it (a study with `collect` and no `get_sweep`); writes
  OUT/<setting>.json and returns its path."""
  module, setting = load(path)
  if setting is None:
    raise ConfigError(f"--config={path}: name the setting to collect, "
                      f"{path}:<setting> (one of {', '.join(module.SETTINGS)}).")
  if not hasattr(module, "get_sweep"):
    return records.save(out, setting, **module.collect(setting))
  if workdir is None:
    raise ConfigError(f"Pass --workdir, the folder where python -m mixjax.main "
                      f"--config={path} --sweep trained the setting.")
  runs, overrides = sweep_runs(path, workdir)
  columns = getattr(module, "columns", lambda setting, config: {})
  rows = [runs_lib.row(r.name, r.config, r.root, **columns(setting, r.config))
          for r in runs]
  measured = dict(module.measure(setting, runs)) if hasattr(module, "measure") else {}
  info = {"train_seconds": _train_seconds(runs),
          "train_command": provenance.portable(
              f"python -m mixjax.main --config={path} --sweep --workdir=W"),
          **measured.pop("info", {})}
  return records.save(out, setting, runs=rows, info=info,
                      config=_record(path, setting, runs, overrides), **measured)


def saved_settings(settings, out: str) -> list[str]:
  """The `settings` (names) with a saved record in OUT, in their order."""
  return [s for s in settings if os.path.exists(os.path.join(out, f"{s}.json"))]


def write_report(out: str, sections: list[str]) -> str:
  """Writes OUT/report.md (the sections joined by blank lines); returns its path."""
  path = os.path.join(out, "report.md")
  with open(path, "w") as f:
    f.write("\n".join(sections))
  return path
