"""The parts of a program, from configs: the dataset, the model, the law and its
moments, the statistics, the method contexts (stacked for a vmapped group), the state
(created or restored) and the metric writers.

`program.assemble` puts them together once for R ≥ 1 runs (a lone run compiled without
the run axis; a vmapped group stacking the runs' states, and their contexts when they
differ); `sweeps` groups points with `group_key`. What a method needs (a law,
statistics, BatchNorm) is asked of its `methods.Method` entry, never of its name.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mixjax import data as data_lib
from mixjax import models as models_lib
from mixjax import samplers as samplers_lib
from mixjax import sharding
from mixjax import theory
from mixjax.data import streaming
from mixjax.errors import ConfigError
from mixjax.models import introspect
from mixjax.theory import stats as stats_lib
from mixjax.train import methods as methods_lib
from mixjax.train import optim
from mixjax.train import state as state_lib
from mixjax.train import workdir as workdir_lib
from mixjax.train import writers

STATS_FILE = "data_stats.npz"


# The last dataset loaded in this process ({key: dataset}, one entry): `load_data_once`.
_LOADED: dict[str, Any] = {}


def data_key(config: ml_collections.ConfigDict) -> str:
  """What `load_data` reads of a config (config.dataset and config.augment.enabled), as a
  string: two configs with equal keys load the same dataset."""
  return json.dumps([config.dataset.to_dict(), bool(config.augment.enabled)],
                    sort_keys=True, default=str)


def load_data_once(config: ml_collections.ConfigDict):
  """`load_data`, kept for the next caller with the same `data_key` in this process: the
  groups of a sweep and the runs of a sequential group read their data once. One
  dataset is kept (the last one loaded): a sweep over datasets holds one at a time."""
  key = data_key(config)
  if key not in _LOADED:
    _LOADED.clear()
    _LOADED[key] = load_data(config)
  return _LOADED[key]


def use_streaming(config: ml_collections.ConfigDict) -> bool:
  """Whether config.dataset is streamed (config.dataset.streaming: True / False, or
  "auto": the names without an in-memory loader (`data.DATASETS`: an image folder,
  ImageNet) and the tfds datasets whose images have no fixed size
  (`streaming.is_variable_size`); every registered dataset is held in memory)."""
  mode = config.dataset.streaming
  if isinstance(mode, bool):
    return mode
  name = config.dataset.name
  if name not in data_lib.DATASETS:
    return True
  if name not in data_lib.TFDS_DATASETS:
    return False
  try:
    return streaming.is_variable_size(name, config.dataset.data_dir)
  except FileNotFoundError:  # not prepared: the loader says how
    return False


def check_num_classes(config: ml_collections.ConfigDict, num_classes: int,
                      class_names=()) -> None:
  """config.dataset.num_classes, when set, equals the dataset's (ConfigError)."""
  want = config.dataset.num_classes
  if want is not None and int(want) != int(num_classes):
    names = list(class_names)
    shown = (f" ({', '.join(names[:5])}{', ...' if len(names) > 5 else ''})"
             if names else "")
    raise ConfigError(
        f"config.dataset.num_classes={want} but dataset {config.dataset.name!r} has "
        f"{num_classes} classes{shown}; drop --config.dataset.num_classes or make it "
        f"{num_classes}.")


