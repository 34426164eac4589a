"""λ laws for mixup: the samplers, their structured θ-laws, labels and the registry.

A *sampler* is a frozen (hashable, static-friendly) callable object

    lam = sampler(key, shape=())      # float32 in [0, 1], shape `shape`

that can be closed over in jitted code or passed as a static argument. Sampling uses
`jax.random` only (beta, bernoulli, categorical), so it is cheap inside a jitted step.

Samplers are also pytrees: their numeric parameters (α, β, λ, a, b, mixture weights)
are the leaves and their names are static metadata. Samplers of the same structure
(Beta(α) for several α; W-shaped laws; mixtures of the same components, such as
RegMixup-equivalent laws for several α) stack into one sampler with a leading axis on
every leaf (`stack`) that `jax.vmap` maps over, so one compiled program trains under
all of them (the draws are those of each sampler alone with the same key). Laws of
different structures cannot be stacked this way: `stack` says so, and they compile
separately (`structure` names a sampler's structure; the trainer's sweeps group points
by it).

By docs/THEORY.md §1 the mixup risk depends on the λ-law only through the law Q of
θ = max(λ, 1−λ) on [½, 1]. Every sampler therefore also describes Q structurally
(`sampler.theta_law()`), as a finite mixture of components:

- `Atom(theta)`: a point mass at θ;
- `FoldedBeta(a, b)`: θ = max(λ, 1−λ) with λ ~ Beta(a, b); θ-density p(θ) + p(1−θ) on
  [½, 1], p the Beta(a, b) density (singular at θ = 1 when min(a, b) < 1);
- `ShiftedBeta(a, b)`: θ = ½ + X/2 with X ~ Beta(a, b) (the "W-shaped" λ-law);
- `Unknown(sampler)`: a user law (`from_fn`), known through its draws and, when the user
  gives them, its exact θ̄ and σ² (no quadrature rule either way).

A user's own law reaches configs as "MODULE:FACTORY" (`make_sampler("mylaws.py:f",
**params)`, `--config.sampler.name=mylaws.py:f`): FACTORY(**params) returns a law,
usually `from_fn(draw, params=..., theta_mean=..., theta_var=...)` (docs/add_a_law.md).

Its moments are in `samplers.moments`, its quadrature rules in `samplers.quadrature`.
Each sampler has a `name` (e.g. 'beta(alpha=0.2)') and a short `label` for tables
(e.g. 'Beta(0.2)', 'W(0.5)', 'ERM', 'RegMixup(10,η=1)', 'optimal').
"""
from __future__ import annotations

import dataclasses
import inspect
import math
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mixjax.registry import Registry
from mixjax.registry import is_entry_point
from mixjax.registry import load_entry_point

Shape = tuple[int, ...]

_WEIGHT_SUM_TOL = 1e-6


# ---------------------------------------------------------------------------
# Structured description of the θ-law.
# ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Atom:
  """A point mass of θ at `theta` ∈ [½, 1]."""
  theta: float


@dataclasses.dataclass(frozen=True)
class FoldedBeta:
  """θ = max(λ, 1−λ), λ ~ Beta(a, b): density p(θ) + p(1−θ) on [½, 1]."""
  a: float
  b: float


@dataclasses.dataclass(frozen=True)
class ShiftedBeta:
  """θ = ½ + X/2 with X ~ Beta(a, b): density 2·p_X(2θ − 1) on [½, 1]."""
  a: float
  b: float


@dataclasses.dataclass(frozen=True)
class Unknown:
  """A θ-law known through the draws of `sampler` (a `from_fn` sampler), and through
  its exact θ̄ and σ² when `sampler.theta_mean` is set."""
  sampler: "Sampler"


@dataclasses.dataclass(frozen=True)
class ThetaLaw:
  """Q = Σ_k weights[k] · components[k] (weights ≥ 0, summing to 1)."""
  weights: tuple[float, ...]
  components: tuple[Any, ...]

  @property
  def is_known(self) -> bool:
    """True when every component has closed-form moments and a quadrature rule."""
    return not any(isinstance(c, Unknown) for c in self.components)


# ---------------------------------------------------------------------------
# Samplers.
# ---------------------------------------------------------------------------
def _fmt(x: float) -> str:
  return repr(float(x))


def _as_shape(shape) -> Shape:
  if isinstance(shape, (int, np.integer)):
    return (int(shape),)
  return tuple(int(s) for s in shape)


