"""Many small training runs inside one compiled program: the engine behind the studies.

A study trains R small models (seeds × mixing laws × hyper-parameters) on one dataset.
`train_runs` compiles ONE training program for all of them: every per-run quantity is
an array with a leading run axis and the step is `jax.vmap`-ed over it,

  * the seed (initialization, data order, mixing draws and dropout each get their own
    `fold_in` stream of `jax.random.key(seed)`; the same seed gives the same
    initialization and data order under every law and method, so comparisons between
    laws are *paired* (common random numbers));
  * the mixing law: a `mixjax.samplers` sampler, packed into the fixed-size
    `samplers.PackedLaw` form (one sampling function for ERM, Beta(α, α), W-shaped,
    RegMixup-equivalent, atoms and the 1/8-optimal law);
  * the learning rate and the weight decay (the optimizer's direction, Adam's or SGD
    momentum's, is computed without them and scaled per run).

Methods: the objectives of `mixjax.train.methods.METHODS`, the same functions the main
trainer runs (erm, mixup, regmixup, erm_transformed, perturbed_erm, approx), called with
a per-run `MethodContext` whose law (sampler, θ̄ and θ-moments) is the run's traced
`samplers.PackedLaw`, so that one program vmaps over laws. Every run of one `train_runs`
call uses the same method. "approx" needs a model without BatchNorm, and its terms are
`EngineConfig.approx_terms` (the law's exact moments enter as arrays, `moments=`).

Training: minibatch SGD (heavy-ball momentum, L2 weight decay) or Adam (decoupled weight
decay, AdamW) with a cosine or constant schedule; every run reshuffles the training set
on device each epoch (`jax.random.permutation`, the last incomplete batch dropped); the
steps of an epoch are a `lax.scan` and several epochs form one compiled segment. Between
segments the engine evaluates ("checkpoints") and prints progress.

Evaluation (at the end, and at `num_checkpoints` evenly spaced epochs): test and
validation logits of every run, then `mixjax.eval.metric_sums`/`finalize_metrics`
(accuracy, NLL, 15-bin ECE, Brier) for
  * the plain model ("test_*"),
  * the test-time rescaled model `mixjax.theory.rescaled(f, stats, θ̄)` (THEORY.md §5,
    "test_rs_*"; identical to the plain model for θ̄ = 1),
  * temperature scaling fit on the validation split (`mixjax.eval.fit_temperature`,
    "test_ts_*" and "test_rs_ts_*"), at the end only.
An optional `diagnostics_fn(logits_fn, run, ctx) -> dict of scalars` is vmapped over runs
at every checkpoint (used by the diagnostics study for the expanded terms and bounds).

Everything here is exact given the trained networks; the randomness is in training only.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any, Callable, Sequence

import chex
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from mixjax import losses
from mixjax import samplers
from mixjax.train import config as config_lib
from mixjax.train import methods as methods_lib
from mixjax.train import optim
from mixjax.train import step as step_lib

# The base config: the one default of every knob the engine shares with the trainer.
_BASE = config_lib.base_config()
OPTIMIZERS = config_lib.OPTIMIZERS
# The trainer's schedules without "piecewise" (whose epoch boundaries are not engine knobs).
SCHEDULES = tuple(s for s in config_lib.SCHEDULES if s != "piecewise")

# fold_in tags of a run's key: one stream per purpose.
_INIT, _ORDER, _MIX, _DROPOUT, _EVAL = range(5)


@dataclasses.dataclass(frozen=True)
class EngineConfig:
  """Static settings shared by all runs of one compiled program.

  Attributes:
    model: name in `mixjax.models.MODELS`, or a Flax Linen module instance (any module
      with the `apply(variables, x, train=...)` signature of `mixjax.models`; variables
      outside "params" and `mutable` are constants, e.g. fixed random features).
    model_kwargs: constructor arguments of the model (e.g. {"hidden_sizes": (100, 100)}).
    mutable: variable collections updated in training mode (BatchNorm statistics).
    input_shape: if set, inputs are reshaped to (B, *input_shape) before the model only
      (mixing and the theory see the dataset's own shape), e.g. (40, 1, 1) to feed
      MNIST-1D to the LeNet CNN.
    method: name in `mixjax.train.methods.METHODS` (erm, mixup, regmixup,
      erm_transformed, perturbed_erm, approx).
    loss: name in `mixjax.losses.LOSSES`.
    optimizer: "adam" (decoupled weight decay) or "sgd" (momentum, L2 weight decay).
    momentum: SGD momentum.
    batch_size: examples per step.
    num_epochs: passes over the training set.
    schedule: "cosine" (to 0 at the end) or "constant"; `warmup_epochs` of linear warmup:
      the multiplier of each run's learning rate is `mixjax.train.optim.make_schedule`'s
      (the trainer's schedule at lr 1).
    warmup_epochs: epochs of linear warm-up.
    num_checkpoints: evaluations during training (evenly spaced, the last at the end).
    granularity, pairing, fold: passed to `mixjax.mixing.mix` (mixup, regmixup).
    eta: RegMixup's weight η. num_draws: perturbed_erm's draws per example.
    approx_terms: the regularization terms of the approximate risk used in training
      ("approx"), a subset of (jacobian, cross, hessian, label) as in
      `mixjax.theory.approx_mixup_terms`; ERM on transformed data is always included.
      The default drops "hessian", as the paper does.
    approx_estimator: "exact", "lowrank" or "stochastic".

  The defaults of the knobs shared with the main trainer are `base_config()`'s (the one
  default per knob); the studies set what they need explicitly.
    approx_num_probes: probes of the stochastic estimator.
    stats_rank: top-k principal directions kept in the `DataStats` (None: all / none).
    eval_batch_size: evaluation batch size (logits are computed with `lax.map`).
    train_eval_size: training examples (the first ones) evaluated at checkpoints.
    num_bins: ECE bins.
    max_parallel: at most this many runs per compiled call (None: all at once); more
      runs are processed in chunks by the same compiled program.
    keep_logits: return the final test logits (R, n_test, c) (plain and rescaled).
    fit_temperature: fit temperature scaling on the validation split at the end (skipped
      when the dataset has no validation split).
    verbose: print progress at checkpoints.
  """
  model: Any = "mlp"
  model_kwargs: dict = dataclasses.field(default_factory=dict)
  mutable: tuple[str, ...] = ("batch_stats",)
  input_shape: tuple[int, ...] | None = None
  method: str = _BASE.method.name
  loss: str = _BASE.method.loss
  optimizer: str = _BASE.optimizer.name
  momentum: float = _BASE.optimizer.momentum
  batch_size: int = _BASE.batch_size
  num_epochs: int = 30
  schedule: str = "cosine"
  warmup_epochs: int = 0
  num_checkpoints: int = 1
  granularity: str = _BASE.mixing.granularity
  pairing: str = _BASE.mixing.pairing
  fold: bool = _BASE.mixing.fold
  eta: float = _BASE.method.eta
  num_draws: int = _BASE.method.num_draws
  approx_terms: tuple[str, ...] = tuple(_BASE.method.terms)
  approx_estimator: str = _BASE.method.estimator
  approx_num_probes: int = _BASE.method.num_probes
  stats_rank: int | None = _BASE.stats.rank
  eval_batch_size: int = _BASE.eval.batch_size
  train_eval_size: int = 2048
  num_bins: int = _BASE.eval.num_bins
  max_parallel: int | None = None
  keep_logits: bool = False
  fit_temperature: bool = True
  verbose: bool = True

  def replace(self, **kw) -> EngineConfig:
    return dataclasses.replace(self, **kw)

  def to_json(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    if not isinstance(self.model, str):
      fields = [f for f in dataclasses.fields(self.model)
                if f.init and f.name not in ("parent", "name")]
      d["model"] = (type(self.model).__name__ + "(" + ", ".join(
          f"{f.name}={getattr(self.model, f.name)!r}" for f in fields) + ")")
    d["model_kwargs"] = {k: (list(v) if isinstance(v, tuple) else v)
                         for k, v in self.model_kwargs.items()}
    return d


MomentArrays = samplers.MomentArrays


class RunInputs(flax.struct.PyTreeNode):
  """Per-run arrays (leading axis R when stacked): what `jax.vmap` maps over.

  Attributes:
    key: the run's PRNG key (from its seed).
    law: the packed mixing law (`samplers.PackedLaw`, fields (K,)).
    moments: the law's exact θ-moments (computed on the host in float64), float32.
    lr: peak learning rate.
    weight_decay: weight decay coefficient.
  """
  key: jax.Array
  law: samplers.PackedLaw
  moments: samplers.MomentArrays
  lr: jax.Array
  weight_decay: jax.Array

  @property
  def theta_bar(self) -> jax.Array:
    return self.moments.mean


@dataclasses.dataclass(frozen=True)
class Run:
  """Host description of one run (one row of the results)."""
  law: samplers.Sampler
  seed: int
  lr: float
  weight_decay: float = 0.0
  tags: dict = dataclasses.field(default_factory=dict)

  def describe(self) -> dict[str, Any]:
    m = samplers.theta_moments(self.law)
    return {"law": self.law.label, "seed": int(self.seed), "lr": float(self.lr),
            "weight_decay": float(self.weight_decay), "theta_bar": m.mean,
            "sigma2": m.var, "gamma2": m.gamma2, "strength": m.strength,
            "global_strength": m.global_strength, **self.tags}


def make_runs(laws: Sequence[samplers.Sampler], seeds: Sequence[int], *,
              lrs: Sequence[float] = (1e-3,), weight_decays: Sequence[float] = (0.0,),
              tags: dict | None = None) -> list[Run]:
  """The Cartesian product laws × lrs × weight_decays × seeds as a list of `Run`s."""
  if not laws or not seeds:
    raise ValueError("make_runs needs at least one law and one seed.")
  return [Run(law, int(s), float(lr), float(wd), dict(tags or {}))
          for law in laws for lr in lrs for wd in weight_decays for s in seeds]


def pack_runs(runs: Sequence[Run], num_components: int | None = None) -> RunInputs:
  """Stacks host `Run`s into `RunInputs` with a leading run axis."""
  laws = [r.law for r in runs]
  return RunInputs(
      key=jnp.stack([jax.random.key(r.seed) for r in runs]),
      law=samplers.stack_packed(laws, num_components),
      moments=samplers.stack_moments(laws),
      lr=jnp.asarray([r.lr for r in runs], jnp.float32),
      weight_decay=jnp.asarray([r.weight_decay for r in runs], jnp.float32))


class RunState(flax.struct.PyTreeNode):
  """Training state of one run: parameters, other model collections, optimizer state."""
  params: Any
  model_state: Any
  opt_state: Any
  step: jax.Array


@dataclasses.dataclass
class Context:
  """Static per-program context passed to the diagnostics.

  Attributes:
    config: the `EngineConfig`.
    stats: `mixjax.theory.DataStats` of the training set (or None if not needed).
    law: the static `laws.Law` when runs are compiled per law (`group_by_law`), else None.
    num_classes: c.
  """
  config: EngineConfig
  stats: Any
  law: samplers.Sampler | None
  num_classes: int


# ----------------------------------------------------------------------------------------
# Results.


@dataclasses.dataclass
class EngineResult:
  """What `train_runs` returns.

  Attributes:
    runs: one dict per run: the run's description (law, seed, lr, moments, tags) and its
      final metrics (floats): test_{accuracy,nll,ece,brier}, test_rs_* (rescaled),
      test_ts_*/test_rs_ts_* (temperature-scaled), temperature, rs_temperature,
      val_*, train_loss (mean training objective over the last epoch).
    history: name -> (num_checkpoints, R) float arrays (test/train metrics and any
      diagnostics at each checkpoint), plus "epoch": (num_checkpoints,).
    logits: {"test", "test_rs"} (R, n_test, c) if `keep_logits`, and (R, N, c) for every
      `extra_inputs` name (plain and "_rs"); float32. None if neither was asked for.
    info: timings (compile and total seconds), steps, etc.
  """
  runs: list[dict[str, Any]]
  history: dict[str, np.ndarray]
  logits: dict[str, np.ndarray] | None
  info: dict[str, Any]


# ----------------------------------------------------------------------------------------
# The engine.


def _check_config(cfg: EngineConfig, n_train: int) -> None:
  methods_lib.METHODS.get(cfg.method)
  losses.get_loss(cfg.loss)
  if cfg.optimizer not in OPTIMIZERS:
    raise ValueError(f"Unknown optimizer {cfg.optimizer!r}; known: {', '.join(OPTIMIZERS)}.")
  if cfg.schedule not in SCHEDULES:
    raise ValueError(f"Unknown schedule {cfg.schedule!r}; known: {', '.join(SCHEDULES)}.")
  if not 1 <= cfg.batch_size <= n_train:
    raise ValueError(
        f"batch_size={cfg.batch_size} must be in [1, n_train={n_train}]; lower it.")
  if cfg.num_epochs < 1:
    raise ValueError(f"num_epochs must be ≥ 1; got {cfg.num_epochs}.")
  if not 1 <= cfg.num_checkpoints <= cfg.num_epochs:
    raise ValueError(
        f"num_checkpoints={cfg.num_checkpoints} must be in [1, num_epochs={cfg.num_epochs}].")
  if not 0 <= cfg.warmup_epochs < cfg.num_epochs:
    raise ValueError(f"warmup_epochs={cfg.warmup_epochs} must be in [0, num_epochs).")
  if cfg.max_parallel is not None and cfg.max_parallel < 1:
    raise ValueError(f"max_parallel must be None or ≥ 1; got {cfg.max_parallel}.")


def _checkpoint_epochs(num_epochs: int, num_checkpoints: int) -> list[int]:
  """Evenly spaced epochs (1-based, the last = num_epochs) at which to evaluate."""
  return sorted({max(1, round(num_epochs * (k + 1) / num_checkpoints))
                 for k in range(num_checkpoints)})


class _Program:
  """The compiled pieces for one (config, dataset, static law) combination."""

  def __init__(self, cfg: EngineConfig, data: Any, ctx: Context,
               diagnostics_fn: Callable | None, extra_inputs: dict | None = None):
    from mixjax import models  # pylint: disable=g-import-not-at-top
    self.cfg, self.ctx, self.diagnostics_fn = cfg, ctx, diagnostics_fn
    self.method = methods_lib.METHODS.get(cfg.method)
    if isinstance(cfg.model, str):
      self.model = models.get_model(cfg.model, ctx.num_classes, **cfg.model_kwargs)
    else:
      if cfg.model_kwargs:
        raise ValueError("model_kwargs apply to registry names only; configure the module "
                         "instance passed as `model` directly.")
      self.model = cfg.model
    if cfg.input_shape is not None:  # the network sees the reshaped view only
      self.model = models.Reshaped(self.model, tuple(cfg.input_shape))
    c = ctx.num_classes
    self.train_x = jnp.asarray(data.train_x, jnp.float32)
    self.train_y = jax.nn.one_hot(jnp.asarray(data.train_y), c, dtype=jnp.float32)
    self.n_train = int(self.train_x.shape[0])
    if cfg.method == "approx":
      shapes = jax.eval_shape(lambda: self.model.init(
          {"params": jax.random.key(0), "dropout": jax.random.key(0)}, self.train_x[:1],
          train=False))
      if any(k in shapes for k in cfg.mutable):
        raise ValueError(
            "method='approx' needs a model without mutable state (no BatchNorm): the "
            "approximate risk differentiates f example by example.")
    self.steps_per_epoch = self.n_train // cfg.batch_size
    self.total_steps = self.steps_per_epoch * cfg.num_epochs
    self.lr_factor = optim.make_schedule(
        ml_collections.ConfigDict({"lr": 1.0, "schedule": cfg.schedule,
                                   "warmup_epochs": cfg.warmup_epochs}),
        self.steps_per_epoch, self.total_steps)
    self.eval_sets = {"test": (data.test_x, data.test_y)}
    if np.asarray(data.val_x).shape[0] > 0:  # an empty validation split is allowed
      self.eval_sets["val"] = (data.val_x, data.val_y)
    self.metric_sets = tuple(k for k in ("test", "val", "train") if k in self.eval_sets or
                             k == "train")
    n_tr = min(cfg.train_eval_size, self.n_train)
    self.eval_sets["train"] = (np.asarray(data.train_x)[:n_tr], np.asarray(data.train_y)[:n_tr])
    self.extra_names = tuple(sorted(extra_inputs or {}))
    for name in self.extra_names:
      if name in self.eval_sets:
        raise ValueError(f"extra_inputs name {name!r} clashes with a split name.")
      xe = np.asarray(extra_inputs[name], np.float32)
      if xe.shape[1:] != self.train_x.shape[1:]:
        raise ValueError(f"extra_inputs[{name!r}] has per-example shape {xe.shape[1:]}; "
                         f"the training inputs have {self.train_x.shape[1:]}.")
      self.eval_sets[name] = (xe, None)
    if cfg.optimizer == "adam":
      self.direction = optax.scale_by_adam()
    else:
      self.direction = optax.trace(decay=cfg.momentum)
    self._segment = jax.jit(self._segment_all, static_argnums=(3,), donate_argnums=(0,))
    self._init = jax.jit(jax.vmap(self._init_one))
    self._eval = jax.jit(self._eval_all, static_argnums=(2,))
    self._diag = None
    if diagnostics_fn is not None:
      fns = diagnostics_fn if isinstance(diagnostics_fn, dict) else {"": diagnostics_fn}
      self._diag = {name: jax.jit(jax.vmap(functools.partial(self._diag_one, fn)))
                    for name, fn in fns.items()}

  def _segment_all(self, states, inputs, start_epoch, num_epochs: int):
    return jax.vmap(lambda s, r: self._segment_one(s, r, start_epoch, num_epochs))(
        states, inputs)

  def _eval_all(self, states, inputs, which: tuple[str, ...]):
    return jax.vmap(lambda s, r: self._eval_one(s, r, which))(states, inputs)

  # --- model plumbing -------------------------------------------------------------------
  def _variables(self, state: RunState):
    return {"params": state.params, **state.model_state}

  def logits_fn(self, state: RunState) -> Callable[[jax.Array], jax.Array]:
    """The run's model in evaluation mode as a pure function (B, ...) -> (B, c)."""
    variables = self._variables(state)
    return lambda x: self.model.apply(variables, x, train=False)

  # --- init / train ---------------------------------------------------------------------
  def _init_one(self, run: RunInputs) -> RunState:
    key = jax.random.fold_in(run.key, _INIT)
    x0 = self.train_x[:1]
    variables = self.model.init({"params": key, "dropout": key}, x0, train=False)
    variables = dict(variables)
    params = variables.pop("params")
    return RunState(params=params, model_state=variables,
                    opt_state=self.direction.init(params), step=jnp.zeros((), jnp.int32))

  def method_context(self, run: RunInputs) -> methods_lib.MethodContext:
    """The run's `MethodContext`: its (traced) law, θ̄ and θ-moments, the engine's
    mixing and approx settings, no device axis."""
    cfg = self.cfg
    return methods_lib.MethodContext(
        loss=losses.get_loss(cfg.loss), sampler=samplers.packed_sampler(run.law),
        stats=self.ctx.stats, theta_bar=run.theta_bar, granularity=cfg.granularity,
        pairing=cfg.pairing, fold=cfg.fold, eta=cfg.eta, num_draws=cfg.num_draws,
        estimator=cfg.approx_estimator, num_probes=cfg.approx_num_probes,
        terms=tuple(cfg.approx_terms), moments=run.moments, axis_name=None)

  def _train_step(self, state: RunState, run: RunInputs, batch_idx, step_key):
    cfg = self.cfg
    x = self.train_x[batch_idx]
    y = self.train_y[batch_idx]
    dropout_key = jax.random.fold_in(step_key, _DROPOUT)
    mix_key = jax.random.fold_in(step_key, _MIX)
    mctx = self.method_context(run)

    def loss_fn(params):
      fwd = step_lib.Forward(self.model, params, state.model_state, dropout_key,
                             mutable=tuple(cfg.mutable))
      loss = self.method(mctx, fwd, x, y, mix_key)
      return loss, fwd.new_collections

    (loss, new_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    if cfg.optimizer == "sgd":  # L2 weight decay, through momentum.
      grads = jax.tree.map(lambda g, p: g + run.weight_decay * p, grads, state.params)
    direction, opt_state = self.direction.update(grads, state.opt_state, state.params)
    lr = run.lr * self.lr_factor(state.step)
    wd = run.weight_decay if cfg.optimizer == "adam" else 0.0  # decoupled (AdamW).
    params = jax.tree.map(lambda p, d: p - lr * (d + wd * p), state.params, direction)
    return RunState(params, new_state, opt_state, state.step + 1), loss

  def _epoch(self, state: RunState, run: RunInputs, epoch):
    spe, bs = self.steps_per_epoch, self.cfg.batch_size
    order_key = jax.random.fold_in(jax.random.fold_in(run.key, _ORDER), epoch)
    perm = jax.random.permutation(order_key, self.n_train)[: spe * bs].reshape(spe, bs)
    epoch_key = jax.random.fold_in(run.key, 1000 + epoch)

    def body(st, inp):
      i, idx = inp
      return self._train_step(st, run, idx, jax.random.fold_in(epoch_key, i))

    state, step_losses = jax.lax.scan(body, state, (jnp.arange(spe), perm))
    return state, jnp.mean(step_losses)

  def _segment_one(self, state: RunState, run: RunInputs, start_epoch, num_epochs: int):
    def body(st, e):
      return self._epoch(st, run, start_epoch + e)
    state, epoch_losses = jax.lax.scan(body, state, jnp.arange(num_epochs))
    return state, epoch_losses

  # --- evaluation -----------------------------------------------------------------------
  def _logits_on(self, fn, x):
    """fn over x (N, ...) in batches of eval_batch_size via lax.map -> (N, c)."""
    n = x.shape[0]
    bs = min(self.cfg.eval_batch_size, n)
    nb = -(-n // bs)
    pad = nb * bs - n
    xp = jnp.concatenate([x, jnp.zeros((pad,) + x.shape[1:], x.dtype)]) if pad else x
    out = jax.lax.map(fn, xp.reshape((nb, bs) + x.shape[1:]))
    return out.reshape((nb * bs,) + out.shape[2:])[:n]

  def _eval_one(self, state: RunState, run: RunInputs, which: tuple[str, ...]):
    """Logits (plain and rescaled) of one run on the named eval sets."""
    fn = self.logits_fn(state)
    out = {}
    for name in which:
      x = jnp.asarray(self.eval_sets[name][0], jnp.float32)
      out[name] = self._logits_on(fn, x)
      if self.ctx.stats is not None and name != "train":
        from mixjax import theory  # pylint: disable=g-import-not-at-top
        fn_rs = theory.rescaled(fn, self.ctx.stats, run.theta_bar)
        out[name + "_rs"] = self._logits_on(fn_rs, x)
    return out

  def _diag_one(self, fn, state: RunState, run: RunInputs):
    return fn(self.logits_fn(state), run, self.ctx)


@functools.partial(jax.jit, static_argnums=(2,))
def _many_metric_sums(logits, labels, num_bins: int):
  from mixjax import eval as mj_eval  # pylint: disable=g-import-not-at-top
  return jax.vmap(lambda u: mj_eval.metric_sums(u, labels, num_bins=num_bins))(logits)


def _metrics(logits: np.ndarray, labels: np.ndarray, num_bins: int) -> list[dict[str, float]]:
  """finalize_metrics(metric_sums(.)) for each run of logits (R, N, c)."""
  from mixjax import eval as mj_eval  # pylint: disable=g-import-not-at-top
  sums = jax.device_get(_many_metric_sums(jnp.asarray(logits), jnp.asarray(labels), num_bins))
  r = np.asarray(logits).shape[0]
  return [mj_eval.finalize_metrics(jax.tree.map(lambda a, i=i: a[i], sums)) for i in range(r)]


def _data_stats(data: Any, cfg: EngineConfig, num_classes: int):
  from mixjax import theory  # pylint: disable=g-import-not-at-top
  x = jnp.asarray(data.train_x, jnp.float32)
  y = jax.nn.one_hot(jnp.asarray(data.train_y), num_classes, dtype=jnp.float32)
  return theory.data_stats(x, y, rank=cfg.stats_rank)


def train_runs(config: EngineConfig, data: Any, runs: Sequence[Run], *,
               diagnostics_fn: Callable | None = None, stats: Any = None,
               extra_inputs: dict[str, np.ndarray] | None = None,
               group_by_law: bool = False,
               log: Callable[[str], None] = print) -> EngineResult:
  """Trains all `runs` with one compiled program (per law for static-law methods).

  Args:
    config: the static `EngineConfig`.
    data: a `mixjax.data.Dataset` (host arrays train_x/train_y/val_x/val_y/test_x/test_y,
      integer labels, num_classes).
    runs: the runs (see `make_runs`); each has a law, a seed, a learning rate and a
      weight decay. Run i's result is independent of the other runs (up to float
      rounding of batched kernels).
    diagnostics_fn: optional `fn(logits_fn, run: RunInputs, ctx: Context) -> dict of
      scalars`, evaluated (vmapped over runs) at every checkpoint; results go to
      `history["diag/<name>"]`. A dict of such functions compiles each one as its own
      program (smaller XLA graphs; their output names must not clash). On XLA:CPU one
      large program combining Jacobians, Hessians, eigendecompositions and `lax.map`
      was seen to hang intermittently (all threads idle), while its parts run fine.
    stats: `DataStats` of the training set; computed with `mixjax.theory.data_stats`
      when None (it is needed for rescaling and by some methods).
    extra_inputs: name -> inputs (N, ...) whose final logits (plain and rescaled) are
      returned in `logits[name]` / `logits[name + "_rs"]` (e.g. a grid for decision
      boundaries), whatever `keep_logits` says.
    group_by_law: compile one program per law (seeds and hyper-parameters still
      vmapped) so that the method and `diagnostics_fn` see the law as a Python object
      (`ctx.law`), e.g. for `mixjax.theory.exact_mixup_risk`'s θ-quadrature.
    log: progress printer.

  Returns:
    An `EngineResult` (rows in the order of `runs`).
  """
  cfg = config
  runs = list(runs)
  if not runs:
    raise ValueError("train_runs: no runs given; build them with make_runs(laws, seeds).")
  num_classes = int(data.num_classes)
  _check_config(cfg, int(np.asarray(data.train_x).shape[0]))
  static = group_by_law
  if static:
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(runs):
      groups.setdefault(r.law.label, []).append(i)
    if any(len({runs[i].law for i in idx}) > 1 for idx in groups.values()):
      raise ValueError("Two different laws share a label; give every law a distinct label.")
  else:
    groups = {"all": list(range(len(runs)))}
  if stats is None:
    stats = _data_stats(data, cfg, num_classes)
  t_start = time.time()
  num_components = max(r.law.num_components for r in runs)
  ckpts = _checkpoint_epochs(cfg.num_epochs, cfg.num_checkpoints)
  rows: list[dict[str, Any] | None] = [None] * len(runs)
  hist_rows: list[dict[str, list[float]] | None] = [None] * len(runs)
  keep_names = (["test", "test_rs"] if cfg.keep_logits else []) + [
      n + sfx for n in sorted(extra_inputs or {}) for sfx in ("", "_rs")]
  logits_keep: dict[str, list[Any]] = {k: [None] * len(runs) for k in keep_names}
  compile_s = 0.0

  for gname, idx in groups.items():
    static_law = runs[idx[0]].law if static else None
    ctx = Context(config=cfg, stats=stats, law=static_law, num_classes=num_classes)
    prog = _Program(cfg, data, ctx, diagnostics_fn, extra_inputs)
    if static_law is not None and static_law.label != gname:
      raise AssertionError(gname)
    chunk = cfg.max_parallel or len(idx)
    for c0 in range(0, len(idx), chunk):
      ids = idx[c0:c0 + chunk]
      padded = ids + [ids[-1]] * (chunk - len(ids))  # same shapes -> no recompilation
      res, cs = _train_chunk(prog, [runs[i] for i in padded], num_components, ckpts, data,
                             log, label=f"{cfg.method}/{gname} runs {c0}..{c0 + len(ids) - 1}"
                             f" of {len(idx)}")
      compile_s += cs
      for j, i in enumerate(ids):
        rows[i] = {**runs[i].describe(), **res["final"][j]}
        hist_rows[i] = {k: v[:, j] for k, v in res["history"].items()}
        for k in keep_names:
          logits_keep[k][i] = res["logits"][k][j]

  history = {k: np.stack([h[k] for h in hist_rows], axis=1) for k in hist_rows[0]}
  history["epoch"] = np.asarray(ckpts)
  total = time.time() - t_start
  info = {"total_seconds": total, "compile_seconds_approx": compile_s,
          "steps_per_epoch": prog.steps_per_epoch, "num_runs": len(runs),
          "num_programs": len(groups), "checkpoint_epochs": ckpts}
  logits = None
  if keep_names:
    logits = {k: np.stack(v).astype(np.float32) for k, v in logits_keep.items()}
  return EngineResult(runs=rows, history=history, logits=logits, info=info)


def _train_chunk(prog: _Program, runs: list[Run], num_components: int, ckpts: list[int],
                 data: Any, log, label: str):
  """Trains one chunk of runs; returns final metrics, history and logits."""
  cfg = prog.cfg
  inputs = pack_runs(runs, num_components)
  t0 = time.time()
  state = prog._init(inputs)
  history: dict[str, list[np.ndarray]] = {}
  done = 0
  seg_len = None
  compile_s = 0.0
  last_losses = None
  for ck in ckpts:
    n = ck - done
    # Compile once per distinct segment length (evenly spaced checkpoints: ≤ 2 lengths).
    ts = time.time()
    state, ep_losses = prog._segment(state, inputs, jnp.int32(done), n)
    ep_losses = np.asarray(jax.device_get(ep_losses))  # (R, n)
    if seg_len is None or n != seg_len:
      compile_s += time.time() - ts  # upper bound: includes the segment's run time
      seg_len = n
    done = ck
    last_losses = ep_losses[:, -1]
    ev = _evaluate(prog, state, inputs, data, with_temperature=False)
    for k, v in ev.items():
      history.setdefault(k, []).append(v)
    history.setdefault("train_objective", []).append(last_losses)
    if prog._diag is not None:
      for diag_fn in prog._diag.values():  # separate programs, one after the other
        diag = jax.device_get(diag_fn(state, inputs))
        for k, v in diag.items():
          history.setdefault(f"diag/{k}", []).append(np.asarray(v, np.float64))
    if cfg.verbose:
      log(f"[{label}] epoch {ck}/{cfg.num_epochs} {time.time() - t0:7.1f}s  "
          f"objective {np.mean(last_losses):.4f}  test acc "
          f"{np.mean(ev['test_accuracy']):.4f} ± {np.std(ev['test_accuracy']):.4f} "
          f"(mean ± sd over {len(runs)} runs)")
    if not np.all(np.isfinite(last_losses)):
      bad = [runs[i].law.label for i in np.where(~np.isfinite(last_losses))[0]]
      log(f"WARNING: non-finite training objective for runs with laws {sorted(set(bad))}.")
  final_ev = _evaluate(prog, state, inputs, data, with_temperature=cfg.fit_temperature,
                       keep_logits=cfg.keep_logits)
  logits = final_ev.pop("_logits", None) or {}
  if prog.extra_names:
    logits.update(jax.device_get(prog._eval(state, inputs, prog.extra_names)))
  final = []
  for j in range(len(runs)):
    row = {k: float(v[j]) for k, v in final_ev.items()}
    row["train_objective"] = float(last_losses[j])
    final.append(row)
  hist = {k: np.stack(v) for k, v in history.items()}
  return {"final": final, "history": hist, "logits": logits}, compile_s


def _evaluate(prog: _Program, state: RunState, inputs: RunInputs, data: Any, *,
              with_temperature: bool, keep_logits: bool = False) -> dict[str, np.ndarray]:
  """Metrics (R,) per name for test/val/train, plain and rescaled (and TS at the end)."""
  from mixjax import eval as mj_eval  # pylint: disable=g-import-not-at-top
  cfg = prog.cfg
  out = jax.device_get(prog._eval(state, inputs, prog.metric_sets))
  labels = {k: np.asarray(v[1]) for k, v in prog.eval_sets.items()}
  res: dict[str, np.ndarray] = {}
  for name, lg in out.items():
    base = name.replace("_rs", "")
    ms = _metrics(lg, labels[base], cfg.num_bins)
    for key in ms[0]:
      res[f"{name}_{key}"] = np.asarray([m[key] for m in ms])
  if with_temperature:
    for kind in ("", "_rs"):
      if f"val{kind}" not in out:
        continue
      temps = np.asarray([mj_eval.fit_temperature(out[f"val{kind}"][j], labels["val"])
                          for j in range(out["val"].shape[0])])
      res[f"{kind.strip('_') + '_' if kind else ''}temperature"] = temps
      scaled = out[f"test{kind}"] / temps[:, None, None]
      ms = _metrics(scaled, labels["test"], cfg.num_bins)
      for key in ms[0]:
        res[f"test{kind}_ts_{key}"] = np.asarray([m[key] for m in ms])
  if keep_logits:
    res["_logits"] = {"test": out["test"], "test_rs": out.get("test_rs", out["test"])}
  return res


def train_one(config: EngineConfig, data: Any, run: Run, *, stats: Any = None
              ) -> dict[str, Any]:
  """The same training as `train_runs` for ONE run, without `jax.vmap` (a reference).

  Uses the per-run functions that `train_runs` vmaps (`_init_one`, `_segment_one`), each
  only jitted. Used by the tests to check that batching runs changes nothing but float
  rounding; also handy to debug a single run.

  Returns:
    {"state": the final `RunState`, "test_logits": (n_test, c) float32,
     "test_rs_logits": (n_test, c) (rescaled)}.
  """
  cfg = config
  num_classes = int(data.num_classes)
  _check_config(cfg, int(np.asarray(data.train_x).shape[0]))
  if stats is None:
    stats = _data_stats(data, cfg, num_classes)
  ctx = Context(config=cfg, stats=stats, law=None, num_classes=num_classes)
  prog = _Program(cfg, data, ctx, None)
  inputs = jax.tree.map(lambda a: a[0], pack_runs([run]))
  state = jax.jit(prog._init_one)(inputs)
  segment = jax.jit(prog._segment_one, static_argnums=(3,))
  done = 0
  for ck in _checkpoint_epochs(cfg.num_epochs, cfg.num_checkpoints):
    state, _ = segment(state, inputs, jnp.int32(done), ck - done)
    done = ck
  out = jax.jit(lambda s, r: prog._eval_one(s, r, ("test",)))(state, inputs)
  return {"state": state, "test_logits": np.asarray(out["test"]),
          "test_rs_logits": np.asarray(out["test_rs"])}
