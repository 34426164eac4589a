"""Mixing laws as fixed-size parametric mixtures, so one sampler can be vmapped over laws.

By THEORY.md §1 the mixup risk depends on the λ-law only through the law Q of
θ = max(λ, 1 − λ) on [½, 1]. Every law used by the studies is a finite mixture of
*components* of one parametric form,

    θ = loc + scale · W^power,     W ~ Beta(a, b),

chosen with probability `weight`. This one form covers:

  * folded Beta(α, α) (classic mixup):  loc = ½, scale = ½, W ~ Beta(½, α), power = ½.
    Proof: if λ ~ Beta(α, α) then (2λ − 1)² = 1 − 4λ(1 − λ) ~ Beta(½, α), and
    θ = ½ + ½|2λ − 1|.
  * W-shaped λ-laws (U-shaped θ-density), THEORY.md §6:  θ = ½ + X/2, X ~ Beta(a, b):
    loc = ½, scale = ½, power = 1.
  * atoms θ = t:  loc = t, scale = 0 (W is drawn but unused). ERM is the atom θ = 1
    (then λ = 1 after folding, and the mixed batch equals the batch exactly).
  * RegMixup(α, η) in expectation (THEORY.md §6): atom 1 w.p. 1/(1 + η), folded
    Beta(α, α) w.p. η/(1 + η).
  * the σ²/θ̄²-optimal law: θ = ½ w.p. 2/3 and θ = 1 w.p. 1/3 (Bhatia–Davis bound 1/8).

A `Law` is the host description (a label and a tuple of components); `Law.params(K)`
packs it into a `ParametricLaw` of arrays of fixed length K (padded with weight-0
components), and `stack_laws` stacks several laws along a leading axis so that the
training engine vmaps one sampling function (`sample_theta` / `sample_lambda`) over
laws, seeds and hyper-parameters alike.

Moments are exact, in float64, from E W^q = B(a + q, b) / B(a, b):

    θ̄ = Σ_k w_k (loc_k + scale_k E W_k^{p_k}),
    E θ² = Σ_k w_k (loc_k² + 2 loc_k scale_k E W_k^{p_k} + scale_k² E W_k^{2 p_k}),
    σ² = E θ² − θ̄²,   γ² = σ² + (1 − θ̄)²  (THEORY.md §1, Lemma 2).

`Law.to_sampler()` builds the equivalent `mixjax.samplers` object (used by the theory
functions and by the tests, which check that both agree in moments and in law).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Sequence

import chex
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from scipy import special

from mixjax.registry import Registry

LAWS = Registry("law")

_KINDS = ("folded_beta", "w_shaped", "atom", "affine_beta")


@dataclasses.dataclass(frozen=True)
class Component:
  """One mixture component: θ = loc + scale · W^power with W ~ Beta(a, b).

  `kind` records which `mixjax.samplers` law it is ("folded_beta": `beta(α)` with
  α = b; "w_shaped": `w_shaped(a, b)`; "atom": `constant(loc)`; "affine_beta": the
  general form, sampled through `samplers.from_fn`).
  """
  kind: str
  loc: float
  scale: float
  a: float
  b: float
  power: float

  def __post_init__(self):
    if self.kind not in _KINDS:
      raise ValueError(f"Unknown component kind {self.kind!r}; known: {', '.join(_KINDS)}.")
    if not (self.a > 0 and self.b > 0 and self.power > 0):
      raise ValueError(
          f"Component {self}: Beta parameters a, b and the power must be > 0.")
    if self.scale < 0 or self.loc < 0.5 - 1e-12 or self.loc + self.scale > 1 + 1e-12:
      raise ValueError(
          f"Component {self}: θ = loc + scale·W must stay in [½, 1] "
          f"(need loc ≥ ½, scale ≥ 0, loc + scale ≤ 1).")

  def raw_moment(self, q: float) -> float:
    """E W^q for W ~ Beta(a, b), exact: B(a + q, b) / B(a, b)."""
    if self.scale == 0:
      return 1.0
    return float(np.exp(special.gammaln(self.a + q) - special.gammaln(self.a)
                        + special.gammaln(self.a + self.b)
                        - special.gammaln(self.a + self.b + q)))

  def theta_moments(self) -> tuple[float, float]:
    """(E θ, E θ²) of this component, exact in float64."""
    m1 = self.raw_moment(self.power)
    m2 = self.raw_moment(2 * self.power)
    e1 = self.loc + self.scale * m1
    e2 = self.loc ** 2 + 2 * self.loc * self.scale * m1 + self.scale ** 2 * m2
    return e1, e2


@dataclasses.dataclass(frozen=True)
class LawMoments:
  """Exact θ-moments of a law (THEORY.md §1 and §3): θ̄, σ², γ², σ²/θ̄², γ²/θ̄²."""
  mean: float
  var: float
  gamma2: float
  strength: float
  global_strength: float

  def as_dict(self) -> dict[str, float]:
    return dataclasses.asdict(self)


class ParametricLaw(flax.struct.PyTreeNode):
  """Arrays of a law with K components (any leading batch axes, e.g. (L, K) stacked).

  Fields (all float32, shape (..., K)): weight (sums to 1 over K), loc, scale, a, b,
  power. Padding components have weight 0.
  """
  weight: jax.Array
  loc: jax.Array
  scale: jax.Array
  a: jax.Array
  b: jax.Array
  power: jax.Array


@dataclasses.dataclass(frozen=True)
class Law:
  """A θ-law: a finite mixture of `Component`s with weights summing to one.

  Attributes:
    label: a short human-readable name (used in tables and figures).
    components: the mixture components.
    weights: their probabilities.
  """
  label: str
  components: tuple[Component, ...]
  weights: tuple[float, ...]

  def __post_init__(self):
    if len(self.components) != len(self.weights) or not self.components:
      raise ValueError(
          f"Law {self.label!r}: need as many weights as components (got "
          f"{len(self.weights)} weights, {len(self.components)} components), at least one.")
    if any(w < 0 for w in self.weights) or abs(sum(self.weights) - 1) > 1e-9:
      raise ValueError(
          f"Law {self.label!r}: weights must be ≥ 0 and sum to 1; got {self.weights}.")

  @property
  def num_components(self) -> int:
    return len(self.components)

  def moments(self) -> LawMoments:
    """Exact θ-moments (float64): see the module docstring."""
    e1 = e2 = 0.0
    for w, comp in zip(self.weights, self.components):
      c1, c2 = comp.theta_moments()
      e1 += w * c1
      e2 += w * c2
    var = max(e2 - e1 ** 2, 0.0)
    gamma2 = var + (1 - e1) ** 2
    return LawMoments(mean=e1, var=var, gamma2=gamma2, strength=var / e1 ** 2,
                      global_strength=gamma2 / e1 ** 2)

  def params(self, num_components: int | None = None) -> ParametricLaw:
    """Packs the law into arrays of length `num_components` (≥ its own count)."""
    k = num_components or self.num_components
    if k < self.num_components:
      raise ValueError(
          f"Law {self.label!r} has {self.num_components} components; cannot pack it into "
          f"{k}. Pass num_components ≥ {self.num_components}.")
    pad = k - self.num_components
    comps = list(self.components)
    cols = {f: [getattr(c, f) for c in comps] + [v] * pad
            for f, v in (("loc", 1.0), ("scale", 0.0), ("a", 1.0), ("b", 1.0),
                         ("power", 1.0))}
    weight = list(self.weights) + [0.0] * pad
    return ParametricLaw(weight=jnp.asarray(weight, jnp.float32),
                         **{f: jnp.asarray(v, jnp.float32) for f, v in cols.items()})

  def to_sampler(self) -> Any:
    """The same law as a `mixjax.samplers` sampler (a λ-law whose θ-law is this one)."""
    from mixjax import samplers  # pylint: disable=g-import-not-at-top
    parts = [_component_sampler(c) for c in self.components]
    if len(parts) == 1:
      return parts[0]
    return samplers.mixture(parts, list(self.weights))

  def sample_theta(self, key: jax.Array, shape: Sequence[int] = ()) -> jax.Array:
    """θ draws of this law (convenience wrapper of `sample_theta`)."""
    return sample_theta(self.params(), key, shape)

  def describe(self) -> dict[str, Any]:
    """A JSON-able description: label, components, weights and exact moments."""
    return {"label": self.label,
            "components": [dataclasses.asdict(c) for c in self.components],
            "weights": list(self.weights), **self.moments().as_dict()}


def law_from_sampler(sampler: Any, label: str | None = None) -> Law:
  """The `Law` of a `mixjax.samplers` sampler, read from its structured θ-law.

  Supported components: atoms, folded *symmetric* Beta(α, α) and shifted Beta
  (W-shaped). A folded asymmetric Beta or a `from_fn` law has no exact representation
  here and raises a ValueError.
  """
  from mixjax import samplers  # pylint: disable=g-import-not-at-top
  sampler = samplers.make_sampler(sampler) if isinstance(sampler, str) else sampler
  q = sampler.theta_law()
  comps = []
  for c in q.components:
    if isinstance(c, samplers.Atom):
      comps.append(Component("atom", float(c.theta), 0.0, 1.0, 1.0, 1.0))
    elif isinstance(c, samplers.FoldedBeta) and c.a == c.b:
      comps.append(Component("folded_beta", 0.5, 0.5, 0.5, float(c.b), 0.5))
    elif isinstance(c, samplers.ShiftedBeta):
      comps.append(Component("w_shaped", 0.5, 0.5, float(c.a), float(c.b), 1.0))
    else:
      raise ValueError(
          f"law_from_sampler: component {c} of {sampler.name} has no parametric form here "
          "(supported: atoms, folded symmetric Beta(α, α), W-shaped). Build the law with "
          "the constructors of mixjax.studies.laws instead.")
  return Law(label or sampler.name, tuple(comps), tuple(float(w) for w in q.weights))


def _component_sampler(comp: Component) -> Any:
  from mixjax import samplers  # pylint: disable=g-import-not-at-top
  if comp.kind == "atom":
    return samplers.constant(comp.loc)
  if comp.kind == "folded_beta":
    return samplers.beta(comp.b)
  if comp.kind == "w_shaped":
    return samplers.w_shaped(comp.a, comp.b)
  law = Law("component", (comp,), (1.0,))

  def fn(key, shape=()):
    return sample_lambda(law.params(), key, shape)
  return samplers.from_fn(fn)


# ----------------------------------------------------------------------------------------
# Sampling (pure jnp, vmappable over the law's arrays).


def sample_theta(law: ParametricLaw, key: jax.Array, shape: Sequence[int] = ()) -> jax.Array:
  """Draws θ ∈ [½, 1] from a packed law; jit/vmap-able over `law` and `key`.

  Args:
    law: a `ParametricLaw` with fields of shape (K,) (vmap over extra leading axes).
    key: PRNG key. `fold_in(key, 0)` picks the component (inverse CDF of a uniform on
      the cumulative weights), `fold_in(key, 1)` draws W.
    shape: output shape.

  Returns:
    θ, float32 array of `shape`. Atoms are reproduced exactly (θ = loc). The draws do not
    depend on the padding: a law packed to any K ≥ its size gives the same θ.
  """
  return _sample_theta(law, key, tuple(int(s) for s in shape))


@functools.partial(jax.jit, static_argnums=(2,))
def _sample_theta(law: ParametricLaw, key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  chex.assert_rank(law.weight, 1)
  cum = jnp.cumsum(law.weight)
  cum = cum / cum[-1]
  u = jax.random.uniform(jax.random.fold_in(key, 0), shape, jnp.float32)
  comp = jnp.searchsorted(cum, u, side="right")
  last = jnp.max(jnp.where(law.weight > 0, jnp.arange(law.weight.shape[0]), 0))
  comp = jnp.minimum(comp, last)
  a, b = law.a[comp], law.b[comp]
  w = jax.random.beta(jax.random.fold_in(key, 1), a, b, shape=shape, dtype=jnp.float32)
  theta = law.loc[comp] + law.scale[comp] * w ** law.power[comp]
  # Atoms exactly (scale = 0 gives loc + 0 · w = loc, also for w = nan-free draws).
  theta = jnp.where(law.scale[comp] == 0, law.loc[comp], theta)
  return jnp.clip(theta, 0.5, 1.0)


def sample_lambda(law: ParametricLaw, key: jax.Array, shape: Sequence[int] = (), *,
                  symmetric: bool = True) -> jax.Array:
  """Draws λ: θ, flipped to 1 − θ with probability ½ when `symmetric` (THEORY.md §1).

  The flip makes λ's law symmetric about ½ with θ = max(λ, 1 − λ) ~ Q. With
  `symmetric=False` this returns θ itself (the folded draw).
  """
  theta = sample_theta(law, jax.random.fold_in(key, 0), shape)
  if not symmetric:
    return theta
  flip = jax.random.bernoulli(jax.random.fold_in(key, 1), 0.5, tuple(shape))
  return jnp.where(flip, 1.0 - theta, theta)


def as_sampler(law: ParametricLaw, *, symmetric: bool = True):
  """A `mixjax.samplers`-style callable `sampler(key, shape=()) -> λ` over packed arrays.

  Use it inside vmapped code (e.g. as the `sampler` of `mixjax.mixing.mix`), where the
  law's arrays are traced.
  """
  def sampler(key, shape=()):
    return sample_lambda(law, key, shape, symmetric=symmetric)
  return sampler


def stack_laws(laws: Sequence[Law], num_components: int | None = None) -> ParametricLaw:
  """Packs laws to a common K and stacks them: fields of shape (len(laws), K)."""
  if not laws:
    raise ValueError("stack_laws needs at least one law.")
  k = max([law.num_components for law in laws] + [num_components or 0])
  packed = [law.params(k) for law in laws]
  return jax.tree.map(lambda *xs: jnp.stack(xs), *packed)


# ----------------------------------------------------------------------------------------
# Constructors (registered by name, mirroring `mixjax.samplers.make_sampler`).


def _fmt(v: float) -> str:
  return f"{v:g}"


@LAWS.register("erm")
def erm() -> Law:
  """ERM: the atom θ = 1 (λ = 1 after folding; the mixed batch is the batch)."""
  return Law("ERM", (Component("atom", 1.0, 0.0, 1.0, 1.0, 1.0),), (1.0,))


@LAWS.register("constant")
def constant(lam: float) -> Law:
  """The atom θ = max(lam, 1 − lam) (same as `samplers.constant(lam)`)."""
  if not 0 <= lam <= 1:
    raise ValueError(f"constant(lam): lam must be in [0, 1]; got {lam}.")
  t = max(lam, 1 - lam)
  return Law(f"θ={_fmt(t)}", (Component("atom", t, 0.0, 1.0, 1.0, 1.0),), (1.0,))


@LAWS.register("beta")
def beta(alpha: float) -> Law:
  """λ ~ Beta(α, α), folded: θ = ½ + ½√W, W ~ Beta(½, α) (see module docstring)."""
  if not alpha > 0:
    raise ValueError(f"beta(alpha): alpha must be > 0; got {alpha}.")
  return Law(f"Beta({_fmt(alpha)})",
             (Component("folded_beta", 0.5, 0.5, 0.5, float(alpha), 0.5),), (1.0,))


@LAWS.register("uniform")
def uniform() -> Law:
  """λ ~ Uniform[0, 1] = Beta(1, 1)."""
  law = beta(1.0)
  return dataclasses.replace(law, label="Uniform")


@LAWS.register("w_shaped")
def w_shaped(a: float, b: float | None = None) -> Law:
  """W-shaped λ-law (THEORY.md §6): θ = ½ + X/2 with X ~ Beta(a, b) (b = a by default)."""
  b = a if b is None else b
  if not (a > 0 and b > 0):
    raise ValueError(f"w_shaped(a, b): a and b must be > 0; got a={a}, b={b}.")
  label = f"W({_fmt(a)})" if a == b else f"W({_fmt(a)},{_fmt(b)})"
  return Law(label, (Component("w_shaped", 0.5, 0.5, float(a), float(b), 1.0),), (1.0,))


@LAWS.register("atoms")
def atoms(points: Sequence[float], weights: Sequence[float] | None = None,
          label: str | None = None) -> Law:
  """A discrete θ-law on `points` ⊂ [½, 1] (equal weights by default)."""
  points = [float(p) for p in points]
  if not points:
    raise ValueError("atoms(points): need at least one point in [½, 1].")
  if any(not 0.5 <= p <= 1 for p in points):
    raise ValueError(f"atoms(points): θ-points must lie in [½, 1]; got {points}.")
  weights = [1 / len(points)] * len(points) if weights is None else [float(w) for w in weights]
  label = label or "atoms{" + ",".join(_fmt(round(p, 4)) for p in points) + "}"
  return Law(label, tuple(Component("atom", p, 0.0, 1.0, 1.0, 1.0) for p in points),
             tuple(weights))


@LAWS.register("mixture")
def mixture(laws: Sequence[Law], weights: Sequence[float], label: str | None = None) -> Law:
  """The mixture Σ_m weights[m] · laws[m] (components are concatenated)."""
  if len(laws) != len(weights) or not laws:
    raise ValueError("mixture(laws, weights): need as many weights as laws (≥ 1).")
  comps, ws = [], []
  for law, w in zip(laws, weights):
    comps += list(law.components)
    ws += [w * v for v in law.weights]
  label = label or "mix(" + ",".join(f"{_fmt(w)}·{l.label}" for l, w in zip(laws, weights)) + ")"
  return Law(label, tuple(comps), tuple(ws))


@LAWS.register("regmixup")
def regmixup(alpha: float, eta: float = 1.0) -> Law:
  """RegMixup(α, η) in expectation: θ = 1 w.p. 1/(1+η), folded Beta(α, α) otherwise.

  `alpha=math.inf` gives the α → ∞ limit, where the Beta part is the atom θ = ½.
  """
  if not eta > 0:
    raise ValueError(f"regmixup(alpha, eta): eta must be > 0; got {eta}.")
  part = atoms([0.5]) if math.isinf(alpha) else beta(alpha)
  law = mixture([erm(), part], [1 / (1 + eta), eta / (1 + eta)])
  a = "∞" if math.isinf(alpha) else _fmt(alpha)
  return dataclasses.replace(law, label=f"RegMixup({a},η={_fmt(eta)})")


@LAWS.register("optimal")
def optimal() -> Law:
  """The σ²/θ̄²-optimal law: θ = ½ w.p. 2/3, θ = 1 w.p. 1/3 (σ²/θ̄² = 1/8, THEORY.md §6)."""
  return atoms([0.5, 1.0], [2 / 3, 1 / 3], label="optimal")


def make_law(name: str, **params: Any) -> Law:
  """Builds a law by registry name (`LAWS`), e.g. `make_law("beta", alpha=0.2)`."""
  return LAWS.get(name)(**params)


def matched_atoms(mean: float, var: float, num_points: int = 2,
                  label: str | None = None) -> Law:
  """A discrete law with θ-mean `mean` and θ-variance `var` (for equal-moment tests).

  num_points=2: atoms mean ± √var, weight ½ each.
  num_points=3: atoms {½, mean, 2·mean − ½} with weights (p, 1 − 2p, p),
  p = var / (2 (mean − ½)²) (needs mean ≤ ¾ so that 2·mean − ½ ≤ 1).
  """
  if num_points == 2:
    s = math.sqrt(var)
    if mean - s < 0.5 - 1e-12 or mean + s > 1 + 1e-12:
      raise ValueError(f"matched_atoms: mean ± sd = {mean}±{s} leaves [½, 1].")
    return atoms([mean - s, mean + s], label=label or f"2 atoms (θ̄={_fmt(round(mean, 4))})")
  if num_points == 3:
    h = mean - 0.5
    p = var / (2 * h * h)
    if not (0 < p <= 0.5) or mean > 0.75 + 1e-12:
      raise ValueError(f"matched_atoms: cannot match mean={mean}, var={var} with 3 atoms.")
    return atoms([0.5, mean, mean + h], [p, 1 - 2 * p, p],
                 label=label or f"3 atoms (θ̄={_fmt(round(mean, 4))})")
  raise ValueError(f"matched_atoms: num_points must be 2 or 3; got {num_points}.")
