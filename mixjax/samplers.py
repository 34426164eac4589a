"""λ laws for mixup: sampling, θ-moments and θ-quadrature (THEORY.md §1 and §6).

A *sampler* is a frozen (hashable, static-friendly) callable object

    lam = sampler(key, shape=())      # float32 in [0, 1], shape `shape`

that can be closed over in jitted code or passed as a static argument. Sampling uses
`jax.random` only (beta, bernoulli, categorical), so it is cheap inside a jitted step.

By THEORY.md §1 the mixup risk depends on the λ-law only through the law Q of
θ = max(λ, 1−λ) on [½, 1]. Every sampler therefore also describes Q structurally
(`sampler.theta_law()`), as a finite mixture of components:

- `Atom(theta)`: a point mass at θ;
- `FoldedBeta(a, b)`: θ = max(λ, 1−λ) with λ ~ Beta(a, b); θ-density p(θ) + p(1−θ) on
  [½, 1], p the Beta(a, b) density (singular at θ = 1 when min(a, b) < 1);
- `ShiftedBeta(a, b)`: θ = ½ + X/2 with X ~ Beta(a, b) (the "W-shaped" λ-law);
- `Unknown(sampler)`: a user law (`from_fn`), known only through its draws.

From that description:
- `theta_moments(sampler)` gives θ̄ = E θ, σ² = Var θ, γ² = E(1−θ)² = σ² + (1−θ̄)², and
  the regularization strengths σ²/θ̄² and γ²/θ̄² of Lemma 2 (THEORY.md §3). They are exact
  (closed forms) for every built-in law and their mixtures, and a Monte-Carlo estimate with
  delta-method standard errors for `from_fn` laws.
- `theta_quadrature(sampler, num_nodes)` gives a Gauss rule (nodes in [½, 1], weights ≥ 0
  summing to 1) that integrates polynomials in θ of degree ≤ 2·num_nodes − 1 exactly
  against each continuous component of Q (also when α < 1, where the density is singular
  at θ = 1); atoms enter as single nodes.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import math
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from scipy import linalg as sp_linalg
from scipy import special as sp_special

from mixjax.registry import Registry

Shape = tuple[int, ...]

_WEIGHT_SUM_TOL = 1e-6
DEFAULT_NUM_DRAWS = 2**20  # Monte-Carlo draws for `from_fn` moments.


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
  """A θ-law known only through the draws of `sampler` (a `from_fn` sampler)."""
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
  """Base class of λ-laws: `sampler(key, shape=()) -> λ` (float32 in [0, 1])."""

  def __call__(self, key: jax.Array, shape: Sequence[int] | int = ()) -> jax.Array:
    """Draws λ of shape `shape` (float32, in [0, 1]) from the PRNG `key`."""
    return self._sample(key, _as_shape(shape))

  def _sample(self, key: jax.Array, shape: Shape) -> jax.Array:
    raise NotImplementedError

  def theta_law(self) -> ThetaLaw:
    """The law of θ = max(λ, 1−λ), as a mixture of structured components."""
    raise NotImplementedError

  def _default_name(self) -> str:
    raise NotImplementedError

  @property
  def name(self) -> str:
    """A readable name, e.g. 'beta(alpha=1.0)' or 'regmixup(alpha=1.0, eta=1.0)'."""
    label = getattr(self, "label", None)
    return label if label else self._default_name()

  def __repr__(self) -> str:
    return self.name


def _label_field():
  # The label only changes the name: samplers of equal laws compare (and hash) equal.
  return dataclasses.field(default=None, compare=False)


@dataclasses.dataclass(frozen=True, repr=False)
class Beta(Sampler):
  """λ ~ Beta(alpha, beta). θ-law: `FoldedBeta(alpha, beta)`."""
  alpha: float
  beta: float
  label: str | None = _label_field()

  def _sample(self, key, shape):
    if self.alpha == 1.0 and self.beta == 1.0:
      lam = jax.random.uniform(key, shape, jnp.float32)
    else:
      # jax.random.beta works in log space: no NaN for small α (e.g. 0.01).
      lam = jax.random.beta(key, self.alpha, self.beta, shape, jnp.float32)
    return jnp.clip(lam, 0.0, 1.0)

  def theta_law(self):
    return ThetaLaw((1.0,), (FoldedBeta(self.alpha, self.beta),))

  def _default_name(self):
    if self.alpha == self.beta:
      return f"beta(alpha={_fmt(self.alpha)})"
    return f"beta(alpha={_fmt(self.alpha)}, beta={_fmt(self.beta)})"


@dataclasses.dataclass(frozen=True, repr=False)
class Constant(Sampler):
  """λ = lam always. θ-law: `Atom(max(lam, 1 − lam))`."""
  lam: float
  label: str | None = _label_field()

  def _sample(self, key, shape):
    del key
    return jnp.full(shape, self.lam, jnp.float32)

  def theta_law(self):
    return ThetaLaw((1.0,), (Atom(max(self.lam, 1.0 - self.lam)),))

  def _default_name(self):
    return f"constant(lam={_fmt(self.lam)})"


@dataclasses.dataclass(frozen=True, repr=False)
class WShaped(Sampler):
  """θ = ½ + X/2, X ~ Beta(a, b); λ = θ or 1 − θ with probability ½ each.

  For a, b < 1 the λ-density is "W-shaped" (MetaMixup); θ-law: `ShiftedBeta(a, b)`.
  """
  a: float
  b: float
  label: str | None = _label_field()

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


@dataclasses.dataclass(frozen=True, repr=False)
class Mixture(Sampler):
  """λ ~ samplers[k] with probability weights[k] (k drawn per element, categorical)."""
  samplers: tuple[Sampler, ...]
  weights: tuple[float, ...]
  label: str | None = _label_field()

  def _sample(self, key, shape):
    active = [(w, s) for w, s in zip(self.weights, self.samplers) if w > 0]
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


@dataclasses.dataclass(frozen=True, repr=False)
class FromFn(Sampler):
  """A user law `fn(key, shape) -> λ`; its θ-law is known only through draws.

  Range checks: an eager call (outside `jit`) raises a ValueError when a draw is outside
  [0, 1] or not finite; inside `jit` no check is possible without `checkify`, so call
  `validate(sampler)` once eagerly (`theta_moments` also checks its draws).
  """
  fn: Callable[..., Any]
  label: str | None = _label_field()

  def _sample(self, key, shape):
    lam = jnp.asarray(self.fn(key, shape))
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

  def _default_name(self):
    return f"from_fn({getattr(self.fn, '__name__', repr(self.fn))})"


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
  return Beta(1.0, 1.0, label="uniform()")


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


def w_shaped(a: float, b: float) -> WShaped:
  """θ = ½ + X/2 with X ~ Beta(a, b), λ = θ or 1 − θ w.p. ½ (σ²/θ̄² = Var X/(1+E X)²)."""
  return WShaped(_positive("a", a, "w_shaped sampler"), _positive("b", b, "w_shaped sampler"))


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
  samplers = list(samplers)
  weights = [float(w) for w in np.asarray(weights, np.float64).ravel()]
  if not samplers:
    raise ValueError("mixture: needs at least one sampler (got an empty list).")
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
  return Mixture(tuple(_as_sampler(s) for s in samplers), tuple(weights))


def regmixup_equivalent(sampler: Any, eta: float) -> Mixture:
  """The law that RegMixup with mixing law `sampler` is mixup under, in expectation.

  RegMixup minimizes E ℓ(y, f(x)) + η · E_λ ℓ(mixup), which is (1+η) times the mixup
  risk of the mixture (THEORY.md §6)

      λ = 1 with probability 1/(1+η)   (the clean term; θ = 1),
      λ ~ sampler with probability η/(1+η),

  so its θ-law puts mass 1/(1+η) at θ = 1 and θ̄ = (1 + η θ̄_sampler)/(1+η). η = 0 is
  ERM (θ = 1 surely).

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
  return mixture([Constant(1.0), sampler], [1.0 / (1.0 + e), e / (1.0 + e)])