class Sampler:
  """Base class of λ-laws: `sampler(key, shape=()) -> λ` (float32 in [0, 1]).

  Mask laws (`samplers.masks`) share this base with `is_mask = True`; every λ-law is
  the constant mask M = λ·1 (`masks`).
  """

  is_mask = False

  def __call__(self, key: jax.Array, shape: Sequence[int] | int = ()) -> jax.Array:
    """Draws λ of shape `shape` (float32, in [0, 1]) from the PRNG `key`."""
    return self._sample(key, _as_shape(shape))

  def masks(self, key: jax.Array, batch_size: int, hw: Sequence[int]
            ) -> tuple[jax.Array, jax.Array]:
    """The λ-law as a mask law: constant masks M = λ·1 (B, H, W) and λ (B,), with λ
    drawn as `self(key, (batch_size,))` (docs/THEORY.md §8)."""
    lam = self(key, (int(batch_size),))
    h, w = (int(v) for v in hw)
    return jnp.broadcast_to(lam[:, None, None], (lam.shape[0], h, w)), lam

  def _sample(self, key: jax.Array, shape: Shape) -> jax.Array:
    raise NotImplementedError

  def theta_law(self) -> ThetaLaw:
    """The law of θ = max(λ, 1−λ), as a mixture of structured components."""
    raise NotImplementedError

  def _default_name(self) -> str:
    raise NotImplementedError

  def _default_label(self) -> str:
    return self.name

  @property
  def name(self) -> str:
    """A readable name, e.g. 'beta(alpha=1.0)' or 'regmixup(alpha=1.0, eta=1.0)'."""
    title = getattr(self, "title", None)
    if title:
      return title
    if not all(_concrete(v) for v in jax.tree.leaves(self)):
      return f"{type(self).__name__}(array parameters)"  # stacked or traced
    return self._default_name()

  @property
  def label(self) -> str:
    """A short label for tables and figures, e.g. 'Beta(0.2)', 'W(0.5)', 'ERM',
    'RegMixup(10,η=1)', 'optimal' (`relabel` sets another)."""
    tag = getattr(self, "tag", None)
    if tag:
      return tag
    if not all(_concrete(v) for v in jax.tree.leaves(self)):
      return self.name
    return self._default_label()

  def relabel(self, label: str) -> "Sampler":
    """The same law with another `label` (equal to this one: labels do not compare)."""
    return dataclasses.replace(self, tag=label)

  def __repr__(self) -> str:
    return self.name



# The θ-moments a study records per law (fields of `ThetaMoments`).
MOMENT_FIELDS = ("mean", "var", "gamma2", "strength", "global_strength")


def _concrete(x) -> bool:
  """A Python / NumPy number (not a traced leaf of a vmapped sampler)."""
  return isinstance(x, (int, float, np.integer, np.floating))


def _g(v: float) -> str:
  return "∞" if math.isinf(v) else f"{v:g}"


def _label_field():
  # Titles and tags only change the names: samplers of equal laws compare (and hash)
  # equal, and they are static (pytree metadata), never traced.
  return dataclasses.field(default=None, compare=False)


@dataclasses.dataclass(frozen=True, repr=False)
class Beta(Sampler):
  """λ ~ Beta(alpha, beta). θ-law: `FoldedBeta(alpha, beta)`."""
  alpha: float
  beta: float
  title: str | None = _label_field()
  tag: str | None = _label_field()

  def _sample(self, key, shape):
    # Beta(1, 1) = Uniform[0, 1]: `jax.random.uniform` (a Beta draw costs a gamma
    # rejection loop). Traced parameters (a stacked sampler, vmapped) take the same
    # uniform draw where α = β = 1, so a stacked Beta(1, 1) draws what it draws alone.
    # jax.random.beta works in log space: no NaN for small α (e.g. 0.01).
    if _concrete(self.alpha) and _concrete(self.beta):
      if self.alpha == self.beta == 1.0:
        lam = jax.random.uniform(key, shape, jnp.float32)
      else:
        lam = jax.random.beta(key, self.alpha, self.beta, shape, jnp.float32)
    else:
      one = (jnp.asarray(self.alpha) == 1.0) & (jnp.asarray(self.beta) == 1.0)
      lam = jnp.where(one, jax.random.uniform(key, shape, jnp.float32),
                      jax.random.beta(key, self.alpha, self.beta, shape, jnp.float32))
    return jnp.clip(lam, 0.0, 1.0)

  def theta_law(self):
    return ThetaLaw((1.0,), (FoldedBeta(self.alpha, self.beta),))

  def _default_name(self):
    if self.alpha == self.beta:
      return f"beta(alpha={_fmt(self.alpha)})"
    return f"beta(alpha={_fmt(self.alpha)}, beta={_fmt(self.beta)})"

  def _default_label(self):
    if self.alpha == self.beta:
      return f"Beta({_g(self.alpha)})"
    return f"Beta({_g(self.alpha)},{_g(self.beta)})"


@dataclasses.dataclass(frozen=True, repr=False)
class Constant(Sampler):
  """λ = lam always. θ-law: `Atom(max(lam, 1 − lam))`."""
  lam: float
  title: str | None = _label_field()
  tag: str | None = _label_field()

  def _sample(self, key, shape):
    del key
    return jnp.full(shape, self.lam, jnp.float32)

  def theta_law(self):
    return ThetaLaw((1.0,), (Atom(max(self.lam, 1.0 - self.lam)),))

  def _default_name(self):
    return f"constant(lam={_fmt(self.lam)})"

  def _default_label(self):
    t = max(self.lam, 1.0 - self.lam)
    return "ERM" if t == 1.0 else f"θ={_g(t)}"


