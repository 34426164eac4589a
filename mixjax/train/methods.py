"""Training objectives by name: the `METHODS` registry.

A method computes the *local* (this device's) mean loss of a batch:

    method(ctx, logits_fn, x, y, key) -> scalar

with `x` (b, ...) this device's inputs, `y` (b, c) one-hot labels, `logits_fn` the
model in training mode (BatchNorm statistics are handled by the caller) and `key` the
method's key for this step. Inside the train step (see `step.py`) the caller takes
`lax.pmean(loss, "data")` so that the differentiated objective is the global-batch mean.

  erm              (1/b) Σ ℓ(y_i, f(x_i)).
  mixup            (1/b) Σ ℓ(y_mix_i, f(x_mix_i)) with (x_mix, y_mix) from
                   `mixjax.mixing.mix` (one-draw unbiased estimate of E^mix), a share
                   mixing.prob of the examples mixed (`draw_mix`).
  regmixup         (1/b) Σ ℓ(y_i, f(x_i)) + η (1/b) Σ ℓ(y_mix_i, f(x_mix_i)) (Pinto et al.),
                   clean and mixed batch through the model as one concatenated batch.
  erm_transformed  ERM on Theorem 1's transformed data (x̃, ỹ) (`theory.transform`):
                   mixup's risk without its zero-mean perturbations.
  perturbed_erm    Theorem 1's right-hand side at random (θ, j) draws
                   (`theory.perturbed_erm_loss`): equal to E^mix in expectation.
  approx           Theorem 3's second-order risk (`theory.approx_mixup_risk`) with the
                   configured estimator and terms. Needs models without BatchNorm
                   (its JVPs cannot carry batch-statistics updates): rejected otherwise.
  label_smoothing_matched
                   ERM on the labels of Theorem 1 only, ỹ = ȳ + θ̄ (y − ȳ) with θ̄ of
                   the configured law: label smoothing towards the class prior ȳ with
                   ε = 1 − θ̄ (towards uniform for balanced classes), the inputs left
                   as they are. The baseline that asks whether mixup is more than its
                   label part.

Every method sees labels already smoothed by `config.method.label_smoothing` = ε
(`losses.smooth_labels`, towards uniform, in the train step before the method: smooth,
then mix, as timm does).

Where λ and the partners come from (mixup, regmixup): by default each device draws
them for its own local batch with its own key (`fold_in(key, device_index)`): no
communication, and the mixup estimate stays unbiased (partners are uniform within the
local batch, which is itself a uniform sample). With `config.mixing.global_draw=True` the
local batches are all-gathered, λ and the partner permutation are drawn for the global
batch with a key shared by all devices, and each device keeps its own rows: the run is
then the same (up to float rounding) for any device count — what the multi-device
equivalence test checks — at the price of one all-gather per step.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax
import jax
from jax import lax
import jax.numpy as jnp

from mixjax import losses as losses_lib
from mixjax import mixing
from mixjax.registry import Registry
from mixjax.sharding import AXIS
from mixjax.train import config as config_lib

METHODS = Registry("method")


@dataclasses.dataclass(frozen=True)
class Method:
  """A registered method: its loss and what it needs (`register`).

  `method(ctx, logits_fn, x, y, key)` is its local mean loss (module docstring). The
  trainer, validation, summaries and studies ask these fields, never the name.

  Attributes:
    name: its name in `METHODS` (config.method.name).
    loss: the loss function.
    uses_law: it reads the configured law (config.sampler): its draws or its moments.
    needs_stats: it needs the DataStats (x̄, ȳ, Σ) of the training set.
    rescalable: its model trains on Theorem 1's transformed inputs, so test-time
      rescaling (docs/THEORY.md §5) applies (the mixup family).
    allows_batchnorm: it can train a model with BatchNorm (approx cannot: its JVPs along
      input directions cannot carry batch-statistics updates).
    options: the method-specific config keys it reads (validated only where read).
    equivalent_law: `equivalent_law(law, config)`, the law the model effectively
      trains on given the configured one (RegMixup: `samplers.regmixup_equivalent`
      with η = config.method.eta); None: the configured law itself.
  """
  name: str
  loss: Callable[..., Any]
  uses_law: bool = False
  needs_stats: bool = False
  rescalable: bool = False
  allows_batchnorm: bool = True
  options: tuple[str, ...] = ()
  equivalent_law: Callable[[Any, Any], Any] | None = None

  def __call__(self, ctx, logits_fn, x, y, key):
    return self.loss(ctx, logits_fn, x, y, key)

  @property
  def labels_only(self) -> bool:
    """It uses the law for its labels only (θ̄), leaving the inputs as they are: it
    reads the law but its inputs are not transformed, so nothing is rescaled."""
    return self.uses_law and not self.rescalable


def register(name: str, **needs):
  """Registers the decorated loss in `METHODS` as `Method(name, loss, **needs)`."""
  def add(loss):
    METHODS.register(name, Method(name, loss, **needs))
    return loss
  return add


def get(config) -> Method:
  """The `Method` entry of config.method.name."""
  return METHODS.get(config.method.name)


def knob(config_key: str | None, *, leaf: bool, convert: Callable[[Any], Any] | None = None):
  """A `MethodContext` field and where its value comes from.

  Args:
    config_key: the config knob it is read from (`MethodContext.from_config`), or None
      for the values the trainer sets (the law's moments, the statistics).
    leaf: a pytree leaf (a number that may differ across the runs of one vmapped
      program: stacked on a run axis and passed to the step) or static structure
      (baked into the compiled program; runs that differ in it compile separately).
    convert: maps the config value to the field's value (e.g. a name to a function).
  """
  return dataclasses.field(metadata={"pytree_node": leaf, "config_key": config_key,
                                     "convert": convert})


def _samplers():
  from mixjax import samplers  # pylint: disable=g-import-not-at-top
  return samplers


def make_law(section) -> Any:
  """The mixing law of a config's `sampler` section (name and params): the one place a
  law is built from a config."""
  return _samplers().make_sampler(section.name, **dict(section.params))


@flax.struct.dataclass
class MethodContext:
  """What a method needs besides the batch, built from the config by `from_config`.

  Leaves (numbers, stacked on a run axis when the runs of a vmapped group differ in
  them; `per_run_keys` lists their config keys) and static fields (the program's
  structure). Adding a per-run numeric knob means: its default in `config.base_config`,
  a `knob(..., leaf=True)` field here read by its method, and a test.

  Attributes:
    loss: per-example loss ℓ(y, u) (method.loss).
    sampler: the mixing law (sampler.name / sampler.params), a pytree.
    eta: RegMixup weight η (method.eta).
    label_smoothing: ε of the uniform label smoothing applied before every method
      (method.label_smoothing; `losses.smooth_labels`).
    granularity, pairing, fold: mixing options (`mixjax.mixing.mix`).
    global_draw: draw λ / partners over the global batch (see the module docstring).
    prob: the share of the batch that is mixed (mixing.prob; `mix_share`). Static: 1
      compiles exactly the program that mixes every example.
    num_draws: perturbed_erm draws. estimator, num_probes, terms: approx options.
    moments: θ-moments of the law the model trains on (`setup.training_moments`;
      None outside the mixup family): θ̄ for erm_transformed and the approximate risk.
    stats: DataStats of the training set, or None when the method needs none (inside
      the train step it is a replicated argument of the step, set with `replace`, so
      large Σ_xx are not baked into the program).
    axis_name: the mesh axis inside shard_map, or None outside it (single device).
  """
  loss: Callable[..., Any] = knob("method.loss", leaf=False, convert=losses_lib.get_loss)
  sampler: Any = knob("sampler", leaf=True, convert=make_law)
  eta: Any = knob("method.eta", leaf=True, convert=float)
  label_smoothing: Any = knob("method.label_smoothing", leaf=True, convert=float)
  granularity: str = knob("mixing.granularity", leaf=False)
  pairing: str = knob("mixing.pairing", leaf=False)
  fold: bool = knob("mixing.fold", leaf=False, convert=bool)
  global_draw: bool = knob("mixing.global_draw", leaf=False, convert=bool)
  prob: float = knob("mixing.prob", leaf=False, convert=float)
  num_draws: int = knob("method.num_draws", leaf=False, convert=int)
  estimator: str = knob("method.estimator", leaf=False)
  num_probes: int = knob("method.num_probes", leaf=False, convert=int)
  terms: tuple[str, ...] = knob("method.terms", leaf=False, convert=tuple)
  moments: Any = knob(None, leaf=True)
  stats: Any = knob(None, leaf=True)
  axis_name: str | None = knob(None, leaf=False)

  @classmethod
  def from_config(cls, config, *, moments=None, stats=None, sampler=None,
                  axis_name: str | None = AXIS) -> "MethodContext":
    """The context of `config`: every `knob` with a config key read from it (`sampler`:
    an already built law instead of config.sampler's)."""
    values = {}
    for f in dataclasses.fields(cls):
      key = f.metadata["config_key"]
      if key is None:
        continue
      value = config_lib.get(config, key)
      convert = f.metadata["convert"]
      values[f.name] = convert(value) if convert is not None else value
    if sampler is not None:
      values["sampler"] = sampler
    return cls(**values, moments=moments, stats=stats, axis_name=axis_name)

  @classmethod
  def per_run_keys(cls) -> tuple[str, ...]:
    """The config keys read into leaves: what the runs of one program may differ in."""
    return tuple(f.metadata["config_key"] for f in dataclasses.fields(cls)
                 if f.metadata["pytree_node"] and f.metadata["config_key"])

  @property
  def theta_bar(self):
    """θ̄ of the training law (1 outside the mixup family)."""
    return 1.0 if self.moments is None else self.moments.mean


def _mean_loss(ctx: MethodContext, y, u):
  return jnp.mean(losses_lib.batch_loss(ctx.loss, y, u))


# The stream of the mixing key that draws which examples `prob` mixes (`mixing.mix`
# draws λ from stream 0 and the partners from stream 1 of the same key).
_PROB_STREAM = 2


def mix_share(key: jax.Array, x: jax.Array, y: jax.Array, sampler, prob, **kw
              ) -> mixing.Mixed:
  """`mixing.mix(key, x, y, sampler, **kw)` applied to a share `prob` of the batch.

  Example i is mixed iff u_i < prob, with u = uniform(fold_in(key, 2), (B,)) ∈ [0, 1)^B
  drawn apart from λ and the partners (streams 0 and 1 of `key`); the others are kept:
  x_i, y_i, λ_i = 1, mask 1, partner i. So each example is mixed with probability prob,
  independently (timm's and mmpretrain's `prob`, per example). `prob` is a Python float
  (the program's structure, not a traced value): prob = 1 returns `mix`'s result and
  compiles exactly its program (a traced select, even one that keeps every mixed row,
  changes how XLA:CPU fuses the step and the last bits of its results).
  """
  m = mixing.mix(key, x, y, sampler, **kw)
  if prob >= 1.0:
    return m
  b = m.x.shape[0]
  mixed = jax.random.uniform(jax.random.fold_in(key, _PROB_STREAM), (b,)) < prob
  keep = lambda new, old: jnp.where(mixed.reshape((b,) + (1,) * (new.ndim - 1)), new,
                                    old.astype(new.dtype))
  return mixing.Mixed(x=keep(m.x, jnp.asarray(x)), y=keep(m.y, jnp.asarray(y)),
                      lam=jnp.where(mixed, m.lam, 1.0),
                      partner=jnp.where(mixed, m.partner, jnp.arange(b, dtype=jnp.int32)),
                      mask=keep(m.mask, jnp.ones_like(m.mask)))


def draw_mix(ctx: MethodContext, key: jax.Array, x: jax.Array, y: jax.Array):
  """This device's mixed rows and their draw (`mixing.Mixed`) under the configured
  draw, a share ctx.prob of the examples mixed (`mix_share`).

  Per-device (default): `mix_share(fold_in(key, device), x, y)` on the local batch;
  `partner` indexes the local batch. Global: `mix_share(key, all_gather(x),
  all_gather(y))` with the key shared by all devices, then this device's rows; `partner`
  indexes the global batch (and which examples are mixed does not depend on the device
  count).
  """
  kw = dict(granularity=ctx.granularity, pairing=ctx.pairing, fold=ctx.fold)
  if ctx.axis_name is None:
    return mix_share(key, x, y, ctx.sampler, ctx.prob, **kw)
  dev = lax.axis_index(ctx.axis_name)
  if not ctx.global_draw:
    return mix_share(jax.random.fold_in(key, dev), x, y, ctx.sampler, ctx.prob, **kw)
  b = x.shape[0]
  xg = lax.all_gather(x, ctx.axis_name, tiled=True)
  yg = lax.all_gather(y, ctx.axis_name, tiled=True)
  rows = lambda a: lax.dynamic_slice_in_dim(a, dev * b, b, axis=0)
  return jax.tree.map(rows, mix_share(key, xg, yg, ctx.sampler, ctx.prob, **kw))


def _local_key(ctx: MethodContext, key: jax.Array) -> jax.Array:
  if ctx.axis_name is None:
    return key
  return jax.random.fold_in(key, lax.axis_index(ctx.axis_name))


@register("erm")
def erm(ctx, logits_fn, x, y, key):
  del key
  return _mean_loss(ctx, y, logits_fn(x))


def _with_prob(law, config):
  """The law mixup with a share p = config.mixing.prob of the examples mixed trains on:
  λ = 1 (the example kept) with probability 1 − p, else λ ~ law (`samplers.switch`, a
  mixture for a λ-law); `law` itself for p = 1."""
  p = float(config.mixing.prob)
  return law if p == 1.0 else _samplers().switch(_samplers().constant(1.0), law, p)


@register("mixup", uses_law=True, rescalable=True, options=("mixing.prob",),
          equivalent_law=_with_prob)
def mixup(ctx, logits_fn, x, y, key):
  x_mix, y_mix = draw_mix(ctx, key, x, y)[:2]
  return _mean_loss(ctx, y_mix, logits_fn(x_mix))


@register("regmixup", uses_law=True, rescalable=True,
          options=("method.eta", "mixing.prob"),
          equivalent_law=lambda law, config: _samplers().regmixup_equivalent(
              _with_prob(law, config), float(config.method.eta)))
def regmixup(ctx, logits_fn, x, y, key):
  x_mix, y_mix = draw_mix(ctx, key, x, y)[:2]
  b = x.shape[0]
  u = logits_fn(jnp.concatenate([x.astype(x_mix.dtype), x_mix], axis=0))
  per_example = losses_lib.batch_loss(ctx.loss, jnp.concatenate([y, y_mix], axis=0), u)
  return jnp.mean(per_example[:b]) + ctx.eta * jnp.mean(per_example[b:])


@register("erm_transformed", uses_law=True, needs_stats=True, rescalable=True)
def erm_transformed(ctx, logits_fn, x, y, key):
  from mixjax import theory  # pylint: disable=g-import-not-at-top
  del key
  x_t, y_t = theory.transform(x, y, ctx.stats, ctx.moments)
  return _mean_loss(ctx, y_t, logits_fn(x_t))


@register("perturbed_erm", uses_law=True, needs_stats=True, rescalable=True,
          options=("method.num_draws",))
def perturbed_erm(ctx, logits_fn, x, y, key):
  from mixjax import theory  # pylint: disable=g-import-not-at-top
  return theory.perturbed_erm_loss(_local_key(ctx, key), logits_fn, x, y, ctx.sampler,
                                   ctx.stats, loss=ctx.loss, num_draws=ctx.num_draws,
                                   theta_bar=ctx.moments)


@register("approx", uses_law=True, needs_stats=True, rescalable=True,
          allows_batchnorm=False,
          options=("method.estimator", "method.num_probes", "method.terms"))
def approx(ctx, logits_fn, x, y, key):
  from mixjax import theory  # pylint: disable=g-import-not-at-top
  return theory.approx_mixup_risk(
      _local_key(ctx, key), logits_fn, x, y, ctx.stats, ctx.sampler, loss=ctx.loss,
      estimator=ctx.estimator, num_probes=ctx.num_probes,
      terms=tuple(t for t in ctx.terms if t != "erm"),
      **({} if ctx.moments is None else {"moments": ctx.moments}))


@register("label_smoothing_matched", uses_law=True, needs_stats=True)
def label_smoothing_matched(ctx, logits_fn, x, y, key):
  from mixjax import theory  # pylint: disable=g-import-not-at-top
  del key
  return _mean_loss(ctx, theory.transform_labels(y, ctx.stats, ctx.moments), logits_fn(x))