def regmixup(alpha: float, eta: float = 1.0) -> Mixture:
  """RegMixup's law with λ ~ Beta(α, α): `regmixup_equivalent(beta(α), η)` (THEORY.md §6).

  θ = 1 with probability 1/(1+η) (the clean CE term), else λ ~ Beta(α, α).
  Note the loss itself is (1+η) times the mixup risk of this law.
  """
  a = _positive("alpha", alpha, "regmixup sampler")
  mix = regmixup_equivalent(Beta(a, a), eta)
  return dataclasses.replace(mix, label=f"regmixup(alpha={_fmt(a)}, eta={_fmt(float(eta))})")


def optimal() -> Mixture:
  """θ = ½ w.p. 2/3, θ = 1 w.p. 1/3: the Bhatia–Davis optimum σ²/θ̄² = 1/8 (THEORY.md §6)."""
  mix = mixture([Constant(0.5), Constant(1.0)], [2.0 / 3.0, 1.0 / 3.0])
  return dataclasses.replace(mix, label="optimal()")


def from_fn(fn: Callable[..., Any], name: str | None = None) -> FromFn:
  """Wraps a user law `fn(key, shape) -> λ` (values must lie in [0, 1]).

  Its θ-moments are Monte-Carlo estimates (`theta_moments(...).exact` is False) and it
  has no quadrature rule unless `theta_quadrature(..., empirical=True)` is requested.
  """
  if not callable(fn):
    raise ValueError(f"from_fn: fn must be callable as fn(key, shape) -> λ, got {fn!r}.")
  try:
    hash(fn)
  except TypeError:
    raise ValueError(
        f"from_fn: fn must be hashable (samplers are static under jit), got {fn!r}; wrap "
        "it in a plain function.") from None
  return FromFn(fn, label=None if name is None else f"from_fn({name})")