def load_streamed(config: ml_collections.ConfigDict) -> streaming.StreamedDataset:
  """The streamed dataset (`streaming.load_streamed`); what streaming cannot do is a
  ConfigError: no config.dataset.image_size, a label-noise rate, the on-device augment
  (the stream crops and flips), a method that needs the training set's covariances
  (`Method.needs_covariance`: only x̄ and ȳ are computed, `streamed_stats`), a batch
  larger than the training split."""
  name = config.dataset.name
  if not config.dataset.image_size:
    raise ConfigError(f"Dataset {name!r} is streamed and needs the side of its images: "
                      "set --config.dataset.image_size=S (e.g. 64, or 224 for ImageNet).")
  if float(config.dataset.label_noise) > 0:
    raise ConfigError("config.dataset.label_noise > 0 applies to in-memory datasets "
                      f"only; {name!r} is streamed. Drop it.")
  if config.augment.enabled:
    raise ConfigError(
        f"config.augment.enabled=True but {name!r} is streamed, and the stream augments "
        "(random-resized crop and flip); set --config.augment.enabled=False.")
  method = methods_lib.get(config)
  if method.needs_covariance:
    raise ConfigError(
        f"method {method.name!r} needs the training set's covariances, which a streamed "
        "dataset does not compute (only its means); use mixup, regmixup, erm, "
        "erm_transformed or label_smoothing_matched.")
  try:
    ds = streaming.load_streamed(
        name, data_dir=config.dataset.data_dir, image_size=int(config.dataset.image_size),
        val_fraction=float(config.dataset.val_fraction),
        seed=int(config.dataset.split_seed), num_train=int(config.dataset.num_train))
  except ValueError as e:
    raise ConfigError(str(e)) from e
  check_num_classes(config, ds.num_classes, ds.class_names)
  if config.batch_size > ds.num_train:
    raise ConfigError(
        f"config.batch_size={config.batch_size} is larger than the training split of "
        f"{name!r} ({ds.num_train} examples): every step takes a full batch. Use "
        f"--config.batch_size=N with N <= {ds.num_train}.")
  return dataclasses.replace(ds, num_workers=int(config.dataset.num_workers))


def load_data(config: ml_collections.ConfigDict):
  """The dataset: streamed (`use_streaming`, `load_streamed`), or in memory
  (`data.load_dataset`, with config.dataset.label_noise on its training split:
  `data.with_label_noise`)."""
  if use_streaming(config):
    return load_streamed(config)
  ds = data_lib.load_dataset(config.dataset.name, data_dir=config.dataset.data_dir,
                             val_fraction=config.dataset.val_fraction,
                             seed=config.dataset.split_seed, num_train=config.dataset.num_train,
                             cache_dir=config.dataset.cache_dir or None,
                             **dict(config.dataset.kwargs))
  ds = data_lib.with_label_noise(ds, float(config.dataset.label_noise),
                                 int(config.dataset.split_seed))
  if config.augment.enabled and not ds.is_image:
    raise ConfigError(
        f"config.augment.enabled=True but {config.dataset.name} is not an image dataset; "
        "set --config.augment.enabled=False.")
  check_num_classes(config, ds.num_classes)
  return ds


def training_sampler(config: ml_collections.ConfigDict):
  """The mixing law of config.sampler (`methods.make_law`); `program.assemble` builds it
  once per run and every part of the program reads it from the run's context."""
  return methods_lib.make_law(config.sampler)


def check_law_fits_data(config: ml_collections.ConfigDict, law, ds) -> None:
  """A mask law, where the method uses the law, needs image inputs (ConfigError)."""
  if (methods_lib.get(config).uses_law and samplers_lib.is_mask_law(law)
      and (not ds.is_image or len(ds.input_shape) not in (2, 3))):
    raise ConfigError(
        f"config.sampler.name={config.sampler.name!r} is a mask law, which needs image "
        f"inputs (H, W[, C]), but {config.dataset.name}'s examples have shape "
        f"{tuple(ds.input_shape)}. Use a λ-law such as --config.sampler.name=beta, or an "
        "image dataset.")


def build_model(config: ml_collections.ConfigDict, num_classes: int, *,
                input_shape: tuple[int, ...] | None = None,
                bn_axis_name: str | None = sharding.AXIS):
  """`models.build_model` for config.model: BatchNorm over `bn_axis_name`, the network
  seeing config.model.input_shape (same number of entries as the data's `input_shape`),
  computing in config.model.dtype (float32 traces the same program as the model's
  default)."""
  target = config.model.input_shape
  model = models_lib.build_model(config.model.name, num_classes, dict(config.model.kwargs),
                                 input_shape=target, bn_axis_name=bn_axis_name,
                                 dtype=config.model.dtype)
  if target is not None and input_shape is not None:
    target = tuple(int(s) for s in target)
    if math.prod(target) != math.prod(input_shape):
      raise ValueError(
          f"config.model.input_shape={target} has {math.prod(target)} entries but the "
          f"dataset's examples have shape {tuple(input_shape)} ({math.prod(input_shape)}).")
  return model