@dataclasses.dataclass(frozen=True, repr=False)
class WShaped(Sampler):
  """θ = ½ + X/2, X ~ Beta(a, b); λ = θ or 1 − θ with probability ½ each.

  For a, b < 1 the λ-density is "W-shaped" (MetaMixup); θ-law: `ShiftedBeta(a, b)`.
  """
  a: float
  b: float
  title: str | None = _label_field()
  tag: str | None = _label_field()

  def _sample(self, key, shape):
    k_x, k_flip = jax.random.split(key)
    x = jnp.clip(jax.random.beta(k_x, self.a, self.b, shape, jnp.float32), 0.0, 1.0)
    theta = 0.5 + 0.5 * x
    flip = jax.random.bernoulli(k_flip, 0.5, shape)
    return jnp.where(flip, 1.0 - theta, theta).astype(jnp.float32)

  def theta_law(self):
    return ThetaLaw((1.0,), (ShiftedBeta(self.a, self.b),))

  def _default_name(self):
    return f"w_shaped(a={_fmt(self.a)}, b={_fmt(self.b)})"

  def _default_label(self):
    return f"W({_g(self.a)})" if self.a == self.b else f"W({_g(self.a)},{_g(self.b)})"


@dataclasses.dataclass(frozen=True, repr=False)
class Mixture(Sampler):
  """λ ~ samplers[k] with probability weights[k] (k drawn per element, categorical)."""
  samplers: tuple[Sampler, ...]
  weights: tuple[float, ...]
  title: str | None = _label_field()
  tag: str | None = _label_field()

  def _sample(self, key, shape):
    active = [(w, s) for w, s in zip(self.weights, self.samplers)
              if not _concrete(w) or w > 0]
    if len(active) == 1:
      return active[0][1](key, shape)
    k_idx, k_draw = jax.random.split(key)
    logits = jnp.log(jnp.asarray([w for w, _ in active], jnp.float32))
    idx = jax.random.categorical(k_idx, logits, shape=shape)
    draws = jnp.stack(
        [s(jax.random.fold_in(k_draw, i), shape) for i, (_, s) in enumerate(active)])
    return jnp.take_along_axis(draws, idx[None], axis=0)[0]

  def theta_law(self):
    weights, components = [], []
    for w, s in zip(self.weights, self.samplers):
      if w <= 0:
        continue
      sub = s.theta_law()
      weights += [w * v for v in sub.weights]
      components += list(sub.components)
    return ThetaLaw(tuple(weights), tuple(components))

  def _default_name(self):
    parts = ", ".join(repr(s) for s in self.samplers)
    ws = ", ".join(f"{w:.6g}" for w in self.weights)
    return f"mixture([{parts}], [{ws}])"

  def _default_label(self):
    return "mix(" + ",".join(f"{_g(round(w, 4))}·{s.label}"
                             for s, w in zip(self.samplers, self.weights)) + ")"


@dataclasses.dataclass(frozen=True, repr=False)
class FromFn(Sampler):
  """A user law `fn(key, shape, **params) -> λ` (`from_fn`); its θ-law is known only
  through draws, and its θ-moments are exact when given (`theta_mean`, `theta_var`).

  Pytree: the parameter values (`values`, named by `keys`) and the given moments are the
  leaves, `fn` and the names are static; laws of one `fn` with the same parameter names
  stack and vmap like Beta(α) for several α.

  Range checks: an eager call (outside `jit`) raises a ValueError when a draw is outside
  [0, 1] or not finite; inside `jit` no check is possible without `checkify`, so call
  `validate(sampler)` once eagerly (`theta_moments` also checks its draws).
  """
  fn: Callable[..., Any]
  values: tuple[Any, ...] = ()
  keys: tuple[str, ...] = ()
  theta_mean: Any = None
  theta_var: Any = None
  title: str | None = _label_field()
  tag: str | None = _label_field()

  def _sample(self, key, shape):
    lam = jnp.asarray(self.fn(key, shape, **dict(zip(self.keys, self.values))))
    if lam.shape != shape:
      raise ValueError(
          f"{self.name}: fn(key, shape={shape}) returned shape {lam.shape}; it must "
          "return exactly `shape` (one λ per element).")
    lam = lam.astype(jnp.float32)
    if not isinstance(lam, jax.core.Tracer):
      _check_lambda_values(np.asarray(lam), self)
    return lam

  def theta_law(self):
    return ThetaLaw((1.0,), (Unknown(self),))

  def _fn_name(self) -> str:
    return getattr(self.fn, "__name__", repr(self.fn))

  def _default_name(self):
    kv = "".join(f", {k}={_fmt(v)}" for k, v in zip(self.keys, self.values))
    return f"from_fn({self._fn_name()}{kv})"

  def _default_label(self):
    if not self.keys:
      return self.name
    return f"{self._fn_name()}({','.join(_g(float(v)) for v in self.values)})"