def validate(sampler: Sampler, key: jax.Array | None = None,
             shape: Sequence[int] | int = (4096,)) -> Sampler:
  """Eagerly checks a sampler; returns it unchanged.

  Draws `shape` values under `jit` (the way a train step would) and raises a ValueError
  unless they are float32, of shape `shape`, finite and within [0, 1]. Use it once on
  `from_fn` samplers before a jitted run, where no range check is possible.
  """
  if not isinstance(sampler, Sampler):
    raise ValueError(f"validate: expected a Sampler, got {sampler!r}.")
  shape = _as_shape(shape)
  key = jax.random.key(0) if key is None else key
  lam = jax.jit(lambda k: sampler(k, shape))(key)
  if lam.shape != shape or lam.dtype != jnp.float32:
    raise ValueError(
        f"Sampler {sampler.name} returned {lam.dtype}{lam.shape}; expected float32{shape}.")
  _check_lambda_values(np.asarray(lam), sampler)
  return sampler


# ---------------------------------------------------------------------------
# θ-moments.
# ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ThetaStderr:
  """Monte-Carlo standard errors (delta method on the sample means of θ and θ²)."""
  mean: float
  var: float
  strength: float
  global_strength: float
  num_draws: int


@dataclasses.dataclass(frozen=True)
class ThetaMoments:
  """Moments of θ = max(λ, 1−λ) (THEORY.md §1, §3).

  Attributes:
    mean: θ̄ = E θ.
    var: σ² = Var θ.
    gamma2: γ² = E (1−θ)² = σ² + (1−θ̄)².
    strength: σ²/θ̄², the weight of the per-example term of Lemma 2.
    global_strength: γ²/θ̄², the weight of the global term of Lemma 2.
    exact: True for closed forms; False for Monte-Carlo estimates.
    stderr: `ThetaStderr` of an estimate; None when exact.
  """
  mean: float
  var: float
  gamma2: float
  strength: float
  global_strength: float
  exact: bool = True
  stderr: ThetaStderr | None = None

  @classmethod
  def from_mean_var(cls, mean: float, var: float, *, exact: bool = True,
                    stderr: ThetaStderr | None = None) -> ThetaMoments:
    """From θ̄ = E θ and σ² = Var θ."""
    var = max(float(var), 0.0)
    gamma2 = var + (1.0 - mean) ** 2
    return cls(mean=float(mean), var=var, gamma2=float(gamma2),
               strength=float(var / mean**2), global_strength=float(gamma2 / mean**2),
               exact=exact, stderr=stderr)

  def __repr__(self) -> str:
    if self.exact:
      return (f"ThetaMoments(exact: mean={self.mean:.6g}, var={self.var:.6g}, "
              f"gamma2={self.gamma2:.6g}, strength={self.strength:.6g}, "
              f"global_strength={self.global_strength:.6g})")
    se = self.stderr
    return (f"ThetaMoments(Monte-Carlo estimate from {se.num_draws} draws: "
            f"mean={self.mean:.6g}±{se.mean:.2g}, var={self.var:.6g}±{se.var:.2g}, "
            f"gamma2={self.gamma2:.6g}, strength={self.strength:.6g}±{se.strength:.2g}, "
            f"global_strength={self.global_strength:.6g}±{se.global_strength:.2g})")


