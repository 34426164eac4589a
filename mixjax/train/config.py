"""The training configuration: every knob, its one name and its one default.

`base_config()` returns the full `ml_collections.ConfigDict` that `experiments/*.py`
start from (they change values, never add knobs), and `validate_config` checks a
resolved config *before anything is compiled*: unknown names list the valid choices
(through the registries), impossible values say what to change.

Layout (override any leaf with `--config.<path>=value`; dict-valued leaves such as
`sampler.params` or `model.kwargs` take a dict literal, e.g.
`--config.sampler.params='{"lam": 0.7}'`):

  seed                         the run's randomness: init, data order, λ, augment, dropout
  num_seeds                    K > 1: train seeds seed, seed+1, …, seed+K−1 as one seed
                               group (`train_and_evaluate`; each run in WORKDIR/seed_<s>/)
  group_mode                   how a group runs: auto | vmap (one program, runs vmapped) |
                               sequential (one after another, one compiled step); auto =
                               sequential for convolutional models on CPU, vmap otherwise
  dataset.name / data_dir / val_fraction / kwargs (loader options, e.g. two_moons' features)
  dataset.split_seed           seed of the validation split (fixed across run seeds, so
                               the runs of a seed group see the same data)
  dataset.num_train            train on the first N examples of the training split (0: all)
  model.name / kwargs          `mixjax.models.get_model(name, num_classes, **kwargs)`
  model.input_shape            reshape each example to this shape inside the model (e.g.
                               (40, 1, 1) to run LeNet on MNIST-1D signals); data, stats and
                               mixing stay in the dataset's shape
  method.name                  erm | mixup | regmixup | erm_transformed | perturbed_erm | approx
  method.loss                  per-example loss name (`mixjax.losses.LOSSES`)
  method.eta                   RegMixup weight η (regmixup only)
  method.num_draws             perturbation draws per example (perturbed_erm only)
  method.estimator / num_probes / terms   approx only (`approx_mixup_risk`)
  sampler.name / params        `mixjax.samplers.make_sampler(name, **params)`
  mixing.granularity / pairing / fold / global_draw
  optimizer.name               sgd (momentum, nesterov) | adam
  optimizer.lr / weight_decay / schedule (constant | piecewise | cosine)
  optimizer.boundaries / decay_factor     piecewise: multiply lr by decay_factor at these epochs
  optimizer.warmup_epochs      linear warm-up from 0 (any schedule)
  batch_size                   global batch (all devices together)
  num_epochs / num_steps       num_steps > 0 overrides num_epochs
  augment.enabled / crop_padding / flip   images only (random crop + horizontal flip)
  stats.rank                   top-k principal directions kept in DataStats (None: none)
  eval.every_epochs / batch_size / num_bins / rescale
  log_every_steps / checkpoint_every_steps / max_to_keep
  tensorboard                  TensorBoard files besides metrics.jsonl (False: JSONL only)
  data_on_device               hold the training set on device (replicated) if it fits
  steps_per_call               k train steps per dispatch, as a lax.scan in the compiled
                               program (1: one dispatch per step, the fastest measured on
                               XLA:CPU for convolutions; larger k pays where dispatch
                               dominates: tiny models, accelerators). Same steps for any k
  allow_config_change          resume a workdir whose config.json differs in keys outside
                               `RESUMABLE_CHANGES` (default False: refused, see below)

Errors a run's inputs can raise, each mapped to one exit code by `mixjax.main`:
`ConfigError` (a ValueError: a bad config, exit 2) and `WorkdirError` (an unusable
workdir or checkpoint, or a config that differs from the one the workdir was started
with, exit 5).

Resuming with a changed config (`check_workdir_config`): WORKDIR/config.json holds the
config of the run's first start. When the workdir holds a run (checkpoints or a summary),
a config that differs from it in any key outside `RESUMABLE_CHANGES` is refused, listing
the keys (old → new), unless `allow_config_change=True`; the keys of `RESUMABLE_CHANGES`
(length of training, logging, evaluation and checkpoint cadence, the data folder) may
change by design. A key the old config.json lacks (a knob added to mixjax since) is no
change when it has its default value. An accepted change is logged and config.json is
rewritten.
"""
from __future__ import annotations

import difflib
import importlib.util
import json
import math
import os
import types
from typing import Any, Mapping

import ml_collections
from ml_collections import config_dict