def _check_lambda_values(lam: np.ndarray, sampler: Sampler) -> None:
  """Raises a ValueError when draws are non-finite or outside [0, 1]."""
  lam = np.asarray(lam)
  if lam.size == 0:
    return
  bad = ~np.isfinite(lam) | (lam < 0.0) | (lam > 1.0)
  if np.any(bad):
    vals = lam[bad].ravel()
    raise ValueError(
        f"Sampler {sampler.name} returned λ outside [0, 1] ({int(bad.sum())} of "
        f"{lam.size} draws, e.g. {vals[:3].tolist()}). A mixing coefficient must lie in "
        "[0, 1]: fix fn, or clip its output with jnp.clip(lam, 0.0, 1.0).")


# ---------------------------------------------------------------------------
# Constructors (validated).
# ---------------------------------------------------------------------------
def _positive(name: str, value, what: str) -> float:
  try:
    v = float(value)
  except (TypeError, ValueError):
    raise ValueError(f"{what}: {name} must be a finite number > 0, got {value!r}.") from None
  if not math.isfinite(v) or v <= 0.0:
    raise ValueError(
        f"{what}: {name} must be a finite number > 0, got {value!r}. Beta parameters are "
        "shape parameters (e.g. alpha=0.2 or 1.0); use constant(lam) for a fixed λ.")
  return v


def beta(alpha: float, beta: float | None = None) -> Beta:  # pylint: disable=redefined-outer-name
  """λ ~ Beta(alpha, beta); symmetric Beta(alpha, alpha) when `beta` is None."""
  a = _positive("alpha", alpha, "beta sampler")
  b = a if beta is None else _positive("beta", beta, "beta sampler")
  return Beta(a, b)


def uniform() -> Beta:
  """λ ~ Uniform[0, 1] = Beta(1, 1): θ̄ = ¾, σ² = 1/48, σ²/θ̄² = 1/27."""
  return Beta(1.0, 1.0, title="uniform()", tag="Uniform")


def constant(lam: float) -> Constant:
  """λ = lam (a point mass; θ = max(lam, 1 − lam))."""
  try:
    v = float(lam)
  except (TypeError, ValueError):
    raise ValueError(f"constant sampler: lam must be a number in [0, 1], got {lam!r}.") from None
  if not (math.isfinite(v) and 0.0 <= v <= 1.0):
    raise ValueError(
        f"constant sampler: lam must lie in [0, 1], got {lam!r} (λ = 1 means no mixing).")
  return Constant(v)


def w_shaped(a: float, b: float | None = None) -> WShaped:
  """θ = ½ + X/2 with X ~ Beta(a, b), λ = θ or 1 − θ w.p. ½ (σ²/θ̄² = Var X/(1+E X)²);
  b = a when omitted."""
  a = _positive("a", a, "w_shaped sampler")
  return WShaped(a, a if b is None else _positive("b", b, "w_shaped sampler"))


def _as_sampler(spec) -> Sampler:
  """A Sampler, a registry name, a (name, params) pair or a {'name': ..., **params} dict."""
  if isinstance(spec, Sampler):
    return spec
  if isinstance(spec, str):
    return make_sampler(spec)
  if isinstance(spec, Mapping) or hasattr(spec, "items"):
    params = dict(spec.items())
    if "name" not in params:
      raise ValueError(
          f"A sampler spec given as a mapping needs a 'name' key, got {params!r}.")
    return make_sampler(params.pop("name"), **params)
  if isinstance(spec, (tuple, list)) and len(spec) == 2 and isinstance(spec[0], str):
    name, params = spec
    params = {} if params is None else dict(params.items())
    return make_sampler(name, **params)
  raise ValueError(
      f"Cannot build a sampler from {spec!r}: give a Sampler, a registered name, or a "
      f"(name, params) pair. Known samplers: {', '.join(SAMPLERS.names())}.")


def mixture(samplers: Sequence[Any], weights: Sequence[float]) -> Mixture:
  """λ ~ samplers[k] with probability weights[k].

  Args:
    samplers: Samplers, or specs `(name, params)` / names (see `make_sampler`).
    weights: probabilities, ≥ 0, summing to 1 (within 1e-6), one per sampler.
  """
  samplers = [_as_sampler(s) for s in samplers]
  weights = [float(w) for w in np.asarray(weights, np.float64).ravel()]
  if not samplers:
    raise ValueError("mixture: needs at least one sampler (got an empty list).")
  masks = [s.label for s in samplers if s.is_mask]
  if masks:
    raise ValueError(
        f"mixture: {', '.join(masks)} is a mask law; a mixture mixes λ-laws. Combine a "
        "mask law with another law by samplers.switch(law_a, law_b, p).")
  if len(samplers) != len(weights):
    raise ValueError(
        f"mixture: got {len(samplers)} samplers but {len(weights)} weights; give one "
        "weight per sampler.")
  if any(not math.isfinite(w) or w < 0.0 for w in weights):
    raise ValueError(f"mixture: weights must be finite and ≥ 0, got {weights}.")
  total = sum(weights)
  if abs(total - 1.0) > _WEIGHT_SUM_TOL:
    raise ValueError(
        f"mixture: weights must sum to 1 (within {_WEIGHT_SUM_TOL:g}), got sum {total!r}; "
        "normalize them, e.g. weights / sum(weights).")
  weights = [w / total for w in weights]
  return Mixture(tuple(samplers), tuple(weights))