def _component_moments(c) -> tuple[float, float]:
  """Exact (E θ, Var θ) of one θ-law component."""
  if isinstance(c, Atom):
    return c.theta, 0.0
  if isinstance(c, ShiftedBeta):
    s = c.a + c.b  # θ = ½ + X/2: E θ = ½ + E X/2, Var θ = Var X/4.
    return 0.5 + 0.5 * c.a / s, c.a * c.b / (s * s * (s + 1.0)) / 4.0
  if isinstance(c, FoldedBeta):
    a, b = c.a, c.b
    if a == b:
      # E|λ − ½| = Γ(2α)/(α 4^α Γ(α)²) = Γ(α+½)/(2√π α Γ(α)) (duplication formula); the
      # Pochhammer form keeps ~1e-11 relative accuracy up to α = 1e9.
      e_abs = sp_special.poch(a, 0.5) / (2.0 * math.sqrt(math.pi) * a)
      return 0.5 + e_abs, 1.0 / (4.0 * (2.0 * a + 1.0)) - e_abs**2
    # θ = λ on {λ > ½} and 1 − λ on {λ < ½}; with I the regularized incomplete beta,
    # E[λ^k; λ > ½] = (a)_k/(a+b)_k · I_½(b, a+k) and
    # E[(1−λ)^k; λ < ½] = (b)_k/(a+b)_k · I_½(a, b+k)  ((x)_k rising factorials).
    s = a + b
    inc = sp_special.betainc
    m1 = a / s * inc(b, a + 1.0, 0.5) + b / s * inc(a, b + 1.0, 0.5)
    m2 = (a * (a + 1.0) * inc(b, a + 2.0, 0.5)
          + b * (b + 1.0) * inc(a, b + 2.0, 0.5)) / (s * (s + 1.0))
    return float(m1), float(m2 - m1 * m1)
  raise ValueError(f"No closed-form moments for θ-law component {c!r}.")


def _check_sampler(sampler) -> Sampler:
  if not isinstance(sampler, Sampler):
    raise ValueError(
        f"Expected a Sampler (e.g. samplers.beta(1.0) or make_sampler('beta', alpha=1.0)), "
        f"got {sampler!r}.")
  return sampler


def _theta_draws(sampler: Sampler, num_draws: int, seed: int) -> np.ndarray:
  """θ draws (float64 host array) of a sampler, drawn under jit with a fixed key."""
  if isinstance(num_draws, bool) or not isinstance(num_draws, (int, np.integer)) \
      or num_draws < 2:
    raise ValueError(f"num_draws must be an integer ≥ 2, got {num_draws!r}.")
  lam = jax.jit(lambda k: sampler(k, (num_draws,)))(jax.random.key(seed))
  lam = np.asarray(lam, np.float64)
  _check_lambda_values(lam, sampler)
  return np.maximum(lam, 1.0 - lam)


@functools.lru_cache(maxsize=128)
def _estimated_moments(sampler: Sampler, num_draws: int, seed: int) -> ThetaMoments:
  """Monte-Carlo θ-moments with delta-method standard errors."""
  theta = _theta_draws(sampler, num_draws, seed)
  m1, m2, var = float(theta.mean()), float(np.mean(theta**2)), float(theta.var())
  cov = np.cov(np.stack([theta, theta**2])) / num_draws  # Cov of (m1, m2).
  g2 = 1.0 - 2.0 * m1 + m2
  grads = {
      "mean": (1.0, 0.0),
      "var": (-2.0 * m1, 1.0),
      "strength": (-2.0 * m2 / m1**3, 1.0 / m1**2),
      "global_strength": (-2.0 / m1**2 - 2.0 * g2 / m1**3, 1.0 / m1**2),
  }
  se = {k: float(np.sqrt(max(np.asarray(g) @ cov @ np.asarray(g), 0.0)))
        for k, g in grads.items()}
  return ThetaMoments.from_mean_var(m1, var, exact=False,
                                    stderr=ThetaStderr(**se, num_draws=num_draws))