GROUP_MODES = ("auto", "vmap", "sequential")
METHOD_NAMES = ("erm", "mixup", "regmixup", "erm_transformed", "perturbed_erm", "approx")
APPROX_TERMS = ("jacobian", "cross", "hessian", "label")
OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "piecewise", "cosine")
CONFIG_FILE = "config.json"
# Dict-valued knobs: overridden whole with a dict literal (their keys are free).
DICT_KNOBS = ("dataset.kwargs", "model.kwargs", "sampler.params")
# Keys (and dotted prefixes) a resumed run may change without allow_config_change.
RESUMABLE_CHANGES = ("num_epochs", "num_steps", "log_every_steps", "eval.every_epochs",
                     "eval.batch_size", "checkpoint_every_steps", "max_to_keep",
                     "dataset.data_dir", "allow_config_change", "steps_per_call",
                     "tensorboard")


class ConfigError(ValueError):
  """A bad config value or key; the message names it, the valid choices and the fix."""


class WorkdirError(RuntimeError):
  """The workdir cannot be used: not creatable, no restorable checkpoint, or started
  with a config that differs from this one. The message says what to do."""


def base_config() -> ml_collections.ConfigDict:
  """All knobs with their defaults (a small MLP with mixup Beta(1, 1) on MNIST-1D)."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.num_seeds = 1
  c.group_mode = "auto"

  c.dataset = ml_collections.ConfigDict()
  c.dataset.name = "mnist1d"
  c.dataset.data_dir = config_dict.placeholder(str)
  c.dataset.val_fraction = 0.1
  c.dataset.split_seed = 0
  c.dataset.num_train = 0
  c.dataset.kwargs = ml_collections.ConfigDict()

  c.model = ml_collections.ConfigDict()
  c.model.name = "mlp"
  c.model.kwargs = ml_collections.ConfigDict()
  c.model.input_shape = config_dict.placeholder(tuple)

  c.method = ml_collections.ConfigDict()
  c.method.name = "mixup"
  c.method.loss = "cross_entropy"
  c.method.eta = 1.0
  c.method.num_draws = 1
  c.method.estimator = "stochastic"
  c.method.num_probes = 1
  # The paper drops the hessian term (R2) in training: it was numerically unstable.
  c.method.terms = ("jacobian", "cross", "label")

  c.sampler = ml_collections.ConfigDict()
  c.sampler.name = "beta"
  c.sampler.params = ml_collections.ConfigDict({"alpha": 1.0})

  c.mixing = ml_collections.ConfigDict()
  c.mixing.granularity = "example"
  c.mixing.pairing = "permutation"
  c.mixing.fold = False
  c.mixing.global_draw = False

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "sgd"
  c.optimizer.lr = 0.1
  c.optimizer.momentum = 0.9
  c.optimizer.nesterov = False
  c.optimizer.weight_decay = 1e-4
  c.optimizer.schedule = "piecewise"
  c.optimizer.boundaries = (100, 150)
  c.optimizer.decay_factor = 0.1
  c.optimizer.warmup_epochs = 0.0

  c.batch_size = 128
  c.num_epochs = 200
  c.num_steps = 0

  c.augment = ml_collections.ConfigDict()
  c.augment.enabled = False
  c.augment.crop_padding = 4
  c.augment.flip = True

  c.stats = ml_collections.ConfigDict()
  c.stats.rank = config_dict.placeholder(int)

  c.eval = ml_collections.ConfigDict()
  c.eval.every_epochs = 10
  c.eval.batch_size = 1000
  c.eval.num_bins = 15
  c.eval.rescale = True

  c.log_every_steps = 100
  c.tensorboard = True
  c.checkpoint_every_steps = 1000
  c.max_to_keep = 2
  c.data_on_device = True
  c.steps_per_call = 1
  c.allow_config_change = False
  return c


def load_config_module(path: str) -> types.ModuleType:
  """Imports a config file (`experiments/*.py`, the part before any `:arg`) by path.

  Config files are loaded by path, not as a package, as `--config=<file>` does."""
  path = os.path.abspath(path.split(":", 1)[0])
  name = "_mixjax_config_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  if spec is None:
    raise ValueError(f"Cannot load config file {path!r}.")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def sweep_config(config: ml_collections.ConfigDict, overrides: dict[str, Any]
                 ) -> ml_collections.ConfigDict:
  """A copy of `config` with `overrides` ({"a.b": value}) applied; unknown keys raise."""
  config = ml_collections.ConfigDict(config.to_dict())
  for path, value in overrides.items():
    node = config
    *parents, leaf = path.split(".")
    for p in parents:
      node = node[p]
    if leaf not in node:
      raise ConfigError(f"Sweep override {path!r}: no such config key. "
                        + unknown_key_hint(node, leaf))
    if isinstance(node[leaf], ml_collections.ConfigDict) and isinstance(value, dict):
      node[leaf] = ml_collections.ConfigDict(value)
    else:
      node[leaf] = value
  return config


def load_sweep(config_path: str, module: types.ModuleType | None = None) -> list[dict]:
  """`get_sweep()` of a config file (or of its already loaded `module`), called with the
  file's `:arg` when it has one (as `get_config`): one override dict {"a.b": value} per
  point (ConfigError if the file has none)."""
  module = module or load_config_module(config_path)
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
  import re  # pylint: disable=g-import-not-at-top
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
  module = load_config_module(config_path)
  arg = config_path.split(":", 1)[1] if ":" in config_path else None
  file_config = module.get_config(arg) if arg is not None else module.get_config()
  cli = set(config_changes(json.loads(config_to_json(file_config)),
                           json.loads(config_to_json(config))))
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


def total_steps(config: ml_collections.ConfigDict, num_train: int) -> int:
  """config.num_steps if > 0, else num_epochs × full batches per epoch."""
  from mixjax import data as data_lib  # pylint: disable=g-import-not-at-top
  if config.num_steps and config.num_steps > 0:
    return int(config.num_steps)
  return int(config.num_epochs) * data_lib.steps_per_epoch(num_train, config.batch_size)


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
  if unknown:
    close = sorted({c for k in unknown
                    for c in difflib.get_close_matches(k, allowed, n=2, cutoff=0.6)})
    _fail(f"config.model.kwargs={kwargs}: model {config.model.name!r} has no argument "
          f"{', '.join(repr(k) for k in unknown)}"
          + (" (num_classes comes from the dataset)" if "num_classes" in unknown else "")
          + f". Its arguments: {', '.join(allowed)}."
          + (f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else "")
          + " Set them with --config.model.kwargs='{\"<argument>\": <value>}'.")


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


def validate_config(config: ml_collections.ConfigDict, *, num_devices: int | None = None,
                    check_data: bool = True) -> None:
  """Checks a resolved config before anything is compiled or loaded.

  Raises a ValueError naming the bad key, the bad value and the valid choices (names go
  through the registries: `MODELS`, `DATASETS`, `SAMPLERS`, `LOSSES`, `METHODS`), for:
  unknown dataset / model / method / sampler / loss / optimizer / schedule / granularity /
  pairing / estimator / approx term; sampler parameters the sampler rejects (α ≤ 0, …:
  the sampler is built here); batch size not divisible by the device count; lr ≤ 0;
  no epochs or steps; val_fraction outside [0, 1); negative weight decay, momentum
  outside [0, 1), η < 0; nonpositive intervals; model arguments (`model.kwargs`) the
  model does not take; a batch larger than the training split (its size from metadata:
  `mixjax.data.train_size`, no data is read; skipped when unknown, e.g. a tfds dataset
  not prepared yet). Cheap: nothing is traced.

  Args:
    config: the resolved config.
    num_devices: devices the batch is split over (default: `jax.device_count()`).
    check_data: also check the batch size against the training split's size.

  Raises:
    ConfigError (a ValueError) naming the key, the value, the choices and the fix.
  """
  # Imported here so that reading a config never imports the heavy modules.
  import jax  # pylint: disable=g-import-not-at-top
  from mixjax import data as data_lib  # pylint: disable=g-import-not-at-top
  from mixjax import losses as losses_lib  # pylint: disable=g-import-not-at-top
  from mixjax import mixing as mixing_lib  # pylint: disable=g-import-not-at-top
  from mixjax import models as models_lib  # pylint: disable=g-import-not-at-top
  from mixjax import samplers as samplers_lib  # pylint: disable=g-import-not-at-top
  from mixjax.train import methods as methods_lib  # pylint: disable=g-import-not-at-top

  def choice(value, valid, key):
    if value not in valid:
      _fail(f"config.{key}={value!r} is not valid. Valid choices: "
            f"{', '.join(repr(v) for v in valid)}.")

  for key, lookup in (("dataset.name", data_lib.DATASETS.get),
                      ("model.name", models_lib.MODELS.get),
                      ("method.name", methods_lib.METHODS.get),
                      ("method.loss", losses_lib.get_loss),
                      ("sampler.name", samplers_lib.SAMPLERS.get)):
    section, leaf = key.split(".")
    try:
      lookup(config[section][leaf])
    except ValueError as e:
      _fail(f"config.{key}: {e} Set it with --config.{key}=<name>.")
  _check_model_kwargs(config)
  try:  # builds the sampler: α <= 0 and other impossible parameters raise here
    samplers_lib.make_sampler(config.sampler.name, **dict(config.sampler.params))
  except (TypeError, ValueError) as e:
    _fail(f"config.sampler.params={dict(config.sampler.params)} do not fit sampler "
          f"{config.sampler.name!r}: {e} Set them with "
          f"--config.sampler.params='{{\"<name>\": <value>}}'.")
  choice(config.mixing.granularity, mixing_lib.GRANULARITIES, "mixing.granularity")
  choice(config.mixing.pairing, mixing_lib.PAIRINGS, "mixing.pairing")
  choice(config.optimizer.name, OPTIMIZERS, "optimizer.name")
  choice(config.group_mode, GROUP_MODES, "group_mode")
  if config.steps_per_call < 1:
    _fail(f"config.steps_per_call={config.steps_per_call} must be >= 1 (1: one dispatch "
          "per step).")
  if config.num_seeds < 1:
    _fail(f"config.num_seeds={config.num_seeds} must be >= 1 (1: a single run).")
  choice(config.optimizer.schedule, SCHEDULES, "optimizer.schedule")
  if config.method.name == "approx":
    from mixjax.theory import approx_risk  # pylint: disable=g-import-not-at-top
    estimators = getattr(approx_risk, "ESTIMATORS", ("exact", "lowrank", "stochastic"))
    choice(config.method.estimator, tuple(estimators), "method.estimator")
    for t in config.method.terms:
      choice(t, APPROX_TERMS, "method.terms[...]")
    if not config.method.terms:
      _fail("config.method.terms is empty: the approx method needs at least one of "
            f"{APPROX_TERMS} (the ERM term on transformed data is always included).")
    if config.method.num_probes < 1:
      _fail(f"config.method.num_probes={config.method.num_probes} must be >= 1.")
    if config.method.estimator == "lowrank" and not config.stats.rank:
      _fail("config.method.estimator='lowrank' needs principal directions: set "
            "--config.stats.rank=k (k >= 1).")

  ndev = jax.device_count() if num_devices is None else num_devices
  if config.batch_size <= 0 or config.batch_size % ndev:
    suggestion = ndev * max(1, round(max(config.batch_size, 1) / ndev))
    _fail(f"config.batch_size={config.batch_size} must be positive and divisible by the "
          f"device count ({ndev}): each device takes batch_size / {ndev} examples. "
          f"Use e.g. --config.batch_size={suggestion}.")
  if not config.optimizer.lr > 0 or not math.isfinite(config.optimizer.lr):
    _fail(f"config.optimizer.lr={config.optimizer.lr} must be a finite number > 0.")
  if config.optimizer.weight_decay < 0:
    _fail(f"config.optimizer.weight_decay={config.optimizer.weight_decay} must be >= 0.")
  if config.optimizer.name == "sgd" and not 0 <= config.optimizer.momentum < 1:
    _fail(f"config.optimizer.momentum={config.optimizer.momentum} must be in [0, 1).")
  if config.optimizer.schedule == "piecewise":
    if not 0 < config.optimizer.decay_factor <= 1:
      _fail(f"config.optimizer.decay_factor={config.optimizer.decay_factor} must be in (0, 1].")
    b = list(config.optimizer.boundaries)
    if any(x <= 0 for x in b) or b != sorted(b):
      _fail(f"config.optimizer.boundaries={tuple(b)} must be increasing positive epochs.")
  if config.optimizer.warmup_epochs < 0:
    _fail(f"config.optimizer.warmup_epochs={config.optimizer.warmup_epochs} must be >= 0.")
  if not (config.num_steps and config.num_steps > 0) and config.num_epochs <= 0:
    _fail(f"config.num_epochs={config.num_epochs} must be > 0 (or set config.num_steps > 0).")
  if config.num_steps < 0:
    _fail(f"config.num_steps={config.num_steps} must be >= 0 (0: use num_epochs).")
  if not 0 <= config.dataset.val_fraction < 1:
    _fail(f"config.dataset.val_fraction={config.dataset.val_fraction} must be in [0, 1).")
  if config.dataset.num_train < 0:
    _fail(f"config.dataset.num_train={config.dataset.num_train} must be >= 0 (0: the whole "
          "training split).")
  if config.method.eta < 0:
    _fail(f"config.method.eta={config.method.eta} must be >= 0.")
  if config.method.num_draws < 1:
    _fail(f"config.method.num_draws={config.method.num_draws} must be >= 1.")
  if config.stats.rank is not None and config.stats.rank < 1:
    _fail(f"config.stats.rank={config.stats.rank} must be >= 1 (or unset).")
  for key in ("log_every_steps", "checkpoint_every_steps", "max_to_keep"):
    if config[key] <= 0:
      _fail(f"config.{key}={config[key]} must be > 0.")
  if config.eval.every_epochs < 0 or config.eval.batch_size <= 0 or config.eval.num_bins <= 0:
    _fail("config.eval.every_epochs must be >= 0 (0: only at the end), "
          "config.eval.batch_size and config.eval.num_bins > 0.")
  if config.augment.crop_padding < 0:
    _fail(f"config.augment.crop_padding={config.augment.crop_padding} must be >= 0.")
  if check_data:
    _check_batch_fits(config)


# ----------------------------------------------------------------------------- workdir


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


def config_to_json(config: ml_collections.ConfigDict) -> str:
  """The config as written to WORKDIR/config.json (tuples as lists)."""
  if hasattr(config, "to_json_best_effort"):
    return config.to_json_best_effort(indent=2, sort_keys=True)
  return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str)


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in tree.items():
    if isinstance(v, Mapping) and v:
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


_ABSENT = "<absent>"


def config_changes(old: Mapping[str, Any], new: Mapping[str, Any]
                   ) -> dict[str, tuple[Any, Any]]:
  """{dotted key: (old value, new value)} for the leaves where two JSON configs differ
  (a key present on one side only shows `<absent>` on the other)."""
  old, new = _flatten(old), _flatten(new)
  return {k: (old.get(k, _ABSENT), new.get(k, _ABSENT))
          for k in sorted(set(old) | set(new))
          if old.get(k, _ABSENT) != new.get(k, _ABSENT)}


def is_resumable_change(key: str) -> bool:
  return any(key == a or key.startswith(a + ".") for a in RESUMABLE_CHANGES)


def check_workdir_config(config: ml_collections.ConfigDict, workdir: str, *,
                         has_run: bool, write: bool = True) -> dict[str, tuple[Any, Any]]:
  """Compares `config` with WORKDIR/config.json, then (if `write`) writes it there.

  Args:
    config: the resolved config of this start.
    workdir: the run's folder.
    has_run: the workdir holds a run to resume (checkpoints or a summary). Without one,
      a changed config simply replaces config.json (a start that failed early).
    write: write config.json (process 0 only, so a multi-process run writes it once).

  Returns:
    The changes accepted ({key: (old, new)}), empty for a first start or the same config.

  Raises:
    WorkdirError: the workdir's run was started with a config that differs in a key
      outside `RESUMABLE_CHANGES` and `config.allow_config_change` is False; the message
      lists the keys (old → new) and the two ways out.
  """
  from absl import logging  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, CONFIG_FILE)
  text = config_to_json(config)
  changes = {}
  if has_run and os.path.exists(path):
    try:
      with open(path) as f:
        old = json.load(f)
    except (OSError, ValueError) as e:
      old = None
      if not config.allow_config_change:
        raise WorkdirError(
            f"{path} cannot be read ({e}), so this run cannot be checked against the "
            "config the workdir was started with. Pass --config.allow_config_change=True "
            "to resume anyway, or use a fresh --workdir.") from e
    if old is not None:
      changes = config_changes(old, json.loads(text))
      # A knob added to mixjax after the run started, at its default, changes nothing.
      defaults = _flatten(json.loads(config_to_json(base_config())))
      changes = {k: (a, b) for k, (a, b) in changes.items()
                 if not (a == _ABSENT and k in defaults and defaults[k] == b)}
    refused = {k: v for k, v in changes.items() if not is_resumable_change(k)}
    if refused and not config.allow_config_change:
      listed = "; ".join(f"{k}: {json.dumps(a)} -> {json.dumps(b)}"
                         for k, (a, b) in refused.items())
      raise WorkdirError(
          f"--workdir={workdir} holds a run started with a different config ({listed}); "
          "resuming it would report the old run's results as this config's. Use a "
          "fresh --workdir, or pass --config.allow_config_change=True to resume with the "
          f"new config anyway. Changes allowed without it: {', '.join(RESUMABLE_CHANGES)}.")
    if changes:
      logging.warning("Resuming %s with a changed config (config.json rewritten): %s",
                      workdir, "; ".join(f"{k}: {json.dumps(a)} -> {json.dumps(b)}"
                                         for k, (a, b) in changes.items()))
  if write:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
      f.write(text)
    os.replace(tmp, path)
  return changes
