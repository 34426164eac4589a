"""The workdir and the resume policy: what a rerun of the same command may do.

A run's folder holds `config.json` (the config of its first start), its checkpoints,
`metrics.jsonl` and, once it has finished, `summary.json` (written atomically, so its
presence means "finished": `finished_summary`).

Rerunning on a workdir that holds a run (`check_workdir_config`):
- an unfinished run resumes from its newest restorable checkpoint. Its config may
  differ from config.json only in `config.RESUMABLE_CHANGES` (length of training,
  logging, checkpoint cadence, evaluation, the data folder), unless
  `allow_config_change=True` (e.g. to continue with a lower learning rate after a NaN);
- a finished run trains nothing more unless its length grows. A change that would need
  retraining (any key outside `RESUMABLE_CHANGES`) is refused even with
  `allow_config_change=True`: the weights would stay the old config's while config.json
  and the summary would name the new one. Evaluation-only changes (`eval.*`)
  re-evaluate it, and the summary records them (`config_changes`).
A key the old config.json lacks (a knob added to mixjax since) is no change when it has
its default value. An accepted change is logged and config.json is rewritten.

The log (`logging_to_workdir`, the command line's): absl's records, INFO and up, go to
WORKDIR/log.txt (held in memory until the workdir exists, then written there first);
stderr shows the warnings and errors only, unless `verbose` (`--verbose`), which shows
every record there too. The resolved config, the devices, progress, and the detail of
an error (a library's own text, the traceback) are in the log; the terminal gets the
one-line messages, warnings and the final table.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging as py_logging
import os
from typing import Any, Mapping

from absl import flags
from absl import logging
import ml_collections

from mixjax.errors import WorkdirError
from mixjax.train import config as config_lib
from mixjax.train import writers
from mixjax.train.writers import SUMMARY_FILE

CONFIG_FILE = "config.json"
_ABSENT = "<absent>"


def make_workdir(workdir: str) -> str:
  """Creates `workdir` (with parents) and checks it is writable; returns its absolute
  path. Raises WorkdirError (exit 5) naming the path and the reason otherwise."""
  path = os.path.abspath(workdir)
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise WorkdirError(f"--workdir={workdir}: cannot create it ({e.strerror or e}). "
                       "Pass a folder you can write to.") from e
  if not os.access(path, os.W_OK | os.X_OK):
    raise WorkdirError(f"--workdir={workdir}: not writable. Pass a folder you can "
                       "write to.")
  return path


LOG_FILE = "log.txt"
# The log of this process while `logging_to_workdir` is active: its buffer (records
# before the workdir exists) or the open file.
_LOG: dict[str, Any] = {"buffer": None, "file": None}


@contextlib.contextmanager
def logging_to_workdir(*, verbose: bool = False):
  """absl logging for a command-line run (the module docstring): records are held in
  memory until `open_log(workdir)`, then written to its log file; stderr gets WARNING
  and up (every record when `verbose`, or with absl's --logtostderr /
  --alsologtostderr). absl's handler and flags are restored on exit."""
  handler = logging.get_absl_handler().python_handler
  fl = flags.FLAGS
  saved = (handler.stream, fl["stderrthreshold"].value, fl["alsologtostderr"].value)
  if fl["logtostderr"].value:  # the user asked for everything on stderr
    yield
    return
  root, absl_logger = py_logging.getLogger(), py_logging.getLogger("absl")
  levels = (root.level, absl_logger.level)
  attach = logging.get_absl_handler() not in root.handlers  # main() called directly
  verbosity, default = fl["verbosity"].value, fl["verbosity"].using_default_value
  if attach:  # as app.run does: --verbosity's level, INFO when not given
    root.addHandler(logging.get_absl_handler())
    logging.set_verbosity(0 if default else verbosity)
  _LOG["buffer"], _LOG["file"] = io.StringIO(), None
  handler.stream = _LOG["buffer"]
  if not fl["stderrthreshold"].present:
    fl.stderrthreshold = "warning"
  if verbose:
    fl.alsologtostderr = True
  try:
    yield
  finally:
    handler.flush()
    handler.stream = saved[0]
    fl.stderrthreshold, fl.alsologtostderr = saved[1], saved[2]
    if attach:
      root.removeHandler(logging.get_absl_handler())
      fl["verbosity"].value, fl["verbosity"].using_default_value = verbosity, default
      root.setLevel(levels[0])
      absl_logger.setLevel(levels[1])
    if _LOG["file"] is not None:
      _LOG["file"].close()
    _LOG["buffer"], _LOG["file"] = None, None


def open_log(workdir: str, name: str = LOG_FILE) -> str | None:
  """Within `logging_to_workdir`: appends the log to WORKDIR/`name` from now on (the
  records so far first). Returns its path (None outside `logging_to_workdir`)."""
  if _LOG["buffer"] is None:
    return None
  path = os.path.join(workdir, name)
  handler = logging.get_absl_handler().python_handler
  f = open(path, "a", encoding="utf-8")  # pylint: disable=consider-using-with
  f.write(_LOG["buffer"].getvalue())
  f.flush()
  handler.stream, _LOG["file"] = f, f
  return path


def log_file() -> str | None:
  """The path of the log file `open_log` opened, or None (logging to stderr)."""
  return None if _LOG["file"] is None else _LOG["file"].name