def theta_moments(sampler: Sampler, *, num_draws: int = DEFAULT_NUM_DRAWS,
                  seed: int = 0) -> ThetaMoments:
  """θ̄, σ², γ² and the strengths σ²/θ̄², γ²/θ̄² of a sampler's θ-law.

  Exact for every built-in law and mixtures of them (mixtures combine the components'
  means and variances by the law of total variance, i.e. they mix E θ and E θ²).
  Closed forms: Beta(α, α) via E|λ − ½| = Γ(2α)/(α 4^α Γ(α)²), θ̄ = ½ + E|λ − ½|,
  σ² = 1/(4(2α+1)) − (E|λ − ½|)²; asymmetric Beta via the regularized incomplete beta
  function; ShiftedBeta and atoms directly.

  A law with a `from_fn` component is estimated from `num_draws` jitted draws of the whole
  sampler with the fixed key `jax.random.key(seed)` (`exact=False`, with `stderr`); its
  draws are checked to lie in [0, 1].
  """
  sampler = _check_sampler(sampler)
  law = sampler.theta_law()
  if not law.is_known:
    return _estimated_moments(sampler, num_draws, int(seed))
  # Mixtures: law of total variance (= mixing the raw moments E θ, E θ², but without
  # the cancellation of E θ² − (E θ)² for concentrated laws).
  w = np.asarray(law.weights, np.float64)
  means, varis = np.asarray([_component_moments(c) for c in law.components]).T
  mean = float(w @ means)
  return ThetaMoments.from_mean_var(mean, float(w @ varis + w @ (means - mean) ** 2))


# ---------------------------------------------------------------------------
# θ-quadrature.
# ---------------------------------------------------------------------------
def _gauss_from_discrete(x: np.ndarray, w: np.ndarray, n: int):
  """n-point Gauss rule of the discrete measure Σ w_i δ_{x_i} (Σ w = 1).

  Lanczos with full re-orthogonalization gives the Jacobi matrix of the measure's
  orthonormal polynomials (a discretized Stieltjes procedure, stable in float64);
  Golub–Welsch then gives nodes (eigenvalues) and weights (first eigenvector entries²).
  """
  keep = w > 0
  x, w = x[keep], w[keep] / w[keep].sum()
  n = min(n, x.size)
  shift = float(np.dot(w, x))
  xc = x - shift
  q = np.zeros((n, x.size))
  q[0] = np.sqrt(w)
  diag, off = np.zeros(n), np.zeros(max(n - 1, 0))
  for k in range(n):
    v = xc * q[k]
    diag[k] = q[k] @ v
    for _ in range(2):
      v -= q[:k + 1].T @ (q[:k + 1] @ v)
    if k == n - 1:
      break
    off[k] = np.linalg.norm(v)
    if off[k] <= 1e-13:  # The measure has only k + 1 support points.
      n = k + 1
      diag, off = diag[:n], off[:n - 1]
      break
    q[k + 1] = v / off[k]
  if n == 1:
    return np.array([diag[0] + shift]), np.array([1.0])
  nodes, vecs = sp_linalg.eigh_tridiagonal(diag, off)
  weights = vecs[0] ** 2
  return nodes + shift, weights / weights.sum()


def _jacobi_on_01(m: int, p: float, q: float) -> tuple[np.ndarray, np.ndarray]:
  """m-point Gauss rule on [0, 1] for the weight t^(p−1) (1−t)^(q−1): (nodes, log-weights).

  Nodes: Golub–Welsch eigenvalues of the analytic Jacobi matrix (x = 2t − 1, weight
  (1−x)^(q−1) (1+x)^(p−1)). Weights: Christoffel numbers 1 / Σ_k p_k(t_i)² of the
  orthonormal polynomials, evaluated by their recurrence with rescaling, returned as logs
  normalized to logsumexp = 0. Unlike eigenvector weights (or
  `scipy.special.roots_jacobi`, which overflows for exponents of a few hundred), tiny
  weights keep their relative accuracy, so the rule can be multiplied by a factor that is
  huge where the weights are tiny.
  """
  al, be = q - 1.0, p - 1.0
  diag = np.empty(m)
  diag[0] = (be - al) / (al + be + 2.0)
  k = np.arange(1, m, dtype=np.float64)
  s = 2.0 * k + al + be
  diag[1:] = (be * be - al * al) / (s * (s + 2.0))
  with np.errstate(divide="ignore", invalid="ignore"):
    off2 = 4.0 * k * (k + al) * (k + be) * (k + al + be) / (s * s * (s + 1.0) * (s - 1.0))
  if m > 1:  # k = 1 written without the removable 0/0 at al + be = −1.
    off2[0] = 4.0 * (1.0 + al) * (1.0 + be) / ((2.0 + al + be) ** 2 * (3.0 + al + be))
  d, e = (1.0 + diag) / 2.0, np.sqrt(off2) / 2.0
  if m == 1:
    return d.copy(), np.zeros(1)
  t = sp_linalg.eigh_tridiagonal(d, e, eigvals_only=True)
  prev, cur = np.zeros(m), np.ones(m)
  ssum, logscale = np.ones(m), np.zeros(m)
  for j in range(m - 1):
    nxt = (t - d[j]) * cur - (e[j - 1] * prev if j > 0 else 0.0)
    prev, cur = cur, nxt / e[j]
    ssum += cur * cur
    big = np.abs(cur) > 1e100
    if big.any():
      f = np.where(big, 1e-100, 1.0)
      prev, cur, ssum = prev * f, cur * f, ssum * f * f
      logscale += np.where(big, math.log(1e100), 0.0)
  logw = -np.log(ssum) - 2.0 * logscale
  return t, logw - sp_special.logsumexp(logw)


