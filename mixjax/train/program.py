"""The assembly: one frozen `Program` built once from the runs' configs and the data.

A program trains R ≥ 1 runs that share everything but `setup.per_run_keys` (a lone run,
a seed group, a sweep group). `assemble` builds, in this order and once:

  schedule   steps per epoch and total steps (`Schedule`: the one place they are
             computed);
  model      `setup.make_model` (unless the caller built it already);
  mesh       a 1-D mesh over the devices;
  optimizer  `optim.make_optimizer` on the schedule;
  method     the `methods.Method` entry of config.method.name;
  contexts   each run's `MethodContext`: its law, built once from config.sampler
             (`setup.training_sampler`), and the moments of the law it trains on;
  stats      the training set's DataStats when the method or the rescaling needs them;
  keys       each run's root key data and optimizer hyper-parameters;
  step       the compiled step and its feeder (`TrainStep`);
  predict    the `eval.Predictor` of the quick and final evaluations.

The loop (`loop.train`), the final evaluation (`summary.finish_runs`) and `TrainedRun`
take the program; `TrainedRun` assembles one with `train=False` (no statistics, step or
predictor: only what restoring a checkpoint needs).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from mixjax import data as data_lib
from mixjax import eval as eval_lib
from mixjax import sharding
from mixjax.errors import WorkdirError
from mixjax.data import feeding
from mixjax.data import streaming
from mixjax.train import config as config_lib
from mixjax.train import methods as methods_lib
from mixjax.train import optim
from mixjax.train import setup
from mixjax.train import state as state_lib
from mixjax.train import step as step_lib


@dataclasses.dataclass(frozen=True)
class Schedule:
  """The lengths of training, computed once (`of`).

  Attributes:
    steps_per_epoch: full batches per epoch, ⌊n / B⌋ (`data.steps_per_epoch`; a batch
      larger than the training split is a ValueError).
    total_steps: config.num_steps if > 0, else num_epochs × steps_per_epoch.
  """
  steps_per_epoch: int
  total_steps: int

  @classmethod
  def of(cls, config: ml_collections.ConfigDict, num_train: int) -> "Schedule":
    spe = data_lib.steps_per_epoch(int(num_train), int(config.batch_size))
    total = (int(config.num_steps) if config.num_steps and config.num_steps > 0
             else int(config.num_epochs) * spe)
    return cls(steps_per_epoch=spe, total_steps=total)


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


@dataclasses.dataclass(frozen=True)
class Program:
  """Everything that trains and evaluates R ≥ 1 runs, built once (`assemble`).

  Attributes:
    configs: the runs' configs (they differ only in `setup.per_run_keys`).
    ds: the dataset.
    model: the Linen model.
    devices: the mesh's devices.
    mesh: the 1-D mesh over `devices`, axis "data".
    schedule: steps per epoch and total steps.
    tx: the optimizer (its learning rate and weight decay in its state).
    method: the `methods.Method` entry.
    contexts: each run's `MethodContext` (its law and the moments of the law it trains
      on).
    stats: the DataStats (host arrays) or None.
    roots: the runs' root key data, (2,) uint32, or (R, 2) for R > 1.
    hyperparams: {name: value} of `optim.HYPERPARAMS`, scalars or (R,) arrays.
    step: the compiled `TrainStep` (None when assembled with train=False).
    predict: the evaluations' `eval.Predictor` (None when assembled with train=False).
  """
  configs: tuple[ml_collections.ConfigDict, ...]
  ds: Any
  model: Any
  devices: tuple[Any, ...]
  mesh: jax.sharding.Mesh
  schedule: Schedule
  tx: optax.GradientTransformation
  method: methods_lib.Method
  contexts: tuple[methods_lib.MethodContext, ...]
  stats: Any
  roots: Any
  hyperparams: dict[str, Any]
  step: TrainStep | None = None
  predict: eval_lib.Predictor | None = None

  @property
  def config(self) -> ml_collections.ConfigDict:
    """The first run's config (what the runs share)."""
    return self.configs[0]

  @property
  def num_runs(self) -> int | None:
    """R for a vmapped program of R > 1 runs; None for one run (no run axis)."""
    return len(self.configs) if len(self.configs) > 1 else None