def regmixup_equivalent(sampler: Any, eta: float) -> Mixture:
  """The law that RegMixup with mixing law `sampler` is mixup under, in expectation.

  RegMixup minimizes E ℓ(y, f(x)) + η · E_λ ℓ(mixup), which is (1+η) times the mixup
  risk of the mixture (docs/THEORY.md §6)

      λ = 1 with probability 1/(1+η)   (the clean term; θ = 1),
      λ ~ sampler with probability η/(1+η),

  so its θ-law puts mass 1/(1+η) at θ = 1 and θ̄ = (1 + η θ̄_sampler)/(1+η). η = 0 is
  ERM (θ = 1 surely). For a mask law it is the switch to `sampler` with probability
  η/(1+η) from the constant mask 1 (`samplers.switch`).

  Args:
    sampler: the λ-law of the mixup term (a Sampler or a spec, see `mixture`).
    eta: η ≥ 0, the weight of the mixup term.
  """
  try:
    e = float(eta)
  except (TypeError, ValueError):
    e = float("nan")
  if not math.isfinite(e) or e < 0.0:
    raise ValueError(f"regmixup sampler: eta must be a finite number ≥ 0, got {eta!r}.")
  sampler = _as_sampler(sampler)
  if sampler.is_mask:
    return SAMPLERS.get("switch")(Constant(1.0), sampler, e / (1.0 + e))
  return mixture([Constant(1.0), sampler], [1.0 / (1.0 + e), e / (1.0 + e)])


def regmixup(alpha: float, eta: float = 1.0) -> Mixture:
  """RegMixup's law with λ ~ Beta(α, α): `regmixup_equivalent(beta(α), η)` (docs/THEORY.md §6).

  θ = 1 with probability 1/(1+η) (the clean CE term), else λ ~ Beta(α, α);
  `alpha=math.inf` is the α → ∞ limit, λ = ½. Note the loss itself is (1+η) times the
  mixup risk of this law.
  """
  if isinstance(alpha, (int, float)) and math.isinf(alpha) and alpha > 0:
    a, part = math.inf, Constant(0.5)  # the α → ∞ limit: λ = ½ surely
  else:
    a = _positive("alpha", alpha, "regmixup sampler")
    part = Beta(a, a)
  mix = regmixup_equivalent(part, eta)
  return dataclasses.replace(mix, title=f"regmixup(alpha={_fmt(a)}, eta={_fmt(float(eta))})",
                             tag=f"RegMixup({_g(a)},η={_g(float(eta))})")


def optimal() -> Mixture:
  """θ = ½ w.p. 2/3, θ = 1 w.p. 1/3: the Bhatia–Davis optimum σ²/θ̄² = 1/8 (docs/THEORY.md §6)."""
  mix = mixture([Constant(0.5), Constant(1.0)], [2.0 / 3.0, 1.0 / 3.0])
  return dataclasses.replace(mix, title="optimal()", tag="optimal")


def erm() -> Constant:
  """ERM as a law: λ = 1 (θ = 1), so the mixed batch is the batch exactly."""
  return Constant(1.0, tag="ERM")


def atoms(points: Sequence[float], weights: Sequence[float] | None = None,
          label: str | None = None) -> Mixture:
  """A discrete θ-law on `points` ⊂ [½, 1] (equal weights by default): λ = θ_k with
  probability weights[k] (the λ-law of `constant(θ_k)` components)."""
  points = [float(p) for p in points]
  if not points:
    raise ValueError("atoms(points): need at least one point in [½, 1].")
  if any(not 0.5 <= p <= 1 for p in points):
    raise ValueError(f"atoms(points): θ-points must lie in [½, 1]; got {points}.")
  weights = ([1 / len(points)] * len(points) if weights is None
             else [float(w) for w in weights])
  mix = mixture([Constant(p) for p in points], weights)
  tag = label or "atoms{" + ",".join(_g(round(p, 4)) for p in points) + "}"
  return dataclasses.replace(mix, tag=tag)


def matched_atoms(mean: float, var: float, num_points: int = 2,
                  label: str | None = None) -> Mixture:
  """A discrete θ-law with θ-mean `mean` and θ-variance `var` (equal-moment comparisons).

  num_points=2: atoms mean ± √var, weight ½ each.
  num_points=3: atoms {½, mean, 2·mean − ½} with weights (p, 1 − 2p, p),
  p = var / (2 (mean − ½)²) (needs mean ≤ ¾ so that 2·mean − ½ ≤ 1).
  """
  if num_points == 2:
    s = math.sqrt(var)
    if mean - s < 0.5 - 1e-12 or mean + s > 1 + 1e-12:
      raise ValueError(f"matched_atoms: mean ± sd = {mean}±{s} leaves [½, 1].")
    return atoms([mean - s, mean + s], label=label or f"2 atoms (θ̄={_g(round(mean, 4))})")
  if num_points == 3:
    h = mean - 0.5
    p = var / (2 * h * h)
    if not (0 < p <= 0.5) or mean > 0.75 + 1e-12:
      raise ValueError(f"matched_atoms: cannot match mean={mean}, var={var} with 3 atoms.")
    return atoms([0.5, mean, mean + h], [p, 1 - 2 * p, p],
                 label=label or f"3 atoms (θ̄={_g(round(mean, 4))})")
  raise ValueError(f"matched_atoms: num_points must be 2 or 3; got {num_points}.")


