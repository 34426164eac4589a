"""From configs to the parts of one compiled program that trains R ≥ 1 runs: the
dataset, the model, the θ-moments and statistics, the method contexts, the optimizer,
the state (restored from a checkpoint), the writers and the compiled step.

`groups.train_runs` builds a program from these in one sequence for any R: a lone run
is a program of one run (compiled without the run axis, so its speed and numbers are
those of a single run); a vmapped group stacks the runs' states, and their contexts when
they differ (`stack_contexts`). `trained.py` builds a TrainedRun from the same pieces.
"""
from __future__ import annotations

import dataclasses
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
from mixjax import models as models_lib
from mixjax import samplers as samplers_lib
from mixjax import sharding
from mixjax import theory
from mixjax.data import feeding
from mixjax.errors import ConfigError
from mixjax.models import introspect
from mixjax.theory import stats as stats_lib
from mixjax.train import methods as methods_lib
from mixjax.train import optim
from mixjax.train import state as state_lib
from mixjax.train import step as step_lib
from mixjax.train import workdir as workdir_lib
from mixjax.train import writers

STATS_FILE = "data_stats.npz"


def total_steps(config: ml_collections.ConfigDict, num_train: int) -> int:
  """config.num_steps if > 0, else num_epochs × full batches per epoch."""
  if config.num_steps and config.num_steps > 0:
    return int(config.num_steps)
  return int(config.num_epochs) * data_lib.steps_per_epoch(num_train, config.batch_size)


def load_data(config: ml_collections.ConfigDict):
  """The dataset (`data.load_dataset`, with config.dataset.label_noise on its training
  split: `data.with_label_noise`) and the number of steps per epoch."""
  ds = data_lib.load_dataset(config.dataset.name, data_dir=config.dataset.data_dir,
                             val_fraction=config.dataset.val_fraction,
                             seed=config.dataset.split_seed, num_train=config.dataset.num_train,
                             cache_dir=config.dataset.cache_dir or None,
                             **dict(config.dataset.kwargs))
  ds = data_lib.with_label_noise(ds, float(config.dataset.label_noise),
                                 int(config.dataset.split_seed))
  spe = data_lib.steps_per_epoch(int(ds.train_x.shape[0]), config.batch_size)  # rejects B > n
  if config.augment.enabled and not ds.is_image:
    raise ConfigError(
        f"config.augment.enabled=True but {config.dataset.name} is not an image dataset; "
        "set --config.augment.enabled=False.")
  if (config.method.name in methods_lib.USES_LAW
      and samplers_lib.is_mask_law(training_sampler(config))
      and (not ds.is_image or len(ds.input_shape) not in (2, 3))):
    raise ConfigError(
        f"config.sampler.name={config.sampler.name!r} is a mask law, which needs image "
        f"inputs (H, W[, C]), but {config.dataset.name}'s examples have shape "
        f"{tuple(ds.input_shape)}. Use a λ-law such as --config.sampler.name=beta, or an "
        "image dataset.")
  return ds, spe


def training_sampler(config: ml_collections.ConfigDict):
  """The mixing law of config.sampler (the law `MethodContext.from_config` builds)."""
  return methods_lib.make_law(config.sampler)