def assemble(configs, ds, *, devices, workdir: str | None = None, model=None,
             programs: list | None = None, train: bool = True) -> Program:
  """The program of the runs `configs` on dataset `ds` (module docstring).

  Args:
    configs: the runs' configs (one, or a group's).
    ds: the dataset (`setup.load_data`).
    devices: the mesh's devices.
    workdir: where the statistics are cached (`setup.training_stats`).
    model: the model when already built (`setup.make_model`).
    programs: [(context, compiled programs)] to share compiled steps between the
      programs of a sequential group (runs with equal contexts reuse one).
    train: build the statistics, the step and the predictor; False: only the parts
      that restoring a checkpoint needs (`TrainedRun`).
  """
  configs = tuple(configs)
  config = configs[0]
  schedule = Schedule.of(config, int(ds.num_train))
  model = setup.make_model(config, ds) if model is None else model
  laws = [setup.training_sampler(c) for c in configs]
  setup.check_law_fits_data(config, laws[0], ds)
  roots = jnp.stack([jax.random.key_data(jax.random.key(c.seed)) for c in configs])
  hyper = {name: jnp.asarray([float(config_lib.get(c, key)) for c in configs], jnp.float32)
           for name, key in optim.HYPERPARAMS.items()}
  if len(configs) == 1:
    roots, hyper = roots[0], {k: v[0] for k, v in hyper.items()}
  program = Program(
      configs=configs, ds=ds, model=model, devices=tuple(devices),
      mesh=sharding.make_mesh(devices), schedule=schedule,
      tx=optim.make_optimizer(config.optimizer, schedule.steps_per_epoch,
                              schedule.total_steps),
      method=methods_lib.get(config),
      contexts=tuple(setup.method_context(c, ds.input_shape, law)
                     for c, law in zip(configs, laws)),
      stats=setup.training_stats(config, ds, workdir) if train else None,
      roots=roots, hyperparams=hyper)
  if not train:
    return program
  return dataclasses.replace(program, step=make_step(program, programs),
                             predict=make_predictor(program))


def make_step(program: Program, programs: list | None = None) -> TrainStep:
  """The program's `TrainStep`: the training set held on device when it fits
  (`data.feeding`), or streamed (`feeding.StreamFeeder` of a `streaming.TrainStream`
  whose seed is the run's data key, `setup.stream_seed`: its order, crops and flips;
  no on-device augment), the statistics for the methods that use them, the first run's
  context baked into the compiled program, or the runs' contexts stacked
  (`setup.stack_contexts`) and passed to it when they differ.

  Args:
    program: the program (its step not built yet).
    programs: [(context, compiled programs)] shared between programs (`assemble`).
  """
  config, ds, mesh, num_runs = program.config, program.ds, program.mesh, program.num_runs
  spe, total = program.schedule.steps_per_epoch, program.schedule.total_steps
  ctx = program.contexts[0]
  same = all(c == ctx for c in program.contexts)
  shared = None
  if programs is not None:
    shared = next((p for c, p in programs if c == ctx), None)
    if shared is None:
      shared = {}
      programs.append((ctx, shared))
  num_train = int(ds.num_train)
  streamed = isinstance(ds, streaming.StreamedDataset)
  on_device = feeding.fits_on_device(ds, config.data_on_device)
  augment_fn = None
  if config.augment.enabled and not streamed:  # a stream augments on the host
    augment_fn = lambda k, im: data_lib.augment(
        k, im, crop_padding=config.augment.crop_padding, flip=config.augment.flip)

  def build(n: int) -> Callable:
    return step_lib.make_train_step(
        model=program.model, tx=program.tx, method=program.method,
        ctx=ctx, mesh=mesh, num_classes=ds.num_classes, batch_size=config.batch_size,
        num_train=num_train if on_device else None, steps_per_epoch=spe,
        augment_fn=augment_fn,
        learning_rate=lambda opt_state, s: optim.learning_rate(
            opt_state, config.optimizer, spe, total, s),
        num_runs=num_runs, steps_per_call=n)

  fold = lambda r: jax.random.fold_in(jax.random.wrap_key_data(r), state_lib.KEY_DATA)
  roots = program.roots
  data_keys = jax.vmap(fold)(roots) if num_runs is not None else fold(roots)
  if streamed:  # one run (a streamed group trains sequentially: `groups.group_mode`)
    stream = streaming.TrainStream(
        ds.train, batch_size=config.batch_size, image_size=ds.image_size,
        seed=setup.stream_seed(data_keys), num_workers=ds.num_workers,
        dtype="uint8")  # normalized on the device (`feeding.StreamFeeder`)
    feed = feeding.StreamFeeder(stream, mesh, total_steps=total)
  else:
    feed = feeding.Feeder(ds, config.batch_size, mesh, data_keys, steps_per_epoch=spe,
                          steps_per_call=config.steps_per_call, on_device=on_device)
  stats_dev = None  # only the methods that use them get the statistics in the step
  if program.stats is not None and program.method.needs_stats:
    stats_dev = jax.tree.map(lambda a: sharding.put_replicated(mesh, np.asarray(a)),
                             program.stats)
  run_ctx = None if same else setup.stack_contexts(list(program.contexts))
  run_ctx_dev = (None if run_ctx is None
                 else jax.device_put(run_ctx, sharding.replicated(mesh)))
  return TrainStep(programs={} if shared is None else shared, build=build,
                   feed=feed, stats=stats_dev, ctx=run_ctx_dev)