def finished_summary(run_dir: str) -> dict[str, Any] | None:
  """The summary of a finished run (RUN_DIR/summary.json), or None when it has none."""
  path = os.path.join(run_dir, SUMMARY_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def config_from_json(value: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """A config written as JSON (config.json, a study record's "train") back as a
  ConfigDict: its lists as the configs' tuples, on top of `config.base_config()` so that
  a knob added to mixjax since it was written has its default (the same rule as
  resuming). Dict-valued knobs (`config.DICT_KNOBS`) are taken whole."""
  def tuples(v):
    if isinstance(v, Mapping):
      return {k: tuples(x) for k, x in v.items()}
    return tuple(tuples(x) for x in v) if isinstance(v, list) else v

  def merge(node, values, prefix):
    for k, v in values.items():
      key = prefix + k
      if (isinstance(v, dict) and k in node and isinstance(node[k], ml_collections.ConfigDict)
          and key not in config_lib.DICT_KNOBS):
        merge(node[k], v, key + ".")
      elif isinstance(v, dict):
        node[k] = ml_collections.ConfigDict(v)
      else:
        node[k] = v

  config = config_lib.base_config()
  merge(config, tuples(value), "")
  return config


def config_to_json(config: ml_collections.ConfigDict) -> str:
  """The config as written to WORKDIR/config.json (tuples as lists)."""
  if hasattr(config, "to_json_best_effort"):
    return config.to_json_best_effort(indent=2, sort_keys=True)
  return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str)


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """{dotted key: leaf} of a nested dict (empty dicts are leaves)."""
  out = {}
  for k, v in tree.items():
    if isinstance(v, Mapping) and v:
      out.update(flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def config_changes(old: Mapping[str, Any], new: Mapping[str, Any]
                   ) -> dict[str, tuple[Any, Any]]:
  """{dotted key: (old value, new value)} for the leaves where two JSON configs differ
  (a key present on one side only shows `<absent>` on the other)."""
  old, new = flatten(old), flatten(new)
  return {k: (old.get(k, _ABSENT), new.get(k, _ABSENT))
          for k in sorted(set(old) | set(new))
          if old.get(k, _ABSENT) != new.get(k, _ABSENT)}


def is_resumable_change(key: str) -> bool:
  return any(key == a or key.startswith(a + ".")
             for a in config_lib.RESUMABLE_CHANGES)


def _listed(changes: Mapping[str, tuple[Any, Any]], limit: int | None = None) -> str:
  """"key: old -> new; ..." (the first `limit` changes, then how many more)."""
  items = list(changes.items())
  shown = items if limit is None else items[:limit]
  more = len(items) - len(shown)
  return "; ".join(f"{k}: {json.dumps(a)} -> {json.dumps(b)}" for k, (a, b) in shown) + (
      f"; {more} more in the log" if more else "")


def check_workdir_config(config: ml_collections.ConfigDict, workdir: str, *,
                         has_run: bool, finished: bool = False, write: bool = True
                         ) -> dict[str, tuple[Any, Any]]:
  """Compares `config` with WORKDIR/config.json (the module docstring's policy), then
  (if `write`) writes it there.

  Args:
    config: the resolved config of this start.
    workdir: the run's folder.
    has_run: the workdir holds a run to resume (checkpoints or a summary). Without one,
      a changed config simply replaces config.json (a start that failed early).
    finished: the run has finished (its summary.json exists): only
      `RESUMABLE_CHANGES` are accepted, whatever `allow_config_change` says.
    write: write config.json (process 0 only, so a multi-process run writes it once).

  Returns:
    The changes accepted ({key: (old, new)}), empty for a first start or the same config.

  Raises:
    WorkdirError: the workdir's run was started with a config that differs in a key
      outside `RESUMABLE_CHANGES` (and the run has finished, or allow_config_change is
      False); the message lists the keys (old → new) and the way out.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  text = config_to_json(config)
  changes = {}
  if has_run and os.path.exists(path):
    try:
      with open(path) as f:
        old = json.load(f)
    except (OSError, ValueError) as e:
      old = None
      if finished or not config.allow_config_change:
        raise WorkdirError(
            f"{path} cannot be read ({e}), so this run cannot be checked against the "
            "config the workdir was started with. Use a fresh --workdir"
            + ("." if finished else ", or pass --config.allow_config_change=True to "
               "resume anyway.")) from e
    if old is not None:
      changes = config_changes(old, json.loads(text))
      # A knob added to mixjax after the run started, at its default, changes nothing.
      defaults = flatten(json.loads(config_to_json(config_lib.base_config())))
      changes = {k: (a, b) for k, (a, b) in changes.items()
                 if not (a == _ABSENT and k in defaults and defaults[k] == b)}
    refused = {k: v for k, v in changes.items() if not is_resumable_change(k)}
    if refused and (finished or not config.allow_config_change):
      logging.info("%s: the config differs from %s in %s. A rerun may change only %s.",
                   workdir, path, _listed(refused), ", ".join(config_lib.RESUMABLE_CHANGES))
    if refused and finished:
      raise WorkdirError(
          f"--workdir={workdir} holds a finished run of another config "
          f"({_listed(refused, limit=2)}). Nothing would be retrained, only relabelled: "
          "use a fresh --workdir.")
    if refused and not config.allow_config_change:
      raise WorkdirError(
          f"--workdir={workdir} holds a run started with another config "
          f"({_listed(refused, limit=2)}). Use a fresh --workdir, or pass "
          "--config.allow_config_change=True to continue it with this config.")
    if changes:
      logging.warning("Resuming %s with a changed config (config.json rewritten): %s",
                      workdir, _listed(changes))
  if write:
    writers.write_text(path, text)
  return changes