def build_model(config: ml_collections.ConfigDict, num_classes: int, *,
                input_shape: tuple[int, ...] | None = None,
                bn_axis_name: str | None = sharding.AXIS):
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
    raise ConfigError(
        f"config.model ({config.model.name!r}, kwargs={dict(config.model.kwargs)}, "
        f"input_shape={config.model.input_shape}): {e}") from e
  if config.method.name == "approx" and introspect.has_batch_stats(model, input_shape):
    raise ConfigError(
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
          "label_noise": float(config.dataset.label_noise),
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


def training_stats(config: ml_collections.ConfigDict, ds, workdir: str):
  """The DataStats if the method or the rescaling needs them (float32 unless x64 is
  enabled), else None."""
  if not needs_stats(config):
    return None
  stats = load_or_compute_stats(config, ds, workdir)
  if not jax.config.jax_enable_x64:
    stats = jax.tree.map(lambda a: np.asarray(a, np.float32), stats)
  return stats


def training_moments(config: ml_collections.ConfigDict, sampler=None, input_shape=None):
  """Moments of the law the model effectively trains on (`samplers.law_moments`:
  θ-moments of a λ-law, N̄ and the §8 moments of a mask law on images of
  `input_shape`): the sampler's (config's by default), RegMixup's
  `samplers.regmixup_equivalent`; None for methods that use no law."""
  if config.method.name not in methods_lib.USES_LAW:
    return None
  law = training_sampler(config) if sampler is None else sampler
  if config.method.name == "regmixup":
    law = samplers_lib.regmixup_equivalent(law, float(config.method.eta))
  return samplers_lib.law_moments(law, input_shape)


def method_context(config: ml_collections.ConfigDict, input_shape=None
                   ) -> methods_lib.MethodContext:
  """The run's method context, its law's moments included (`training_moments`)."""
  ctx = methods_lib.MethodContext.from_config(config)
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


@dataclasses.dataclass
class TrainStep:
  """The compiled train step of a program and its data (`make_step`).

  `step(state, s, n)` takes steps s … s+n−1 in one call (n = config.steps_per_call, or
  1 for a remainder) and returns (state, metrics). `programs` maps n to the compiled
  program (`step.make_train_step`); a caller may share it between runs whose programs
  are the same (the runs of a sequential seed group).
  """
  programs: dict[int, Callable]
  build: Callable[[int], Callable]
  feed: feeding.Feeder
  stats: Any
  ctx: Any

  def __call__(self, state, s: int, n: int = 1):
    if n not in self.programs:
      self.programs[n] = self.build(n)
    x, y, order = self.feed(s, n)
    return self.programs[n](state, x, y, self.stats, self.ctx, order)


def make_step(config: ml_collections.ConfigDict, ds, mesh, model, tx, ctx, stats,
              roots, *, num_runs: int | None = None, run_ctx=None,
              programs: dict[int, Callable] | None = None) -> TrainStep:
  """The program's `TrainStep`: the training set held on device when it fits
  (`data.feeding`), the statistics for the methods that use them, `ctx` baked into the
  program, or `run_ctx` (the runs' stacked contexts, `stack_contexts`) passed to it.

  Args:
    config: the (first) run's config.
    ds, mesh, model, tx: the dataset, mesh, model and optimizer.
    ctx: the method context (`method_context`) compiled into the program.
    stats: DataStats or None.
    roots: the runs' root key data, (2,) or (R, 2) for a vmapped group (each run its
      own data order).
    num_runs: R for a vmapped group, None for one run.
    run_ctx: the runs' own contexts, when they differ within the group, else None.
    programs: compiled programs to reuse, by steps per call (see `TrainStep`).
  """
  num_train = int(ds.train_x.shape[0])
  spe = data_lib.steps_per_epoch(num_train, config.batch_size)
  total = total_steps(config, num_train)
  on_device = feeding.fits_on_device(ds, config.data_on_device)
  augment_fn = None
  if config.augment.enabled:
    augment_fn = lambda k, im: data_lib.augment(
        k, im, crop_padding=config.augment.crop_padding, flip=config.augment.flip)

  def build(n: int) -> Callable:
    return step_lib.make_train_step(
        model=model, tx=tx, method=methods_lib.METHODS.get(config.method.name),
        ctx=ctx, mesh=mesh, num_classes=ds.num_classes, batch_size=config.batch_size,
        num_train=num_train if on_device else None, augment_fn=augment_fn,
        learning_rate=lambda opt_state, s: optim.learning_rate(
            opt_state, config.optimizer, spe, total, s),
        num_runs=num_runs, steps_per_call=n)

  fold = lambda r: jax.random.fold_in(jax.random.wrap_key_data(r), state_lib.KEY_DATA)
  data_keys = jax.vmap(fold)(roots) if num_runs is not None else fold(roots)
  feed = feeding.Feeder(ds, config.batch_size, mesh, data_keys,
                        steps_per_call=config.steps_per_call, on_device=on_device)
  stats_dev = None  # only the methods that use them get the statistics in the step
  if stats is not None and config.method.name in methods_lib.NEEDS_STATS:
    stats_dev = jax.tree.map(lambda a: sharding.put_replicated(mesh, np.asarray(a)), stats)
  run_ctx_dev = (None if run_ctx is None
                 else jax.device_put(run_ctx, sharding.replicated(mesh)))
  return TrainStep(programs={} if programs is None else programs, build=build,
                   feed=feed, stats=stats_dev, ctx=run_ctx_dev)