def from_fn(fn: Callable[..., Any], name: str | None = None, *,
            params: Mapping[str, float] | None = None, theta_mean: float | None = None,
            theta_var: float | None = None) -> FromFn:
  """A user law: λ = fn(key, shape, **params), float32 in [0, 1] of shape `shape`.

  Args:
    fn: draws λ from a PRNG key, with `jax.random` (it runs inside jitted, vmapped
      steps). Define it at module level: laws compare equal (and vmap together) only
      when their `fn` is the same object.
    name: the law's name in tables (default: `fn.__name__`).
    params: numbers passed to `fn` as keyword arguments: the law's pytree leaves, so laws
      of one `fn` that differ only in them stack into one vmapped program (inside it
      they are traced float32 scalars: compute with `jnp` on them).
    theta_mean: θ̄ = E θ of θ = max(λ, 1 − λ) (not the mean of λ), in [½, 1], when the
      law has a closed form; give `theta_var` with it.
    theta_var: σ² = Var θ, in [0, (θ̄ − ½)(1 − θ̄)] (the Bhatia–Davis bound on [½, 1]).

  With `theta_mean` and `theta_var` its θ-moments are exact (`theta_moments(...).exact`;
  γ² = σ² + (1 − θ̄)²) and `validate` checks them against its draws; without them they are
  Monte-Carlo estimates with standard errors. It has no quadrature rule unless
  `theta_quadrature(..., empirical=True)` is requested.
  """
  if not callable(fn):
    raise ValueError(f"from_fn: fn must be callable as fn(key, shape) -> λ, got {fn!r}.")
  try:
    hash(fn)
  except TypeError:
    raise ValueError(
        f"from_fn: fn must be hashable (samplers are static under jit), got {fn!r}; wrap "
        "it in a plain function.") from None
  params = dict(params or {})
  values = []
  for k, v in params.items():
    if isinstance(v, bool) or not _concrete(v) or not math.isfinite(float(v)):
      raise ValueError(
          f"from_fn: params[{k!r}]={v!r} must be a finite number (params are the law's "
          "pytree leaves); put anything else in fn itself.")
    values.append(float(v))
  if (theta_mean is None) != (theta_var is None):
    raise ValueError("from_fn: give both theta_mean and theta_var (θ̄ and σ² of "
                     "θ = max(λ, 1 − λ)), or neither (Monte-Carlo moments).")
  if theta_mean is not None:
    theta_mean, theta_var = float(theta_mean), float(theta_var)
    if not 0.5 <= theta_mean <= 1.0:
      raise ValueError(
          f"from_fn: theta_mean={theta_mean!r} must lie in [0.5, 1]: it is E max(λ, 1 − λ), "
          "not the mean of λ.")
    bound = (theta_mean - 0.5) * (1.0 - theta_mean)
    if not -1e-12 <= theta_var <= bound + 1e-12:  # (rounding of a closed form allowed)
      raise ValueError(
          f"from_fn: theta_var={theta_var!r} must lie in [0, (θ̄ − ½)(1 − θ̄)] = [0, "
          f"{bound:.6g}] for theta_mean={theta_mean!r}: it is Var max(λ, 1 − λ).")
    theta_var = min(max(theta_var, 0.0), bound)
  law = FromFn(fn, tuple(values), tuple(params), theta_mean, theta_var)
  if name is not None:
    kv = "".join(f", {k}={_fmt(v)}" for k, v in zip(law.keys, law.values))
    law = dataclasses.replace(
        law, title=f"from_fn({name}{kv})",
        tag=f"{name}({','.join(_g(v) for v in law.values)})" if law.keys else None)
  return law


def validate(sampler: Sampler, key: jax.Array | None = None,
             shape: Sequence[int] | int = (4096,)) -> Sampler:
  """Eagerly checks a sampler; returns it unchanged.

  Draws `shape` values under `jit` (the way a train step would) and raises a ValueError
  unless they are float32, of shape `shape`, finite and within [0, 1]. A mask law draws
  `shape[0]` masks on a 16×16 grid instead: masks (B, 16, 16) and λ (B,), float32 in
  [0, 1]. A `from_fn` law with given moments also draws 2¹⁶ values and checks θ̄ and σ²
  against their sample estimates (within 6 standard errors). Use it once on user laws
  (`from_fn`, MODULE:FACTORY) before a jitted run, where no range check is possible.
  """
  if not isinstance(sampler, Sampler):
    raise ValueError(f"validate: expected a Sampler, got {sampler!r}.")
  shape = _as_shape(shape)
  key = jax.random.key(0) if key is None else key
  if sampler.is_mask:
    return _validate_masks(sampler, key, shape[0] if shape else 1)
  lam = jax.jit(lambda k: sampler(k, shape))(key)
  if lam.shape != shape or lam.dtype != jnp.float32:
    raise ValueError(
        f"Sampler {sampler.name} returned {lam.dtype}{lam.shape}; expected float32{shape}.")
  _check_lambda_values(np.asarray(lam), sampler)
  if isinstance(sampler, FromFn) and sampler.theta_mean is not None:
    _check_given_moments(sampler, key)
  return sampler