def make_predictor(program: Program) -> eval_lib.Predictor:
  """The evaluations' predictor on the local devices, with the statistics and the
  first run's θ̄ for test-time rescaling (`Predictor.with_theta_bar` sets a run's)."""
  return eval_lib.Predictor(program.model, program.config.eval.batch_size,
                            sharding.make_mesh(jax.local_devices()), stats=program.stats,
                            theta_bar=setup.rescaling(program.contexts[0].moments))


def init_or_restore(program: Program, ckpt) -> tuple[Any, int, bool]:
  """The program's state: its initial state replicated on the mesh, or the latest
  restorable checkpoint of `ckpt` (`setup.create_or_restore_state`). Returns (state,
  its step, whether it was restored).

  A streamed run's checkpoint holds the loader's position (metadata "input",
  `loop.save`); it is checked against the stream (`TrainStream.check_state`: the same
  dataset, split size, seed, batch and image size, at the state's step), a mismatch
  being a WorkdirError."""
  feed = program.step.feed if program.step is not None else None
  state, resumed = setup.create_or_restore_state(
      program.model, program.tx, program.mesh, ckpt, program.roots, program.ds,
      hyperparams=program.hyperparams, num_runs=program.num_runs)
  start = int(sharding.to_host(state.step).reshape(-1)[0])
  if resumed and hasattr(feed, "check_state"):
    meta = ckpt.metadata(start)
    try:
      if "input" not in meta:
        raise ValueError("it holds no input position (written by a run that did not "
                         "stream)")
      at = feed.check_state(meta["input"])
      if at != start:
        raise ValueError(f"its input position is step {at}, its state step {start}")
    except ValueError as e:
      raise WorkdirError(f"The checkpoint at step {start} in {ckpt.directory} does not "
                         f"fit this run's input stream: {e} Use a fresh --workdir.") from e
  return state, start, resumed


def state_template(program: Program, num_runs: int | None = None):
  """A state of the program's structure to restore checkpoints into, for a run trained
  alone (`num_runs` None) or in a vmapped group of `num_runs` (`TrainedRun`)."""
  roots = jnp.zeros((num_runs, 2) if num_runs else (2,), jnp.uint32)
  return setup.initial_state(program.model, program.tx, program.mesh, roots, program.ds,
                             num_runs=num_runs)
