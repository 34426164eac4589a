"""The training configuration: every knob, its one name and its one default.

`base_config()` returns the full `ml_collections.ConfigDict` that `experiments/*.py`
start from (they change values, never add knobs), and `validate_config` checks a
resolved config *before anything is compiled*: unknown names list the valid choices
(through the registries), impossible values say what to change.

Layout (override any leaf with `--config.<path>=value`; dict-valued leaves such as
`sampler.params` or `model.kwargs` take a dict literal, e.g.
`--config.sampler.params='{"lam": 0.7}'`):

  seed                         one integer for everything (init, data order, λ, augment)
  dataset.name / data_dir / val_fraction / kwargs (loader options, e.g. two_moons' features)
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
  data_on_device               hold the training set on device (replicated) if it fits
"""
from __future__ import annotations

import importlib.util
import math
import os
import types
from typing import Any

import ml_collections
from ml_collections import config_dict

METHOD_NAMES = ("erm", "mixup", "regmixup", "erm_transformed", "perturbed_erm", "approx")
APPROX_TERMS = ("jacobian", "cross", "hessian", "label")
OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "piecewise", "cosine")


def base_config() -> ml_collections.ConfigDict:
  """All knobs with their defaults (a small MLP with mixup Beta(1, 1) on MNIST-1D)."""
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.dataset = ml_collections.ConfigDict()
  c.dataset.name = "mnist1d"
  c.dataset.data_dir = config_dict.placeholder(str)
  c.dataset.val_fraction = 0.1
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
  c.checkpoint_every_steps = 1000
  c.max_to_keep = 2
  c.data_on_device = True
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
      raise ValueError(f"Sweep override {path!r}: no such config key. Known keys here: "
                       f"{', '.join(sorted(node.keys()))}.")
    if isinstance(node[leaf], ml_collections.ConfigDict) and isinstance(value, dict):
      node[leaf] = ml_collections.ConfigDict(value)
    else:
      node[leaf] = value
  return config


def total_steps(config: ml_collections.ConfigDict, num_train: int) -> int:
  """config.num_steps if > 0, else num_epochs × full batches per epoch."""
  from mixjax import data as data_lib  # pylint: disable=g-import-not-at-top
  if config.num_steps and config.num_steps > 0:
    return int(config.num_steps)
  return int(config.num_epochs) * data_lib.steps_per_epoch(num_train, config.batch_size)


def _fail(msg: str):
  raise ValueError(msg)


def validate_config(config: ml_collections.ConfigDict, *, num_devices: int | None = None,
                    ) -> None:
  """Checks a resolved config before anything is compiled or loaded.

  Raises a ValueError naming the bad key, the bad value and the valid choices (names go
  through the registries: `MODELS`, `DATASETS`, `SAMPLERS`, `LOSSES`, `METHODS`), for:
  unknown dataset / model / method / sampler / loss / optimizer / schedule / granularity /
  pairing / estimator / approx term; sampler parameters the sampler rejects (α ≤ 0, …:
  the sampler is built here); batch size not divisible by the device count; lr ≤ 0;
  no epochs or steps; val_fraction outside [0, 1); negative weight decay, momentum
  outside [0, 1), η < 0; nonpositive intervals. Cheap: nothing is traced.

  Args:
    config: the resolved config.
    num_devices: devices the batch is split over (default: `jax.device_count()`).
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

  data_lib.DATASETS.get(config.dataset.name)
  models_lib.MODELS.get(config.model.name)
  methods_lib.METHODS.get(config.method.name)
  losses_lib.get_loss(config.method.loss)
  samplers_lib.SAMPLERS.get(config.sampler.name)
  try:  # builds the sampler: α <= 0 and other impossible parameters raise here
    samplers_lib.make_sampler(config.sampler.name, **dict(config.sampler.params))
  except (TypeError, ValueError) as e:
    _fail(f"config.sampler.params={dict(config.sampler.params)} do not fit sampler "
          f"{config.sampler.name!r}: {e} Set them with "
          f"--config.sampler.params='{{\"<name>\": <value>}}'.")
  choice(config.mixing.granularity, mixing_lib.GRANULARITIES, "mixing.granularity")
  choice(config.mixing.pairing, mixing_lib.PAIRINGS, "mixing.pairing")
  choice(config.optimizer.name, OPTIMIZERS, "optimizer.name")
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