def make_model(config: ml_collections.ConfigDict, ds):
  """`build_model` for the dataset; a model the method cannot train is a ConfigError."""
  input_shape = tuple(ds.input_shape)
  try:
    model = build_model(config, ds.num_classes, input_shape=input_shape)
  except (TypeError, ValueError) as e:
    raise ConfigError(
        f"config.model ({config.model.name!r}, kwargs={dict(config.model.kwargs)}, "
        f"input_shape={config.model.input_shape}): {e}") from e
  method = methods_lib.get(config)
  if not method.allows_batchnorm and introspect.has_batch_stats(model, input_shape):
    raise ConfigError(
        f"method {method.name!r} differentiates the model along input directions (JVPs), "
        f"which cannot carry BatchNorm batch statistics; model {config.model.name!r} has "
        "BatchNorm. Use a model without BatchNorm (mlp, lenet) or another method.")
  return model


def needs_stats(config: ml_collections.ConfigDict) -> bool:
  """The method uses the DataStats, or its model is rescaled at test time."""
  method = methods_lib.get(config)
  return method.needs_stats or (method.rescalable and config.eval.rescale)


def _stats_fingerprint(config, ds) -> dict[str, Any]:
  return {"dataset": config.dataset.name, "kwargs": json.dumps(dict(config.dataset.kwargs)),
          "val_fraction": float(config.dataset.val_fraction),
          "split_seed": int(config.dataset.split_seed), "n": int(ds.train_x.shape[0]),
          "label_noise": float(config.dataset.label_noise),
          "rank": -1 if config.stats.rank is None else int(config.stats.rank)}


def load_or_compute_stats(config, ds, workdir: str) -> theory.DataStats:
  """DataStats of the training split (one-hot labels), cached in WORKDIR/data_stats.npz.

  Only x̄ and ȳ (Σ None) unless the method needs the covariances
  (`Method.needs_covariance`): the rescaled evaluation and the other methods use the
  means alone, and the (d + c)² co-moment was most of the cost (0.6 s of a Fashion-MNIST
  run's start-up). The means are the same bit for bit either way.

  The cache is used only when it was computed for the same dataset, split, seed, rank
  and kind (means only or not); it is written by process 0 (atomically) and the others
  compute their own.
  """
  means_only = not methods_lib.get(config).needs_covariance
  fingerprint = _stats_fingerprint(config, ds)
  if means_only:
    fingerprint["means_only"] = True
  return stats_lib.cached_data_stats(
      os.path.join(workdir, STATS_FILE), fingerprint, ds.train_x, ds.train_y,
      num_classes=ds.num_classes, rank=None if means_only else config.stats.rank,
      write=jax.process_index() == 0, means_only=means_only)


def stream_seed(key) -> int:
  """A stream's seed in [0, 2⁶⁴) from a JAX key: its two uint32 words."""
  hi, lo = (int(w) for w in np.asarray(jax.random.key_data(key)).reshape(-1)[:2])
  return (hi << 32) | lo


