"""Checking a resolved config before anything is loaded or compiled, and the hints its
messages give (the valid choices, "did you mean").

`validate_config` raises `ConfigError` (exit code 2 in `mixjax.main`) naming the key, the
value, the valid choices and the fix; names go through the registries, so an unknown
sampler, method, model, dataset or loss lists the known ones and the closest match.
"""
from __future__ import annotations

import difflib
import math
from typing import Any, Mapping

import ml_collections

from mixjax.errors import ConfigError

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
  `check_data`: a FileNotFoundError with the prepare command otherwise, exit 4)."""
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
      shift_lib.check_shift_prepared(name, config.dataset.data_dir, configs)


def validate_config(config: ml_collections.ConfigDict, *, num_devices: int | None = None,
                    check_data: bool = True) -> None:
  """Checks a resolved config before anything is compiled or loaded.

  Raises a ValueError naming the bad key, the bad value and the valid choices (names go
  through the registries: `MODELS`, `DATASETS`, `SAMPLERS`, `LOSSES`, `METHODS`), for:
  unknown dataset / model / method / sampler / loss / optimizer / schedule / granularity /
  pairing / estimator / approx term; sampler parameters the sampler rejects (α ≤ 0, …:
  the sampler is built here; `sampler_params_hint`); a user law MODULE:FACTORY that
  does not load, raises, or returns no valid law (`check_sampler`); batch size not divisible by the device count; lr ≤ 0;
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
  from mixjax.train import methods as methods_lib  # pylint: disable=g-import-not-at-top

  def choice(value, valid, key):
    if value not in valid:
      _fail(f"config.{key}={value!r} is not valid. Valid choices: "
            f"{', '.join(repr(v) for v in valid)}.")

  for key, lookup in (("dataset.name", data_lib.DATASETS.get),
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
  if not 0 <= config.dataset.label_noise < 1:
    _fail(f"config.dataset.label_noise={config.dataset.label_noise} must be in [0, 1) "
          "(0: clean labels).")
  if not 0 <= config.method.label_smoothing < 1:
    _fail(f"config.method.label_smoothing={config.method.label_smoothing} must be in "
          "[0, 1) (0: no smoothing).")
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
  _check_shift(config, check_data)
  if check_data:
    _check_batch_fits(config)