_MASK_GRID = (16, 16)


def _validate_masks(law: Sampler, key: jax.Array, batch_size: int) -> Sampler:
  """`validate` for a mask law: `batch_size` masks on a 16×16 grid under jit."""
  masks, lam = jax.jit(lambda k: law.masks(k, batch_size, _MASK_GRID))(key)
  want = ((batch_size,) + _MASK_GRID, (batch_size,))
  if (masks.shape, lam.shape) != want or masks.dtype != jnp.float32 \
      or lam.dtype != jnp.float32:
    raise ValueError(
        f"Mask law {law.label}: masks(key, {batch_size}, {_MASK_GRID}) returned "
        f"{masks.dtype}{masks.shape} and {lam.dtype}{lam.shape}; expected float32"
        f"{want[0]} masks and float32{want[1]} λ.")
  _check_lambda_values(np.asarray(masks), law)
  _check_lambda_values(np.asarray(lam), law)
  return law


_MOMENT_CHECK_DRAWS = 2**16


def _check_given_moments(law: FromFn, key: jax.Array) -> None:
  """θ̄ and σ² given to `from_fn` against their sample estimates from 2¹⁶ draws: a
  ValueError beyond 6 standard errors (+1e-6 for float32 draws of a point mass)."""
  lam = np.asarray(jax.jit(lambda k: law(k, (_MOMENT_CHECK_DRAWS,)))(key), np.float64)
  theta = np.maximum(lam, 1.0 - lam)
  n, mean, var = theta.size, float(theta.mean()), float(theta.var())
  se_mean = math.sqrt(var / n)
  se_var = math.sqrt(max(float(np.mean((theta - mean) ** 4)) - var * var, 0.0) / n)
  if (abs(mean - law.theta_mean) > 6 * se_mean + 1e-6
      or abs(var - law.theta_var) > 6 * se_var + 1e-6):
    raise ValueError(
        f"Sampler {law.name}: the given theta_mean={law.theta_mean:.6g}, theta_var="
        f"{law.theta_var:.6g} do not match its draws (θ̄ = {mean:.6g} ± {se_mean:.2g}, "
        f"σ² = {var:.6g} ± {se_var:.2g} from {n} draws). They are the moments of "
        "θ = max(λ, 1 − λ), not of λ: fix them or leave them out (Monte Carlo).")



# ---------------------------------------------------------------------------
# Registry.
# ---------------------------------------------------------------------------
SAMPLERS = Registry("sampler")
SAMPLERS.register("beta", beta)
SAMPLERS.register("uniform", uniform)
SAMPLERS.register("constant", constant)
SAMPLERS.register("w_shaped", w_shaped)
SAMPLERS.register("mixture", mixture)
SAMPLERS.register("regmixup", regmixup)
SAMPLERS.register("optimal", optimal)
SAMPLERS.register("atoms", atoms)
SAMPLERS.register("from_fn", from_fn)
SAMPLERS.register("erm", erm)
SAMPLERS.register("matched_atoms", matched_atoms)


def sampler_factory(name: str) -> Callable[..., Sampler]:
  """The factory a sampler name stands for: a registered name (`SAMPLERS`), or
  "MODULE:FACTORY", a user's own factory (`mixjax.registry.load_entry_point`: MODULE a
  `.py` file or an importable module).

  Raises:
    ValueError (one line): an unknown name (the known ones, the closest, and the
      MODULE:FACTORY form), or a MODULE:FACTORY that cannot be loaded (no such file,
      module or attribute; the module raised on import; not callable).
  """
  if is_entry_point(name):
    factory = load_entry_point(name)
    if not callable(factory):
      raise ValueError(f"{name!r} is a {type(factory).__name__}, not a factory: name a "
                       "function that takes the law's parameters and returns a law.")
    return factory
  try:
    return SAMPLERS.get(name)
  except ValueError as e:
    raise ValueError(f"{e} Your own law: FILE.py:FACTORY (docs/add_a_law.md).") from None