def streamed_stats(config: ml_collections.ConfigDict, ds, workdir: str
                   ) -> theory.DataStats:
  """x̄ and ȳ of a streamed training split, cached in WORKDIR/data_stats.npz.

  One epoch of the training stream (`streaming.input_sums`: every kept example once, with
  one draw of its crop and flip, as the model trains on them) of seed
  config.dataset.split_seed (so the runs of a seed group share them), read whole by every
  process; Σ_xx, Σ_xy, Σ_yy are not computed (None: a method that needs them is refused
  in `load_streamed`). Reused when the fingerprint (dataset, split, image size, batch,
  seed) is the same; written by process 0 (atomically).
  """
  stream = streaming.TrainStream(ds.train, batch_size=int(config.batch_size),
                                 image_size=ds.image_size,
                                 seed=int(config.dataset.split_seed) % (1 << 64),
                                 num_workers=ds.num_workers, process_index=0,
                                 process_count=1)
  fingerprint = {"streamed": stream.state(0), "val_fraction": float(
      config.dataset.val_fraction), "split_seed": int(config.dataset.split_seed)}
  path = os.path.join(workdir, STATS_FILE)
  if os.path.exists(path):
    with np.load(path, allow_pickle=False) as z:
      if json.loads(str(z["fingerprint"])) == json.loads(json.dumps(fingerprint)):
        logging.info("Loaded data statistics from %s.", path)
        return theory.DataStats(
            x_mean=jnp.asarray(z["x_mean"]), y_mean=jnp.asarray(z["y_mean"]), sxx=None,
            sxy=None, syy=None, eigvecs=None, eigvals=None, n=int(z["n"]),
            input_shape=tuple(int(s) for s in z["input_shape"]))
  sx, sy, rows = streaming.input_sums(stream, stream.steps_per_epoch)
  x_mean, y_mean = (sx / rows).reshape(-1), sy / rows
  logging.info("Computed the streamed training split's means over one epoch (%d rows).",
               rows)
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    tmp = path + ".tmp.npz"
    np.savez(tmp, fingerprint=json.dumps(fingerprint), n=rows,
             input_shape=np.asarray(ds.input_shape, np.int64), x_mean=x_mean,
             y_mean=y_mean)
    os.replace(tmp, path)
  return theory.DataStats(x_mean=jnp.asarray(x_mean), y_mean=jnp.asarray(y_mean),
                          sxx=None, sxy=None, syy=None, eigvecs=None, eigvals=None,
                          n=rows, input_shape=tuple(ds.input_shape))


def training_stats(config: ml_collections.ConfigDict, ds, workdir: str):
  """The DataStats if the method or the rescaling needs them (float32 unless x64 is
  enabled), else None; a streamed dataset's means only (`streamed_stats`)."""
  if not needs_stats(config):
    return None
  if isinstance(ds, streaming.StreamedDataset):
    stats = streamed_stats(config, ds, workdir)
  else:
    stats = load_or_compute_stats(config, ds, workdir)
  if not jax.config.jax_enable_x64:
    stats = jax.tree.map(lambda a: np.asarray(a, np.float32), stats)
  return stats


def trained_law(config: ml_collections.ConfigDict, sampler=None):
  """The law the model effectively trains on: the sampler (config's by default), or
  what the method makes of it (`Method.equivalent_law`: RegMixup's
  `samplers.regmixup_equivalent`); None for methods that use no law."""
  method = methods_lib.get(config)
  if not method.uses_law:
    return None
  law = training_sampler(config) if sampler is None else sampler
  return law if method.equivalent_law is None else method.equivalent_law(law, config)


def training_moments(config: ml_collections.ConfigDict, sampler=None, input_shape=None):
  """Moments of the law the model effectively trains on (`trained_law`;
  `samplers.law_moments`: θ-moments of a λ-law, N̄ and the §8 moments of a mask law on
  images of `input_shape`); None for methods that use no law."""
  law = trained_law(config, sampler)
  return None if law is None else samplers_lib.law_moments(law, input_shape)


def method_context(config: ml_collections.ConfigDict, input_shape=None, sampler=None
                   ) -> methods_lib.MethodContext:
  """The run's method context (with `sampler`, the law already built, when given), its
  law's moments included (`training_moments`)."""
  ctx = methods_lib.MethodContext.from_config(config, sampler=sampler)
  return ctx.replace(moments=training_moments(config, ctx.sampler, input_shape))


def rescaling(moments):
  """What test-time rescaling needs of the training law: θ̄ (a float) for a λ-law, the
  mask moments (N̄ and θ̄) for a mask law, None outside the mixup family."""
  if moments is None:
    return None
  return moments if isinstance(moments, samplers_lib.MaskMoments) else float(moments.mean)