_TAIL_MASS = 1e-20  # Relative mass a base discretization may leave out.


def _half_beta_base(c: float, d: float, m: int) -> tuple[np.ndarray, np.ndarray]:
  """m-point discretization of u ~ Beta(c, d) conditioned on u ∈ [0, ½]: (u, weights).

  The window [lo, hi] ⊂ [0, ½] drops at most `_TAIL_MASS` (relative) on either side, so
  concentrated laws (large c, d) are resolved by O(m) nodes whatever their width. When
  the window reaches u = 0, a Gauss–Jacobi rule carries the u^(c−1) factor exactly (the
  singularity of the θ-density at θ = 1 for c < 1) and the remaining factor
  (1−u)^(d−1) is analytic on the window; otherwise Gauss–Legendre with the density
  evaluated pointwise. Weights are formed in log space (no underflow for large c, d).
  """
  mass = float(sp_special.betainc(c, d, 0.5))
  lo = float(sp_special.betaincinv(c, d, _TAIL_MASS * mass)) if mass > 0 else 0.0
  hi = 1.0 - float(sp_special.betaincinv(d, c, min(1.0, (1.0 - mass) + _TAIL_MASS * mass)))
  hi = min(max(hi, lo), 0.5) if math.isfinite(hi) else 0.5
  lo = lo if math.isfinite(lo) else 0.0
  if hi <= 0.0:
    hi = 0.5
  if lo <= 0.05 * hi:
    t, logw = _jacobi_on_01(m, c, 1.0)
    u = hi * t
    logw = logw + (d - 1.0) * np.log1p(-u)
  else:
    t, logw = _jacobi_on_01(m, 1.0, 1.0)
    u = lo + (hi - lo) * t
    logw = logw + (c - 1.0) * np.log(u) + (d - 1.0) * np.log1p(-u)
  return u, np.exp(logw - sp_special.logsumexp(logw))


@functools.lru_cache(maxsize=256)
def _component_rule(c, num_nodes: int) -> tuple[np.ndarray, np.ndarray]:
  """Gauss rule (θ-nodes, weights summing to 1) for one θ-law component."""
  if isinstance(c, Atom):
    return np.array([c.theta]), np.array([1.0])
  if isinstance(c, ShiftedBeta):
    x, logw = _jacobi_on_01(num_nodes, c.a, c.b)  # Exact: θ = ½ + X/2 is affine.
    return 0.5 + 0.5 * x, np.exp(logw)
  if isinstance(c, FoldedBeta):
    # In u = 1 − θ ∈ [0, ½]: q(u) ∝ u^(a−1)(1−u)^(b−1) + u^(b−1)(1−u)^(a−1). Each term is
    # u^(c−1) (singular at u = 0 when c < 1) times a factor analytic on [0, ½]. A high-order
    # Gauss–Jacobi rule carrying u^(c−1) discretizes each term (geometric convergence in
    # the analytic factor; `_half_beta_base`); the Gauss rule of Q then follows by
    # Lanczos (discretized Stieltjes) + Golub–Welsch.
    a, b = c.a, c.b
    m = 2 * num_nodes + 100
    mass_ab = float(sp_special.betainc(a, b, 0.5))
    parts = [(a, b, 1.0)] if a == b else [(a, b, mass_ab), (b, a, 1.0 - mass_ab)]
    xs, ws = [], []
    for p, q, mass in parts:
      if mass > 0.0:
        u, w = _half_beta_base(p, q, m)
        xs.append(1.0 - u)
        ws.append(mass * w)
    return _gauss_from_discrete(np.concatenate(xs), np.concatenate(ws), num_nodes)
  raise ValueError(f"No quadrature rule for θ-law component {c!r}.")