def parameters_hint(name: str) -> str:
  """What the factory of sampler `name` takes, from its signature: "beta takes alpha,
  beta=None", "optimal takes no parameters"; "" when it cannot be loaded."""
  try:
    sig = inspect.signature(sampler_factory(name))
  except (TypeError, ValueError):
    return ""
  parts = [p.name if p.default is inspect.Parameter.empty else f"{p.name}={p.default!r}"
           for p in sig.parameters.values()
           if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
  return f"{name} takes {', '.join(parts) if parts else 'no parameters'}"


def _one_line(e: BaseException) -> str:
  lines = [l.strip() for l in str(e).splitlines() if l.strip()]
  return (lines[-1] if lines else type(e).__name__).rstrip(".")


def make_sampler(name: str | Sampler, **params) -> Sampler:
  """Builds a sampler by registry name, e.g. `make_sampler("beta", alpha=1.0)`, or by
  "MODULE:FACTORY", a user's factory called with `params` as keyword arguments, e.g.
  `make_sampler("mylaws.py:trunc_normal", mu=0.8, sigma=0.1)` (`sampler_factory`).

  `make_sampler("mixture", samplers=[("beta", {"alpha": 1.0}), ("constant", {"lam": 1.0})],
  weights=[0.5, 0.5])` builds mixtures from (name, params) specs. A Sampler passes through.

  Raises:
    ValueError (one line): an unknown name, parameters the factory does not take (its
      parameters are named), impossible values, a user factory that raises or returns
      something that is not a law. Values are checked by `validate`, not here.
  """
  if isinstance(name, Sampler):
    if params:
      raise ValueError(f"make_sampler: got a Sampler ({name}) and extra params {params}.")
    return name
  factory = sampler_factory(name)
  try:
    sig = inspect.signature(factory)
  except (TypeError, ValueError):  # a callable without a signature: call it as is
    sig = None
  if sig is not None:
    try:
      sig.bind(**params)
    except TypeError as e:
      raise ValueError(
          f"Sampler {name!r} takes parameters ({', '.join(sig.parameters)}), got "
          f"{sorted(params)}: {e}.") from None
  if not is_entry_point(name):
    return factory(**params)
  try:
    law = factory(**params)
  except Exception as e:  # pylint: disable=broad-except  (the user's factory raised)
    raise ValueError(f"{name}({', '.join(f'{k}={v!r}' for k, v in params.items())}) "
                     f"raised {type(e).__name__}: {_one_line(e)}.") from e
  if not isinstance(law, Sampler):
    raise ValueError(
        f"{name} returned {type(law).__name__}, not a law: return a mixjax.samplers law, "
        "e.g. samplers.from_fn(draw, params=...) or samplers.beta(...).")
  return law


# ---------------------------------------------------------------------------
# Pytrees: numeric parameters are leaves, names are metadata.
# ---------------------------------------------------------------------------
_DATA_FIELDS = {Beta: ("alpha", "beta"), Constant: ("lam",), WShaped: ("a", "b"),
                Mixture: ("samplers", "weights"),
                FromFn: ("values", "theta_mean", "theta_var")}
for _cls, _data in _DATA_FIELDS.items():
  jax.tree_util.register_dataclass(
      _cls, data_fields=list(_data),
      meta_fields=[f.name for f in dataclasses.fields(_cls) if f.name not in _data])


def _unlabelled(sampler: Sampler) -> Sampler:
  kw = {"title": None, "tag": None}
  if isinstance(sampler, Mixture):
    kw["samplers"] = tuple(_unlabelled(s) for s in sampler.samplers)
  for part in ("law_a", "law_b"):  # a mask-law switch (samplers.masks.Switch)
    if hasattr(sampler, part):
      kw[part] = _unlabelled(getattr(sampler, part))
  return dataclasses.replace(sampler, **kw)


def structure(sampler: Sampler) -> str:
  """The sampler's structure without its numeric values (its pytree structure, labels
  dropped): samplers with equal structures can be `stack`ed into one vmapped program."""
  return str(jax.tree.structure(_unlabelled(_check(sampler))))


def stack(samplers: Sequence[Sampler]) -> Sampler:
  """Samplers of one structure as one sampler whose leaves have a leading axis (L, ...)
  (float32), for `jax.vmap(lambda s, k: s(k, shape))(stacked, keys)`. Names and labels
  are dropped (they are static and may differ).

  Raises:
    ValueError: the samplers differ in structure (e.g. Beta and a mixture, or mixtures
      of different components): they cannot share one vmapped program; compile them
      separately (one stack per structure, `structure`).
  """
  samplers = [_unlabelled(_check(s)) for s in samplers]
  if not samplers:
    raise ValueError("stack: needs at least one sampler.")
  # Compare the printed structures: PyTreeDefs of different dataclasses with the same
  # fields compare equal (e.g. Beta and WShaped), their printed forms name the class.
  defs = [str(jax.tree.structure(s)) for s in samplers]
  for s, d in zip(samplers, defs):
    if d != defs[0]:
      raise ValueError(
          f"stack: {samplers[0].name} and {s.name} have different structures, so one "
          "vmapped program cannot sample both; compile them separately (one stack per "
          "structure).")
  return jax.tree.map(lambda *xs: jnp.asarray(xs, jnp.float32), *samplers)


def _check(sampler) -> Sampler:
  if not isinstance(sampler, Sampler):
    raise ValueError(
        f"Expected a Sampler (e.g. samplers.beta(1.0) or make_sampler('beta', alpha=1.0)), "
        f"got {sampler!r}.")
  return sampler
