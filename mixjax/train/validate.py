"""Checking a resolved config before anything is loaded or compiled, and the hints its
messages give (the valid choices, "did you mean").

`validate_config` raises `ConfigError` (exit code 2 in `mixjax.main`) naming the key, the
value, the valid choices and the fix; names go through the registries, so an unknown
sampler, method, model, dataset or loss lists the known ones and the closest match;
numbers are checked against the ranges declared with their defaults (`config.RANGES`).
`check_config_flags` checks the command line's --config file and overrides before absl
parses them (`mixjax.main.parse_flags`).
"""
from __future__ import annotations

import ast
import difflib
import os
from typing import Any, Mapping

import ml_collections

from mixjax.errors import ConfigError, DataError, one_line
from mixjax.train import config as config_lib

GROUP_MODES = ("auto", "vmap", "sequential")
APPROX_TERMS = ("jacobian", "cross", "hessian", "label")
OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "piecewise", "cosine")


def unknown_key_hint(node: Mapping[str, Any], key: str) -> str:
  """'Known keys here: ...; did you mean ...?' for `key` missing from `node`."""
  known = sorted(node.keys())
  close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
  return ((f"Known keys here: {', '.join(known)}." if known else "No keys are set here.")
          + (f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""))


def find_unknown_key(config: Mapping[str, Any], path: str) -> tuple[str, str] | None:
  """(parent path, missing key) of the first component of dotted `path` not in `config`,
  or None when the whole path exists."""
  node, parents = config, []
  for part in path.split("."):
    if not isinstance(node, Mapping) or part not in node:
      return ".".join(["config"] + parents), part
    node, parents = node[part], parents + [part]
  return None


def _fail(msg: str):
  raise ConfigError(msg)


def model_arguments(name: str) -> list[str]:
  """`mixjax.models.base.model_arguments` ([] when the model takes any keyword)."""
  from mixjax.models import base as models_base  # pylint: disable=g-import-not-at-top
  return models_base.model_arguments(name) or []


def _check_model_kwargs(config) -> None:
  kwargs = dict(config.model.kwargs)
  allowed = model_arguments(config.model.name)
  unknown = sorted(k for k in kwargs if allowed and k not in allowed)
  if "num_classes" in kwargs:
    unknown.append("num_classes")
  if "dtype" in kwargs:
    _fail(f"config.model.kwargs={kwargs} sets the computation dtype; set it once, with "
          f"--config.model.dtype={kwargs['dtype']} (and no dtype in model.kwargs).")
  if unknown:
    close = sorted({c for k in unknown
                    for c in difflib.get_close_matches(k, allowed, n=2, cutoff=0.6)})
    _fail(f"config.model.kwargs={kwargs}: model {config.model.name!r} has no argument "
          f"{', '.join(repr(k) for k in unknown)}"
          + (" (num_classes comes from the dataset)" if "num_classes" in unknown else "")
          + f". Its arguments: {', '.join(allowed)}."
          + (f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else "")
          + " Set them with --config.model.kwargs='{\"<argument>\": <value>}'.")