def stack_contexts(ctxs: list[methods_lib.MethodContext]) -> methods_lib.MethodContext:
  """The runs' contexts as one, every leaf stacked on a leading run axis (R, ...): the
  laws by `samplers.stack` (one sampler structure), their θ-moments by
  `samplers.stack_moments`, every other per-run value as a float32 (R,) array."""
  law = samplers_lib.stack([c.sampler for c in ctxs])
  moments = (None if ctxs[0].moments is None
             else samplers_lib.stack_moments([c.moments for c in ctxs]))
  rest = [c.replace(sampler=None, moments=None) for c in ctxs]
  stacked = jax.tree.map(lambda *xs: jnp.asarray(xs, jnp.float32), *rest)
  return stacked.replace(sampler=law, moments=moments)


def per_run_keys() -> tuple[str, ...]:
  """The config keys the runs of one vmapped program may differ in: the seed, the
  method context's leaves (`MethodContext.per_run_keys`: the law, η, …) and the
  optimizer's state-held hyper-parameters (`optim.HYPERPARAMS`)."""
  return (("seed",) + methods_lib.MethodContext.per_run_keys()
          + tuple(optim.HYPERPARAMS.values()))


def group_key(config: ml_collections.ConfigDict) -> str:
  """What runs must share to train as one vmapped program: the config but for
  `per_run_keys`, and one sampler structure (`samplers.structure`: e.g. Beta(α) for
  several α, or two-atom laws)."""
  flat = workdir_lib.flatten(json.loads(workdir_lib.config_to_json(config)))
  drop = per_run_keys()
  kept = {k: v for k, v in flat.items()
          if not any(k == d or k.startswith(d + ".") for d in drop)}
  kept["sampler_structure"] = samplers_lib.structure(training_sampler(config))
  return json.dumps(kept, sort_keys=True)


def initial_state(model, tx, mesh, roots, ds, *, hyperparams=None,
                  num_runs: int | None = None):
  """The initial TrainState from key data `roots` (2,), replicated on `mesh`; with
  `num_runs`, `roots` is (R, 2) and the runs' states are stacked on a leading axis.
  `hyperparams`: {name: (R,) or scalar} optimizer values put in the state
  (`optim.with_hyperparams`; default: the tx's own)."""
  sample = jnp.zeros((1,) + tuple(ds.input_shape), jnp.float32)

  def init(k, hyper):
    state = state_lib.create_state(model, tx, k, sample)
    if hyper:
      state = state.replace(opt_state=optim.with_hyperparams(state.opt_state, **hyper))
    return state

  if num_runs is not None:
    init = jax.vmap(init)
  return jax.jit(init, out_shardings=sharding.replicated(mesh))(roots, hyperparams or {})


def create_or_restore_state(model, tx, mesh, ckpt, roots, ds, *, hyperparams=None,
                            num_runs: int | None = None):
  """The initial state replicated on `mesh` (`initial_state`), or the latest
  restorable checkpoint's; and whether it was restored."""
  state = initial_state(model, tx, mesh, roots, ds, hyperparams=hyperparams,
                        num_runs=num_runs)
  restored = ckpt.restore_latest(state)
  if restored is None:
    return state, False
  state, meta = restored
  logging.info("Resumed from %s at step %d (epoch %d, batch %d of the epoch).",
               ckpt.directory, meta["step"], meta["epoch"], meta["batch_in_epoch"])
  return state, True


def open_writer(workdir: str, start: int, resumed: bool, *, tensorboard: bool = True
                ) -> writers.MetricWriter:
  """The metric writer (metrics.jsonl, and TensorBoard files unless `tensorboard` is
  False), its records after `start` (and the final ones) dropped."""
  writer = writers.MetricWriter(workdir, tensorboard=tensorboard)
  writer.truncate_after(start, drop_prefix="final")  # the final records are rewritten
  if resumed:
    writer.write(start, {"resumed_from_step": start})
  return writer
