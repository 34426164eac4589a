"""Setting up a run from its config: the dataset, the λ-law, the model, the statistics,
the method's context, the state (restored from the workdir's checkpoint), the writer and
the compiled train step. `loop.py` (one run), `groups.py` (seed groups and sweeps) and
`trained.py` (a trained run, for analysis) build on these.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Callable

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mixjax import data as data_lib
from mixjax import losses as losses_lib
from mixjax import models as models_lib
from mixjax import samplers as samplers_lib
from mixjax import theory
from mixjax.theory import stats as stats_lib
from mixjax.train import config as config_lib
from mixjax.train import methods as methods_lib
from mixjax.train import optim
from mixjax.train import state as state_lib
from mixjax.train import step as step_lib
from mixjax.train import writers


STATS_FILE = "data_stats.npz"


# The last compiled train step and its key (`make_step`): one entry, so that the runs of
# a sequential seed group share one compilation and nothing else is kept alive.
_STEP_CACHE: dict[str, Any] = {}


# Hold the training set on device when it takes at most this many bytes per device.
MAX_ON_DEVICE_BYTES = 4 << 30


def load_data(config: ml_collections.ConfigDict):
  """The dataset (`data.load_dataset`) and the number of steps per epoch."""
  ds = data_lib.load_dataset(config.dataset.name, data_dir=config.dataset.data_dir,
                             val_fraction=config.dataset.val_fraction,
                             seed=config.dataset.split_seed, num_train=config.dataset.num_train,
                             **dict(config.dataset.kwargs))
  spe = data_lib.steps_per_epoch(int(ds.train_x.shape[0]), config.batch_size)  # rejects B > n
  if config.augment.enabled and not ds.is_image:
    raise config_lib.ConfigError(
        f"config.augment.enabled=True but {config.dataset.name} is not an image dataset; "
        "set --config.augment.enabled=False.")
  return ds, spe


def training_sampler(config: ml_collections.ConfigDict):
  """The λ-law of the mixup part (config.sampler)."""
  return samplers_lib.make_sampler(config.sampler.name, **dict(config.sampler.params))


def build_model(config: ml_collections.ConfigDict, num_classes: int, *,
                input_shape: tuple[int, ...] | None = None,
                bn_axis_name: str | None = step_lib.AXIS):
  """`models.build_model` for config.model: BatchNorm over `bn_axis_name`, the network
  seeing config.model.input_shape (same number of entries as the data's `input_shape`)."""
  target = config.model.input_shape
  model = models_lib.build_model(config.model.name, num_classes, dict(config.model.kwargs),
                                 input_shape=target, bn_axis_name=bn_axis_name)
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
    raise config_lib.ConfigError(
        f"config.model ({config.model.name!r}, kwargs={dict(config.model.kwargs)}, "
        f"input_shape={config.model.input_shape}): {e}") from e
  if config.method.name == "approx" and has_batch_stats(model, input_shape):
    raise config_lib.ConfigError(
        f"method 'approx' differentiates the model along input directions (JVPs), which "
        f"cannot carry BatchNorm batch statistics; model {config.model.name!r} has "
        "BatchNorm. Use a model without BatchNorm (mlp, lenet) or another method.")
  return model


def needs_stats(config: ml_collections.ConfigDict) -> bool:
  name = config.method.name
  return name in methods_lib.NEEDS_STATS or (
      name in methods_lib.MIXUP_FAMILY and config.eval.rescale)


def _stats_fingerprint(config, ds) -> dict[str, Any]:
  return {"dataset": config.dataset.name, "kwargs": json.dumps(dict(config.dataset.kwargs)),
          "val_fraction": float(config.dataset.val_fraction),
          "split_seed": int(config.dataset.split_seed), "n": int(ds.train_x.shape[0]),
          "rank": -1 if config.stats.rank is None else int(config.stats.rank)}


def load_or_compute_stats(config, ds, workdir: str) -> theory.DataStats:
  """DataStats of the training split (one-hot labels), cached in WORKDIR/data_stats.npz.

  The cache is used only when it was computed for the same dataset, split, seed and
  rank; it is written by process 0 (atomically) and the others compute their own.
  """
  return stats_lib.cached_data_stats(
      os.path.join(workdir, STATS_FILE), _stats_fingerprint(config, ds), ds.train_x,
      ds.train_y, num_classes=ds.num_classes, rank=config.stats.rank,
      write=jax.process_index() == 0)


def training_law_and_stats(config: ml_collections.ConfigDict, sampler, ds, workdir: str):
  """θ-moments of the law the model effectively trains on (the mixup family; RegMixup's
  is `samplers.regmixup_equivalent`), and the DataStats if the method or the rescaling
  needs them (float32 unless x64 is enabled)."""
  stats = load_or_compute_stats(config, ds, workdir) if needs_stats(config) else None
  if stats is not None and not jax.config.jax_enable_x64:
    stats = jax.tree.map(lambda a: np.asarray(a, np.float32), stats)
  return training_moments(config, sampler), stats


def training_moments(config: ml_collections.ConfigDict, sampler):
  """θ-moments of the law the model effectively trains on: `sampler`'s, RegMixup's
  `samplers.regmixup_equivalent`; None outside the mixup family."""
  if config.method.name not in methods_lib.MIXUP_FAMILY:
    return None
  law = sampler
  if config.method.name == "regmixup":
    law = samplers_lib.regmixup_equivalent(sampler, float(config.method.eta))
  return samplers_lib.theta_moments(law)


def method_context(config: ml_collections.ConfigDict, sampler, moments
                   ) -> methods_lib.MethodContext:
  return methods_lib.MethodContext(
      loss=losses_lib.get_loss(config.method.loss), sampler=sampler,
      theta_bar=float(moments.mean) if moments is not None else 1.0,
      granularity=config.mixing.granularity, pairing=config.mixing.pairing,
      fold=config.mixing.fold, global_draw=config.mixing.global_draw,
      eta=float(config.method.eta), num_draws=int(config.method.num_draws),
      estimator=config.method.estimator, num_probes=int(config.method.num_probes),
      terms=tuple(config.method.terms))


def initial_state(model, tx, mesh, root, ds, *, num_runs: int | None = None):
  """The initial TrainState from key data `root` (2,), replicated on `mesh`; with
  `num_runs`, `root` is (R, 2) and the runs' states are stacked on a leading axis."""
  sample = jnp.zeros((1,) + tuple(ds.input_shape), jnp.float32)
  init = lambda k: state_lib.create_state(model, tx, k, sample)
  if num_runs is not None:
    init = jax.vmap(init)
  return jax.jit(init, out_shardings=step_lib.replicated(mesh))(root)


def create_or_restore_state(config: ml_collections.ConfigDict, model, tx, mesh, ckpt,
                            root, ds, *, num_runs: int | None = None):
  """The initial state replicated on `mesh`, or the latest restorable checkpoint's;
  and whether it was restored. With `num_runs`, `root` is (R, 2) (one key per run) and
  the state is the runs' states stacked on a leading axis."""
  state = initial_state(model, tx, mesh, root, ds, num_runs=num_runs)
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


def make_step(config: ml_collections.ConfigDict, ds, mesh, model, tx, schedule, ctx,
              stats, root, *, num_runs: int | None = None,
              runs: step_lib.RunParams | None = None
              ) -> tuple[Callable[[int], Callable], Callable[[int, int], tuple]]:
  """`(steps, batch_args)`: `steps(n)` is the compiled program that takes n steps per
  call (n = config.steps_per_call, or 1 for a remainder; `step.make_train_step`) and
  `batch_args(s, n)` its arguments after the state for steps s … s+n−1 (the training set
  held on device when it fits, with the permutations of the epochs those steps reach,
  computed once per epoch from `root`'s data key (`root` (R, 2) for a vmapped group:
  each run its own order), else those steps' batches from the host, stacked when
  n > 1; then the statistics for the methods that use them).

  The programs are shared by every run whose config differs from this one's only in the
  seed (the runs of a sequential seed group, `train_group`): they are built and compiled
  once per process for them. `num_runs`: the programs of a vmapped group; `runs`: its
  runs' own λ-laws and optimizer values (`step.RunParams`), passed as the step's
  argument after the statistics.
  """
  num_train = int(ds.train_x.shape[0])
  augment_fn = None
  if config.augment.enabled:
    augment_fn = lambda k, im: data_lib.augment(
        k, im, crop_padding=config.augment.crop_padding, flip=config.augment.flip)
  train_bytes = ds.train_x.nbytes + ds.train_y.nbytes
  on_device = config.data_on_device and train_bytes <= MAX_ON_DEVICE_BYTES
  per_run = None if runs is None else tuple(f is not None for f in runs)
  cache_key = (seedless_json(config) if runs is None else law_group_key(config),
               per_run, num_train, on_device, num_runs,
               tuple(d.id for d in mesh.devices.flat), ds.num_classes)
  if _STEP_CACHE.get("key") != cache_key:
    _STEP_CACHE.clear()
    _STEP_CACHE.update(key=cache_key, programs={})
  programs = _STEP_CACHE["programs"]
  spe = data_lib.steps_per_epoch(num_train, config.batch_size)
  total = config_lib.total_steps(config, num_train)

  def steps(n: int) -> Callable:
    if n not in programs:
      programs[n] = step_lib.make_train_step(
          model=model, tx=tx, method=methods_lib.METHODS.get(config.method.name),
          ctx=ctx, mesh=mesh, num_classes=ds.num_classes, batch_size=config.batch_size,
          num_train=num_train if on_device else None, schedule=schedule,
          augment_fn=augment_fn, num_runs=num_runs, steps_per_call=n,
          make_tx=None if runs is None or runs.lr is None else (
              lambda lr, wd: optim.make_optimizer(config.optimizer, spe, total, lr=lr,
                                                  weight_decay=wd)))
    return programs[n]

  data_key = lambda r: jax.random.fold_in(jax.random.wrap_key_data(r), state_lib.KEY_DATA)
  if on_device:
    x_src = step_lib.put_replicated(mesh, ds.train_x)
    y_src = step_lib.put_replicated(mesh, ds.train_y.astype(np.int32))
    # The permutations of the epochs one call can reach (k steps span at most
    # ceil((k − 1) / spe) + 1 epochs), computed once per first epoch (one sort per epoch).
    num_epochs = -(-(int(config.steps_per_call) - 1) // spe) + 1
    perms_of = lambda r, e0: data_lib.epoch_permutations(data_key(r), e0, num_epochs,
                                                         num_train)
    if num_runs is not None:
      perms_of = jax.vmap(perms_of, in_axes=(0, None))
    perms_fn = jax.jit(perms_of, out_shardings=step_lib.replicated(mesh))
  else:
    logging.info("Training set (%.1f GB) fed from the host.", train_bytes / 1e9)
    host_key = data_key(root)
  stats_dev = None  # only the methods that use them get the statistics in the step
  if stats is not None and config.method.name in methods_lib.NEEDS_STATS:
    stats_dev = jax.tree.map(lambda a: step_lib.put_replicated(mesh, np.asarray(a)), stats)

  runs_dev = None if runs is None else jax.device_put(runs, step_lib.replicated(mesh))

  cache: dict[str, Any] = {}

  def epoch_perm(e: int) -> np.ndarray:  # host-fed: one epoch's order, on the host
    if cache.get("epoch") != e:
      cache.update(epoch=e, perm=np.asarray(data_lib.epoch_permutation(
          jax.random.fold_in(host_key, e), num_train)))
    return cache["perm"]

  def batch_args(s: int, n: int = 1) -> tuple:
    if on_device:
      if cache.get("first_epoch") != s // spe:
        e0 = s // spe
        cache.update(first_epoch=e0, order=(
            step_lib.put_replicated(mesh, np.int32(e0)), perms_fn(root, e0)))
      return x_src, y_src, stats_dev, runs_dev, cache["order"]
    bs = config.batch_size
    idx = np.stack([epoch_perm(t // spe)[(t % spe) * bs:(t % spe + 1) * bs]
                    for t in range(s, s + n)])
    if n == 1:
      idx = idx[0]
    axis = 0 if n == 1 else 1
    return (step_lib.put_sharded(mesh, ds.train_x[idx], axis=axis),
            step_lib.put_sharded(mesh, ds.train_y[idx].astype(np.int32), axis=axis),
            stats_dev, runs_dev, None)

  return steps, batch_args


def has_convolution(model, input_shape) -> bool:
  """Whether the model's forward pass contains a convolution (from its jaxpr)."""
  x = jnp.zeros((1,) + tuple(input_shape), jnp.float32)
  jaxpr = jax.make_jaxpr(lambda v: model.init(jax.random.key(0), v, train=False))(x)
  return "conv_general_dilated" in str(jaxpr)


# Keys a vmapped group of sweep points may differ in: they enter the step as arrays.
_PER_RUN_KEYS = (("seed",), ("sampler", "name"), ("sampler", "params"), ("optimizer", "lr"),
                 ("optimizer", "weight_decay"))


def law_group_key(config: ml_collections.ConfigDict) -> str:
  """What a group of sweep points must share to train as one vmapped program: the
  config but for the seed, the λ-law's parameters and the optimizer's lr and weight
  decay; the laws must have one structure (`samplers.structure`: e.g. Beta(α) for
  several α, or two-atom laws)."""
  d = json.loads(seedless_json(config))
  for keys in _PER_RUN_KEYS:
    node = d
    for k in keys[:-1]:
      node = node.get(k, {})
    node.pop(keys[-1], None)
  if config.method.name in methods_lib.MIXUP_FAMILY:
    d["sampler_structure"] = samplers_lib.structure(training_sampler(config))
  return json.dumps(d, sort_keys=True)


def seedless_json(config: ml_collections.ConfigDict) -> str:
  """The config as JSON without the keys a compiled step does not depend on."""
  d = json.loads(config_lib.config_to_json(config))
  for k in ("seed", "num_seeds", "group_mode", "log_every_steps", "tensorboard",
            "checkpoint_every_steps",
            "max_to_keep", "allow_config_change", "eval", "steps_per_call"):
    d.pop(k, None)
  d.get("dataset", {}).pop("data_dir", None)
  return json.dumps(d, sort_keys=True)


def has_batch_stats(model, input_shape) -> bool:
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                             jnp.zeros((1,) + tuple(input_shape)),
                                             train=False))
  return bool(shapes.get("batch_stats"))


def to_host(x) -> np.ndarray:
  """A replicated (possibly multi-process) array as a host NumPy array."""
  if getattr(x, "is_fully_addressable", True):
    return np.asarray(x)
  return np.asarray(x.addressable_data(0))