def sampler_params_hint(name: str) -> str:
  """How to set the parameters of sampler `name`, from its factory's signature: "beta
  takes alpha, beta=None: set them with --config.sampler.params='{"alpha": <value>}'"
  ("" when `name` does not load)."""
  import inspect  # pylint: disable=g-import-not-at-top
  from mixjax.samplers import laws as laws_lib  # pylint: disable=g-import-not-at-top
  takes = laws_lib.parameters_hint(name)
  if not takes:
    return ""
  params = inspect.signature(laws_lib.sampler_factory(name)).parameters.values()
  params = [p for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
  if not params:
    return f"{takes}: set --config.sampler.params='{{}}'"
  shown = [p.name for p in params if p.default is inspect.Parameter.empty] or [
      p.name for p in params]
  example = ", ".join(f'"{n}": <value>' for n in shown)
  return f"{takes}: set them with --config.sampler.params='{{{example}}}'"


def _check_sampler(config) -> None:
  """config.sampler: a registered name or a MODULE:FACTORY that loads, parameters its
  factory takes, and a law it builds; a user's law is drawn once (`samplers.validate`:
  float32 in [0, 1], given moments that match its draws)."""
  import inspect  # pylint: disable=g-import-not-at-top
  from mixjax import samplers as samplers_lib  # pylint: disable=g-import-not-at-top
  from mixjax.samplers import laws as laws_lib  # pylint: disable=g-import-not-at-top
  name, params = config.sampler.name, dict(config.sampler.params)
  user = laws_lib.is_entry_point(name)
  try:
    factory = laws_lib.sampler_factory(name)
  except ValueError as e:
    _fail(f"config.sampler.name: {e}"
          + ("" if user else " Set it with --config.sampler.name=<name>."))
  hint = sampler_params_hint(name)
  try:
    inspect.signature(factory).bind(**params)
  except TypeError as e:
    _fail(f"config.sampler.params={params} do not fit sampler {name!r} ({e}): {hint}.")
  except ValueError:  # no signature to check: the call below tells
    pass
  try:  # builds the law: α <= 0 and other impossible parameters raise here
    law = samplers_lib.make_sampler(name, **params)
  except (TypeError, ValueError) as e:
    if user:  # the factory raised, or returned no law
      _fail(f"config.sampler.name={name!r}: {e}")
    _fail(f"config.sampler.params={params} do not fit sampler {name!r}: {e}")
  if user:
    try:
      samplers_lib.validate(law)
    except ValueError as e:
      _fail(f"config.sampler.name={name!r}: {e}")


def _check_batch_fits(config) -> None:
  """batch_size <= the number of training examples (from metadata; no data is read)."""
  from mixjax.data import dataset as dataset_lib  # pylint: disable=g-import-not-at-top
  try:
    n = dataset_lib.train_size(config.dataset.name, data_dir=config.dataset.data_dir,
                            val_fraction=config.dataset.val_fraction,
                            seed=config.dataset.split_seed, num_train=config.dataset.num_train,
                            **dict(config.dataset.kwargs))
  except TypeError as e:  # a loader option the dataset does not take
    _fail(f"config.dataset.kwargs={dict(config.dataset.kwargs)} do not fit dataset "
          f"{config.dataset.name!r}: {e}.")
  if n is not None and config.batch_size > n:
    _fail(f"config.batch_size={config.batch_size} is larger than the training split of "
          f"{config.dataset.name!r} ({n} examples with "
          f"val_fraction={config.dataset.val_fraction}): every step takes a full batch. "
          f"Use --config.batch_size=N with N <= {n}.")


def _check_streaming(config, check_data: bool) -> bool:
  """config.dataset.streaming is "auto", True or False; True needs
  config.dataset.image_size. Returns whether the dataset name is one to stream without
  an in-memory loader (streaming not False and the name not in `data.DATASETS`): with
  `check_data`, it must be a prepared tfds dataset (`tfds_data.check_prepared`: a
  known tfds dataset not prepared raises its FileNotFoundError, which says how), or
  the registry's error is raised with the command that prepares an image folder."""
  from mixjax import data as data_lib  # pylint: disable=g-import-not-at-top
  mode, name = config.dataset.streaming, config.dataset.name
  if not (isinstance(mode, bool) or mode == "auto"):
    _fail(f"config.dataset.streaming={mode!r} must be 'auto', True or False.")
  if mode is True and config.dataset.image_size is None:
    _fail("config.dataset.streaming=True needs the side of the streamed images: set "
          "--config.dataset.image_size=S (e.g. 64).")
  if mode is False or name in data_lib.DATASETS:
    return False
  if check_data:
    try:
      data_lib.check_prepared(name, config.dataset.data_dir)
    except FileNotFoundError:  # a tfds dataset not prepared: its preparation command
      raise
    except Exception:  # pylint: disable=broad-except  (no tfds dataset of that name)
      try:
        data_lib.DATASETS.get(name)
      except ValueError as e:
        _fail(f"config.dataset.name: {e} Set it with --config.dataset.name=<name>. Or "
              f"prepare your own images as {name!r} with python -m mixjax.data.prepare "
              f"--dataset=image_folder --source_dir=DIR --name={name} --data_dir=OUT "
              "and pass --config.dataset.data_dir=OUT.")
  return True


def shift_sets(config: ml_collections.ConfigDict) -> dict[str, tuple[str, ...] | None]:
  """config.eval.shift as {shifted dataset: its configs (None: all)}: "name" takes every
  config of the dataset, "name/config" one of them."""
  out: dict[str, Any] = {}
  for entry in config.eval.shift:
    name, _, sub = str(entry).partition("/")
    if not sub:
      out[name] = None
    elif out.get(name, ()) is not None:
      out[name] = tuple(out.get(name, ())) + (sub,)
  return out


def _check_shift(config, check_data: bool) -> None:
  """eval.shift names known shifted datasets of config.dataset.name, prepared (when
  `check_data`: a `DataError` with the prepare command otherwise, exit 4)."""
  from mixjax.data import shift as shift_lib  # pylint: disable=g-import-not-at-top
  if isinstance(config.eval.shift, str):
    _fail(f"config.eval.shift={config.eval.shift!r} must be a tuple of names, e.g. "
          f"--config.eval.shift='(\"{config.eval.shift}\",)'.")
  for name, configs in shift_sets(config).items():
    try:
      spec = shift_lib.get_shift_dataset(name)
    except ValueError as e:
      _fail(f"config.eval.shift: {e}")
    if spec.clean != config.dataset.name:
      _fail(f"config.eval.shift: {name} shifts {spec.clean}'s test split, but the model "
            f"trains on {config.dataset.name}. Drop it or set "
            f"--config.dataset.name={spec.clean}.")
    unknown = [c for c in configs or () if c not in spec.configs]
    if unknown:
      _fail(f"config.eval.shift: {name} has no {', '.join(map(repr, unknown))}. Known: "
            f"{', '.join(spec.configs)}.")
    if check_data:
      _check_shift_prepared(name, config.dataset.data_dir, configs or spec.configs)


_NEVER = "mixjax never downloads data"


def _check_shift_prepared(name: str, data_dir: str | None, configs) -> None:
  """Every config of shifted dataset `name` is prepared under `data_dir`; DataError
  (exit 4) in one line naming the missing ones and the command that prepares them (the
  full instructions: `shift.check_shift_prepared`'s message, in the log)."""
  from absl import logging  # pylint: disable=g-import-not-at-top
  from mixjax.data import shift as shift_lib  # pylint: disable=g-import-not-at-top
  from mixjax.data import tfds_data  # pylint: disable=g-import-not-at-top
  try:
    shift_lib.check_shift_prepared(name, data_dir, configs)
    return
  except FileNotFoundError as e:
    logging.info("%s", e)
  bad = []
  for c in configs:
    try:
      shift_lib.check_shift_prepared(name, data_dir, (c,))
    except FileNotFoundError:
      bad.append(c)
  root = os.path.expanduser(data_dir) if data_dir else tfds_data.default_data_dir()
  sets = ", ".join(f"{name}/{c}" for c in bad)
  raise DataError(f"config.eval.shift: {sets} {'is' if len(bad) == 1 else 'are'} not "
                  f"prepared in {root} ({_NEVER}): "
                  + _prepare_command(name, root, f" --configs={','.join(bad)}"))


def _prepare_command(name: str, root: str, extra: str = "") -> str:
  """How to prepare `name` (a key of `data.prepare.SOURCES`) into `root`, in a sentence."""
  from mixjax.data import prepare  # pylint: disable=g-import-not-at-top
  return (f"run python -m mixjax.data.prepare --dataset={name}{extra} --data_dir={root} "
          f"after apt-get install {prepare.SOURCES[name].debian_package}, or add "
          "--source_dir=SRC (its IDX files).")


def _check_data_present(config) -> None:
  """A tfds dataset is prepared (array_record) under config.dataset.data_dir: only
  local metadata is read. DataError (exit 4) in one line with the command that
  prepares it otherwise (the full instructions, `tfds_data.check_prepared`'s message,
  go to the log)."""
  from absl import logging  # pylint: disable=g-import-not-at-top
  from mixjax.data import prepare  # pylint: disable=g-import-not-at-top
  from mixjax.data import tfds_data  # pylint: disable=g-import-not-at-top
  name, data_dir = config.dataset.name, config.dataset.data_dir
  if name not in tfds_data.TFDS_DATASETS:
    return
  try:
    tfds_data.check_prepared(name, data_dir)
    return
  except FileNotFoundError as e:
    logging.info("%s", e)
  root = os.path.expanduser(data_dir) if data_dir else tfds_data.default_data_dir()
  if name in prepare.SOURCES:  # prepared offline from its original files
    fix = _prepare_command(name, root)
  else:
    fix = (f"where there is internet, run tfds build {name} --file_format=array_record "
           "--data_dir=DIR; then pass --config.dataset.data_dir=DIR.")
  raise DataError(f"{name} is not prepared as array_record in {root} ({_NEVER}): {fix}")


def validate_config(config: ml_collections.ConfigDict, *, num_devices: int | None = None,
                    check_data: bool = True) -> None:
  """Checks a resolved config before anything is compiled or loaded.

  Raises a ValueError naming the bad key, the bad value and the valid choices (names go
  through the registries: `MODELS`, `DATASETS`, `SAMPLERS`, `LOSSES`, `METHODS`), for:
  unknown dataset / model / method / sampler / loss / optimizer / schedule / granularity /
  pairing / estimator / approx term / computation dtype (`model.dtype`; none in
  `model.kwargs`); sampler parameters the sampler rejects (α ≤ 0, …: the sampler is
  built here; `sampler_params_hint`); a user law MODULE:FACTORY that
  does not load, raises, or returns no valid law (`_check_sampler`); a numeric knob
  outside the range declared next to its default (`config.RANGES`: lr ≤ 0, val_fraction
  outside [0, 1), η < 0, …); the options of the configured method (`Method.options`:
  approx's estimator and terms); batch size not divisible by the device count; no epochs
  or steps; model arguments (`model.kwargs`) the model does not take; a batch larger
  than the training split (its size from metadata:
  `mixjax.data.train_size`, no data is read; skipped when unknown, e.g. a tfds dataset
  not prepared yet); dataset.streaming not "auto", True or False, streaming=True without
  dataset.image_size, a dataset to stream that is not a prepared tfds dataset
  (`_check_streaming`; what needs the data, e.g. dataset.num_classes against the
  folders, is checked when it is loaded: `setup.load_data`). With `check_data`, also
  that the data is there: a tfds dataset and the shifted test sets of config.eval.shift
  prepared under config.dataset.data_dir (local metadata only). Cheap: nothing is traced.

  Args:
    config: the resolved config.
    num_devices: devices the batch is split over (default: `jax.device_count()`).
    check_data: also check that the data is prepared, and the batch size against the
      training split's size.

  Raises:
    ConfigError (a ValueError) naming the key, the value, the choices and the fix;
    DataError (exit 4): a dataset or shifted test set not prepared, in one line with
    the command that prepares it.
  """
  # Imported here so that reading a config never imports the heavy modules.
  import jax  # pylint: disable=g-import-not-at-top
  from mixjax import data as data_lib  # pylint: disable=g-import-not-at-top
  from mixjax import losses as losses_lib  # pylint: disable=g-import-not-at-top
  from mixjax import mixing as mixing_lib  # pylint: disable=g-import-not-at-top
  from mixjax import models as models_lib  # pylint: disable=g-import-not-at-top
  from mixjax.train import methods as methods_lib  # pylint: disable=g-import-not-at-top

  def choice(value, valid, key):
    if value not in valid:
      _fail(f"config.{key}={value!r} is not valid. Valid choices: "
            f"{', '.join(repr(v) for v in valid)}.")

  streamed = _check_streaming(config, check_data)
  for key, lookup in (("dataset.name", (lambda n: n) if streamed else data_lib.DATASETS.get),
                      ("model.name", models_lib.MODELS.get),
                      ("method.name", methods_lib.METHODS.get),
                      ("method.loss", losses_lib.get_loss)):
    section, leaf = key.split(".")
    try:
      lookup(config[section][leaf])
    except ValueError as e:
      _fail(f"config.{key}: {e} Set it with --config.{key}=<name>.")
  _check_sampler(config)
  _check_model_kwargs(config)
  choice(config.model.dtype, tuple(models_lib.COMPUTE_DTYPES), "model.dtype")
  choice(config.mixing.granularity, mixing_lib.GRANULARITIES, "mixing.granularity")
  choice(config.mixing.pairing, mixing_lib.PAIRINGS, "mixing.pairing")
  choice(config.optimizer.name, OPTIMIZERS, "optimizer.name")
  choice(config.group_mode, GROUP_MODES, "group_mode")
  choice(config.optimizer.schedule, SCHEDULES, "optimizer.schedule")
  for key, valid in config_lib.RANGES.items():  # declared next to the defaults
    value = config_lib.get(config, key)
    if not valid.contains(value):
      _fail(f"config.{key}={value} must be {valid.describe()}.")
  method = methods_lib.METHODS.get(config.method.name)
  if "method.estimator" in method.options:
    from mixjax.theory import approx_risk  # pylint: disable=g-import-not-at-top
    estimators = getattr(approx_risk, "ESTIMATORS", ("exact", "lowrank", "stochastic"))
    choice(config.method.estimator, tuple(estimators), "method.estimator")
    if config.method.estimator == "lowrank" and not config.stats.rank:
      _fail("config.method.estimator='lowrank' needs principal directions: set "
            "--config.stats.rank=k (k >= 1).")
  if "method.terms" in method.options:
    for t in config.method.terms:
      choice(t, APPROX_TERMS, "method.terms[...]")
    if not config.method.terms:
      _fail(f"config.method.terms is empty: method {method.name!r} needs at least one of "
            f"{APPROX_TERMS} (the ERM term on transformed data is always included).")

  ndev = jax.device_count() if num_devices is None else num_devices
  if config.batch_size <= 0 or config.batch_size % ndev:
    suggestion = ndev * max(1, round(max(config.batch_size, 1) / ndev))
    _fail(f"config.batch_size={config.batch_size} must be positive and divisible by the "
          f"device count ({ndev}): each device takes batch_size / {ndev} examples. "
          f"Use e.g. --config.batch_size={suggestion}.")
  if config.optimizer.schedule == "piecewise":
    b = list(config.optimizer.boundaries)
    if any(x <= 0 for x in b) or b != sorted(b):
      _fail(f"config.optimizer.boundaries={tuple(b)} must be increasing positive epochs.")
  if not (config.num_steps and config.num_steps > 0) and config.num_epochs <= 0:
    _fail(f"config.num_epochs={config.num_epochs} must be > 0 (or set config.num_steps > 0).")
  if check_data:
    _check_data_present(config)
  _check_shift(config, check_data)
  if check_data and not streamed:
    _check_batch_fits(config)


# ---------------------------------------------- the command line, before absl parses it


def _config_arg(argv) -> str | None:
  """The value of --config in argv (the last one wins, as in absl), or None."""
  value = None
  for i, a in enumerate(argv):
    if a.startswith("--config="):
      value = a[len("--config="):]
    elif a == "--config" and i + 1 < len(argv):
      value = argv[i + 1]
  return value


def _overrides(argv) -> list[tuple[str, str]]:
  """(dotted key, value) of every --config.<key>=<value> in argv."""
  out = []
  for a in argv:
    if a.startswith("--config."):
      path, _, value = a[len("--config."):].partition("=")
      out.append((path, value))
  return out


def _config_file_problem(value: str) -> str | None:
  """A message if --config=value names no readable file, else None."""
  path = value.split(":", 1)[0]
  if os.path.isfile(path):
    return None
  folder = os.path.dirname(path) or "."
  files = sorted(f for f in os.listdir(folder) if f.endswith(".py")
                 and not f.startswith("_")) if os.path.isdir(folder) else []
  close = difflib.get_close_matches(os.path.basename(path), files, n=1)
  where = os.path.abspath(folder)
  return (f"--config={value}: no such file (looked in {where}/"
          + ("" if os.path.isabs(path) else f", relative to the current directory "
             f"{os.getcwd()}") + "). "
          + (f"Config files in {folder}/: {', '.join(files)}."
             if files else f"{folder}/ holds no config files.")
          + (f" Did you mean {os.path.join(folder, close[0])}?" if close else "")
          + " Pass a get_config() file, e.g. --config=experiments/mnist1d.py.")


def _load_config(value: str):
  """The --config file's get_config(arg) (ConfigError naming the problem otherwise)."""
  try:
    module = config_lib.load_config_module(value)
  except SyntaxError as e:
    raise ConfigError(f"--config={value}: {e.filename}, line {e.lineno}: "
                      f"{e.msg}. Fix the file.") from e
  except Exception as e:  # pylint: disable=broad-except  (the module raised on import)
    raise ConfigError(f"--config={value}: loading it raised {type(e).__name__}: "
                      f"{one_line(e).rstrip('.')}. Fix the file.") from e
  if not hasattr(module, "get_config"):
    raise ConfigError(f"--config={value}: the file defines no get_config(). "
                      "Define one that returns an ml_collections.ConfigDict.")
  try:
    config = module.get_config(*value.split(":", 1)[1:])
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError(
        f"--config={value}: get_config() raised {type(e).__name__}: "
        f"{one_line(e).rstrip('.')}. Fix the file or its argument.") from e
  if not hasattr(config, "to_dict"):
    raise ConfigError(f"--config={value}: get_config() returned "
                      f"{type(config).__name__}, not a ConfigDict. Return the config.")
  return config.to_dict()


def _value_problem(path: str, value: str, current) -> str | None:
  """A message if `value` cannot be parsed as the type of the knob's `current` value."""
  def literal():
    try:
      return ast.literal_eval(value)
    except (ValueError, SyntaxError):
      return None
  if isinstance(current, bool):
    ok = value.lower() in ("true", "false", "t", "f", "1", "0")
  elif isinstance(current, int):
    ok = isinstance(literal(), int)
  elif isinstance(current, float):
    ok = isinstance(literal(), (int, float))
  elif isinstance(current, (tuple, list)):
    ok = isinstance(literal(), (tuple, list, int, float, str))
  elif isinstance(current, dict):
    ok = isinstance(literal(), dict)
  else:
    ok = True
  if ok:
    return None
  if isinstance(current, dict):
    expected = f"a dict literal, e.g. --config.{path}='{{\"<key>\": <value>}}' (now {current})"
  else:
    kind = type(current).__name__
    expected = f"{'an' if kind[0] in 'aeiou' else 'a'} {kind} (now {current!r})"
  return f"--config.{path}={value} does not parse. --config.{path} takes {expected}."


def _sampler_param_problem(path: str, value: str, key: str, argv, config) -> str | None:
  """The message for --config.sampler.params.<key>=<value> where the law takes no
  `key`: the law's own parameters and how to set them (`sampler_params_hint`), not the
  typo back; None when the law does not load (the generic message then)."""
  name = config["sampler"]["name"]
  for p, v in _overrides(argv):
    if p == "sampler.name":
      name = v
  try:
    hint = sampler_params_hint(name)
  except Exception:  # pylint: disable=broad-except  (validate_config names the problem)
    return None
  if not hint:
    return None
  from mixjax.samplers import laws as laws_lib  # pylint: disable=g-import-not-at-top
  import inspect  # pylint: disable=g-import-not-at-top
  names = [p.name for p in inspect.signature(laws_lib.sampler_factory(name)).parameters
           .values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
  close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
  return (f"--config.{path}={value}: sampler {name!r} has no parameter {key!r}"
          + (f" (did you mean {close[0]!r}?)" if close else "") + f". {hint}.")


def check_config_flags(argv) -> None:
  """What mixjax can check before absl parses the flags: the --config file exists,
  imports and returns a ConfigDict; every --config.<key> override names a key, and its
  value parses as the knob's type. Raises ConfigError naming the problem and the fix."""
  value = _config_arg(argv)
  if value is None:
    return  # absl says that --config is required
  problem = _config_file_problem(value)
  if problem is not None:
    raise ConfigError(problem)
  config = _load_config(value)
  for path, val in _overrides(argv):
    missing = find_unknown_key(config, path)
    if missing is not None:
      parent, key = missing
      node = config
      for p in parent.split(".")[1:]:
        node = node[p]
      if parent == "config.sampler.params":
        problem = _sampler_param_problem(path, val, key, argv, config)
        if problem is not None:
          raise ConfigError(problem)
      whole = ""
      if parent[len("config."):] in config_lib.DICT_KNOBS:
        whole = (f" --{parent} is a dict: set it whole, e.g. "
                 f"--{parent}='{{\"{key}\": {val or '...'}}}'.")
      raise ConfigError(
          f"--config.{path}={val}: {parent} has no key {key!r}. "
          f"{unknown_key_hint(node, key)}{whole} Every knob and its default "
          "is listed in mixjax/train/config.py.")
    problem = _value_problem(path, val, config_lib.get(config, path))
    if problem is not None:
      raise ConfigError(problem)