@functools.lru_cache(maxsize=32)
def _empirical_rule(sampler: Sampler, num_nodes: int, num_draws: int, seed: int):
  """Gauss rule of the empirical θ-law of `num_draws` draws (an estimate)."""
  vals, counts = np.unique(_theta_draws(sampler, num_draws, seed), return_counts=True)
  return _gauss_from_discrete(vals, counts / counts.sum(), num_nodes)


def theta_quadrature(sampler: Sampler, num_nodes: int, *, empirical: bool = False,
                     num_draws: int = 2**16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """A quadrature rule for E_Q g(θ): (nodes, weights), float64 numpy, sorted by node.

  Nodes lie in [½, 1], weights are ≥ 0 and sum to 1. Each continuous component gets a
  `num_nodes`-point Gauss rule of its θ-density, exact for polynomials in θ of degree
  ≤ 2·num_nodes − 1 (Gauss–Jacobi for W-shaped laws; Lanczos/Golub–Welsch on a
  high-order Gauss–Jacobi discretization carrying the (1−θ)^(α−1) singularity for folded
  Beta laws). Atoms are single nodes; mixtures concatenate the components' rules scaled by
  the mixture weights.

  Args:
    sampler: a Sampler.
    num_nodes: nodes per continuous component (≥ 1).
    empirical: for `from_fn` components only: use the Gauss rule of the empirical θ-law of
      `num_draws` draws (key `seed`), an estimate. Without it such laws raise a ValueError.
    num_draws: draws for the empirical rule.
    seed: PRNG seed for the empirical rule.
  """
  sampler = _check_sampler(sampler)
  if isinstance(num_nodes, bool) or not isinstance(num_nodes, (int, np.integer)) \
      or num_nodes < 1:
    raise ValueError(f"theta_quadrature: num_nodes must be an integer ≥ 1, got {num_nodes!r}.")
  num_nodes = int(num_nodes)
  law = sampler.theta_law()
  nodes, weights = [], []
  for w, c in zip(law.weights, law.components):
    if w <= 0:
      continue
    if isinstance(c, Unknown):
      if not empirical:
        raise ValueError(
            f"theta_quadrature: {c.sampler.name} has an unknown θ-law, so there is no "
            "quadrature rule for it. Build the law from built-in samplers (beta, "
            "w_shaped, constant, mixture, ...), or pass empirical=True for an estimated "
            "rule from its draws.")
      x, v = _empirical_rule(c.sampler, num_nodes, num_draws, int(seed))
    else:
      x, v = _component_rule(c, num_nodes)
    nodes.append(x)
    weights.append(w * v)
  nodes = np.clip(np.concatenate(nodes), 0.5, 1.0)
  weights = np.maximum(np.concatenate(weights), 0.0)
  order = np.argsort(nodes, kind="stable")
  return nodes[order], weights[order] / weights.sum()


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
SAMPLERS.register("from_fn", from_fn)


def make_sampler(name: str | Sampler, **params) -> Sampler:
  """Builds a sampler by registry name, e.g. `make_sampler("beta", alpha=1.0)`.

  `make_sampler("mixture", samplers=[("beta", {"alpha": 1.0}), ("constant", {"lam": 1.0})],
  weights=[0.5, 0.5])` builds mixtures from (name, params) specs. A Sampler passes through.
  """
  if isinstance(name, Sampler):
    if params:
      raise ValueError(f"make_sampler: got a Sampler ({name}) and extra params {params}.")
    return name
  factory = SAMPLERS.get(name)
  sig = inspect.signature(factory)
  try:
    sig.bind(**params)
  except TypeError as e:
    raise ValueError(
        f"Sampler {name!r} takes parameters ({', '.join(sig.parameters)}), got "
        f"{sorted(params)}: {e}.") from None
  return factory(**params)
