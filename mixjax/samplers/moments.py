"""Moments of a law: θ-moments of a λ-law (docs/THEORY.md §1, §3: θ̄, σ², γ² and the
strengths) and the moments of a mask law (§8: N̄, C_N, S_N, c_N, s_N; `mask_moments`).

`theta_moments(sampler)` gives θ̄ = E θ, σ² = Var θ, γ² = E(1−θ)² = σ² + (1−θ̄)², and the
regularization strengths σ²/θ̄² and γ²/θ̄² of Lemma 2. They are exact (closed forms) for
every built-in law and their mixtures, and for `from_fn` laws whose user gave θ̄ and σ²;
a Monte-Carlo estimate with delta-method standard errors for other `from_fn` laws. `MomentArrays` holds the same fields as (traceable)
arrays, stacked over laws by `stack_moments`, for the theory functions' `moments=`
argument inside programs vmapped over laws.

Mask laws (`mask_moments`). Fold every draw: N = M if mean(M) ≥ ½ else 1 − M (the roles
of the pair swapped), and θ = mean(N) ∈ [½, 1]. Theorem 1 and Lemma 2 for masks need, on the H·W pixel grid
(vec order p = h·W + w; the channels share the mask),

    N̄ = E N (H×W),  θ̄ = E θ = mean(N̄),  σ² = Var θ,  γ² = E (1 − θ)²,
    C_N = Cov(N) (HW×HW),    S_N = E (1 − N)(1 − N)ᵀ (HW×HW),
    c_N = E (θ − θ̄)(N − N̄) (HW),   s_N = E (1 − θ)(1 − N) (HW).

All are linear in the raw moments E N, E N Nᵀ, E θ, E θ², E θ N, so a switch's moments
are the mixture of its parts' raw moments. Memory: two dense (HW)² float64 matrices,
≈ 10 MB for 28×28 and 17 MB for 32×32; never anything per example.

  - CutMix: exact. The box size (⌊H√(1−λ)⌋, ⌊W√(1−λ)⌋) is a step function of λ, so
    each size has the exact probability of a λ-interval under Beta(α, α)
    (`scipy.special.betainc`); given the size, an exact sum over the H·W centres, where
    the row and column indicators r, c make E BBᵀ a Kronecker product
    Σ_cy r rᵀ ⊗ Σ_cx c cᵀ, and folding (area > HW/2) couples them only through the
    area, handled per pair of clipped lengths.
  - λ-laws (constant masks N = θ·1): exact from `theta_moments` (Monte Carlo for
    `from_fn`).
  - GMix, and a switch with a part that is not exact: Monte Carlo from jitted draws
    (`num_draws`, fixed `seed`), with delta-method standard errors for the scalars and
    the largest per-pixel standard error of N̄, as `theta_moments` does for `from_fn`.

`law_moments(law, input_shape)` is the one entry point for any law: `ThetaMoments` for a
λ-law, `MaskMoments` for a mask law.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Optional, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from scipy import special as sp_special

from mixjax.samplers import laws
from mixjax.samplers import masks as masks_lib
from mixjax.samplers.laws import Atom, FoldedBeta, Sampler, ShiftedBeta, Unknown
from mixjax.samplers.laws import _check_lambda_values  # pylint: disable=unused-import

DEFAULT_NUM_DRAWS = 2**20  # Monte-Carlo draws for `from_fn` moments.


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
  """Moments of θ = max(λ, 1−λ) (docs/THEORY.md §1, §3).

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
  if isinstance(c, Unknown) and _given(c):
    return float(c.sampler.theta_mean), float(c.sampler.theta_var)
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


def _given(c) -> bool:
  """A `from_fn` component whose user gave its exact θ̄ and σ²."""
  return getattr(c.sampler, "theta_mean", None) is not None


_check_sampler = laws._check  # pylint: disable=protected-access


def _theta_draws(sampler: Sampler, num_draws: int, seed: int) -> np.ndarray:
  """θ draws (float64 host array) of a sampler, drawn under jit with a fixed key."""
  if isinstance(num_draws, bool) or not isinstance(num_draws, (int, np.integer)) \
      or num_draws < 2:
    raise ValueError(f"num_draws must be an integer ≥ 2, got {num_draws!r}.")
  lam = jax.jit(lambda k: sampler(k, (num_draws,)))(jax.random.key(seed))
  lam = np.asarray(lam, np.float64)
  _check_lambda_values(lam, sampler)
  return np.maximum(lam, 1.0 - lam)


def delta_stderr(m1: float, m2: float, m3: float, m4: float, num_draws: int) -> dict:
  """Delta-method standard errors of θ̄, σ², σ²/θ̄², γ²/θ̄² from the sample raw moments
  m_k = mean(θ^k) of `num_draws` independent draws (the covariance of the sample means
  of θ and θ² is [[m2 − m1², m3 − m1 m2], [·, m4 − m2²]] / num_draws)."""
  cov = np.array([[m2 - m1 * m1, m3 - m1 * m2], [m3 - m1 * m2, m4 - m2 * m2]]) / num_draws
  g2 = 1.0 - 2.0 * m1 + m2
  grads = {
      "mean": (1.0, 0.0),
      "var": (-2.0 * m1, 1.0),
      "strength": (-2.0 * m2 / m1**3, 1.0 / m1**2),
      "global_strength": (-2.0 / m1**2 - 2.0 * g2 / m1**3, 1.0 / m1**2),
  }
  return {k: float(np.sqrt(max(np.asarray(g) @ cov @ np.asarray(g), 0.0)))
          for k, g in grads.items()}


@functools.lru_cache(maxsize=128)
def _estimated_moments(sampler: Sampler, num_draws: int, seed: int) -> ThetaMoments:
  """Monte-Carlo θ-moments with delta-method standard errors."""
  theta = _theta_draws(sampler, num_draws, seed)
  m1, m2, var = float(theta.mean()), float(np.mean(theta**2)), float(theta.var())
  se = delta_stderr(m1, m2, float(np.mean(theta**3)), float(np.mean(theta**4)), num_draws)
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

  A `from_fn` component counts as exact when its user gave θ̄ and σ² (`from_fn(...,
  theta_mean=, theta_var=)`). A law with a `from_fn` component without them is estimated
  from `num_draws` jitted draws of the whole sampler with the fixed key
  `jax.random.key(seed)` (`exact=False`, with `stderr`); its draws are checked to lie in
  [0, 1].
  """
  sampler = _check_sampler(sampler)
  law = sampler.theta_law()
  if not all(_given(c) for c in law.components if isinstance(c, Unknown)):
    return _estimated_moments(sampler, num_draws, int(seed))
  # Mixtures: law of total variance (= mixing the raw moments E θ, E θ², but without
  # the cancellation of E θ² − (E θ)² for concentrated laws).
  w = np.asarray(law.weights, np.float64)
  means, varis = np.asarray([_component_moments(c) for c in law.components]).T
  mean = float(w @ means)
  return ThetaMoments.from_mean_var(mean, float(w @ varis + w @ (means - mean) ** 2))




def describe(sampler: Sampler) -> dict:
  """A JSON-able description of a law: label, name, θ-law components, weights and exact
  θ-moments (what the studies record per law)."""
  law = _check_sampler(sampler).theta_law()
  m = theta_moments(sampler)
  return {"label": sampler.label, "name": sampler.name,
          "components": [{"kind": type(c).__name__,
                          **{k: v for k, v in dataclasses.asdict(c).items()
                             if k != "sampler"}} for c in law.components],
          "weights": [float(w) for w in law.weights],
          **{k: getattr(m, k) for k in laws.MOMENT_FIELDS}}


class MomentArrays(flax.struct.PyTreeNode):
  """θ-moments as (traceable) float32 arrays; duck-types `ThetaMoments` for the theory
  functions' `moments=` argument. Fields of shape () for one law, (L,) stacked."""
  mean: jax.Array
  var: jax.Array
  gamma2: jax.Array
  strength: jax.Array
  global_strength: jax.Array


def stack_moments(samplers: Sequence[Sampler | ThetaMoments]):
  """The exact θ-moments (computed on the host in float64) of each sampler (or the given
  `ThetaMoments`), stacked: `MomentArrays` with fields of shape (len(samplers),),
  float32. Mask moments (`samplers.MaskMoments`, one grid) stack into one `MaskMoments`
  whose fields gain a leading axis."""
  if samplers and all(isinstance(s, MaskMoments) for s in samplers):
    return stack_mask_moments(samplers)
  if any(isinstance(s, MaskMoments) for s in samplers):
    raise ValueError("stack_moments: cannot stack θ-moments with mask moments; a vmapped "
                     "group holds laws of one structure.")
  ms = [s if isinstance(s, ThetaMoments) else theta_moments(s) for s in samplers]
  return MomentArrays(**{f: jnp.asarray([getattr(m, f) for m in ms], jnp.float32)
                         for f in laws.MOMENT_FIELDS})


# ---------------------------------------------------------------------------
# Mask laws (docs/THEORY.md §8; see the module docstring).
# ---------------------------------------------------------------------------
DEFAULT_MASK_DRAWS = 2**15  # Monte-Carlo draws for mask laws without exact moments.
_CHUNK = 2048


@dataclasses.dataclass(frozen=True)
class MaskStderr:
  """Monte-Carlo standard errors of a mask law's moments (delta method for the scalars;
  `n_bar` is the largest per-pixel standard error of N̄)."""
  mean: float
  var: float
  strength: float
  global_strength: float
  n_bar: float
  num_draws: int


@flax.struct.dataclass
class MaskMoments:
  """Moments of a mask law on an H×W grid (docs/THEORY.md §8); a JAX pytree.

  Attributes:
    n_bar: N̄ = E N, (H, W): the per-pixel shrinkage of Theorem 1 (x̃ = x̄ + N̄ ⊙ (x − x̄)).
    mean: θ̄ = E θ = mean(N̄), the label shrinkage (ỹ = ȳ + θ̄ (y − ȳ)).
    var: σ² = Var θ.
    gamma2: γ² = E (1 − θ)² = σ² + (1 − θ̄)².
    strength: σ²/θ̄²; global_strength: γ²/θ̄² (the label part of Lemma 2, as for λ-laws).
    c_mat: C_N = Cov N, (HW, HW).
    s_mat: S_N = E (1 − N)(1 − N)ᵀ, (HW, HW).
    c_vec: c_N = E (θ − θ̄)(N − N̄), (HW,).
    s_vec: s_N = E (1 − θ)(1 − N), (HW,).
    exact: True when computed exactly (static).
    stderr: `MaskStderr` of a Monte-Carlo estimate, else None (static).

  Stacked over laws (`samplers.stack_moments`) every field gains a leading axis.
  """
  n_bar: Any
  mean: Any
  var: Any
  gamma2: Any
  strength: Any
  global_strength: Any
  c_mat: Any
  s_mat: Any
  c_vec: Any
  s_vec: Any
  exact: bool = flax.struct.field(pytree_node=False, default=True)
  stderr: Optional[MaskStderr] = flax.struct.field(pytree_node=False, default=None)

  @property
  def hw(self) -> tuple[int, int]:
    """(H, W)."""
    return tuple(int(s) for s in np.shape(self.n_bar)[-2:])

  def __eq__(self, other) -> bool:
    """Equal values (as `ThetaMoments` compare), not an elementwise array comparison;
    traced moments are equal only to themselves."""
    if not isinstance(other, MaskMoments):
      return NotImplemented
    if (self.exact, self.stderr) != (other.exact, other.stderr):
      return False
    mine, theirs = jax.tree.leaves(self), jax.tree.leaves(other)
    try:
      return len(mine) == len(theirs) and all(
          np.shape(a) == np.shape(b) and np.array_equal(np.asarray(a), np.asarray(b))
          for a, b in zip(mine, theirs))
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
      return self is other

  def __hash__(self) -> int:
    try:
      return hash((self.hw, self.exact, np.asarray(self.n_bar).tobytes(),
                   float(np.sum(self.var))))
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
      return id(self)

  def __repr__(self) -> str:
    if np.ndim(self.mean) != 0:
      return f"MaskMoments(stacked, {np.shape(self.mean)[0]} laws, grid {self.hw})"
    kind = "exact" if self.exact else f"Monte-Carlo, {self.stderr.num_draws} draws"
    return (f"MaskMoments({kind}, grid {self.hw}: mean={float(self.mean):.6g}, "
            f"var={float(self.var):.6g}, gamma2={float(self.gamma2):.6g}, "
            f"strength={float(self.strength):.6g}, "
            f"global_strength={float(self.global_strength):.6g})")


@dataclasses.dataclass
class _Raw:
  """Raw moments of (N, θ) on the pixel grid (float64): E N, E NNᵀ, E θ, E θ², E θN."""
  e_n: np.ndarray
  e_nn: np.ndarray
  e_t: float
  e_t2: float
  e_tn: np.ndarray

  def __add__(self, other):
    return _Raw(*(a + b for a, b in zip(dataclasses.astuple(self),
                                        dataclasses.astuple(other))))

  def scale(self, w: float) -> "_Raw":
    return _Raw(*(w * a for a in dataclasses.astuple(self)))

  def central(self, hw, *, exact=True, stderr=None) -> MaskMoments:
    """The central moments of §8 from the raw ones."""
    n_bar, e_t = self.e_n, float(self.e_t)
    var = max(float(self.e_t2) - e_t * e_t, 0.0)
    gamma2 = var + (1.0 - e_t) ** 2
    one = np.ones_like(n_bar)
    c_mat = self.e_nn - np.outer(n_bar, n_bar)
    s_mat = 1.0 - one[:, None] * n_bar[None, :] - n_bar[:, None] * one[None, :] + self.e_nn
    return MaskMoments(
        n_bar=n_bar.reshape(hw), mean=np.float64(e_t), var=np.float64(var),
        gamma2=np.float64(gamma2), strength=np.float64(var / e_t**2),
        global_strength=np.float64(gamma2 / e_t**2),
        c_mat=0.5 * (c_mat + c_mat.T), s_mat=0.5 * (s_mat + s_mat.T),
        c_vec=self.e_tn - e_t * n_bar, s_vec=(1.0 - e_t) * one - n_bar + self.e_tn,
        exact=exact, stderr=stderr)


def _lambda_raw(law, hw) -> tuple[_Raw, bool]:
  """A λ-law as the constant mask N = θ·1: exact from its θ-moments."""
  m = theta_moments(law)
  d = hw[0] * hw[1]
  e_t2 = m.var + m.mean**2
  return _Raw(np.full(d, m.mean), np.full((d, d), e_t2), m.mean, e_t2,
              np.full(d, e_t2)), m.exact


def cutmix_sizes(alpha: float, hw) -> dict[tuple[int, int], float]:
  """P(half sizes (⌊cut_h/2⌋, ⌊cut_w/2⌋) = (a, b)) under λ ~ Beta(α, α), exactly.

  With s = √(1 − λ), cut_h = ⌊H s⌋ and cut_w = ⌊W s⌋ are constant for s in each interval
  between consecutive breakpoints {k/H} ∪ {l/W}; P(s ∈ [s0, s1)) = I(1 − s0²) − I(1 − s1²),
  I the regularized incomplete beta function (the Beta(α, α) CDF).
  """
  h, w = hw
  pts = np.unique(np.concatenate([np.arange(h + 1) / h, np.arange(w + 1) / w]))
  lo, hi = pts[:-1], pts[1:]
  mid = 0.5 * (lo + hi)
  cdf = lambda s: sp_special.betainc(alpha, alpha, np.clip(1.0 - s * s, 0.0, 1.0))
  prob = cdf(lo) - cdf(hi)
  out: dict[tuple[int, int], float] = {}
  for ch, cw, pr in zip(np.floor(h * mid).astype(int), np.floor(w * mid).astype(int), prob):
    key = (int(ch) // 2, int(cw) // 2)
    out[key] = out.get(key, 0.0) + float(pr)
  return out


def line_indicators(n: int, half: int) -> np.ndarray:
  """(n centres, n pixels): 1 where pixel p ∈ [c − half, c + half) (clipped to [0, n))."""
  c = np.arange(n)[:, None]
  p = np.arange(n)[None, :]
  return ((p >= c - half) & (p < c + half)).astype(np.float64)


def _cutmix_raw(alpha: float, hw) -> _Raw:
  """Exact raw moments of CutMix's folded masks (see the module docstring).

  Per half-size pair (a, b) with probability P and the centre uniform over the H·W
  pixels: R (H×H) and C (W×W) hold the row and column indicators per centre; the box
  of (cy, cx) is B = R[cy] ⊗ C[cx] with area A = |R[cy]|·|C[cx]|; N = 1 − B when
  A ≤ HW/2 (λ ≥ ½) and N = B otherwise (folded). Weighted sums over centres are
  Rᵀ G C for a weight table G (H×W), and Σ BBᵀ = RᵀR ⊗ CᵀC, whatever the fold
  (NNᵀ = 11ᵀ − 1Bᵀ − B1ᵀ + BBᵀ when unfolded, BBᵀ when folded).
  """
  h, w = hw
  d = h * w
  e_n = np.zeros((h, w))
  e_tn = np.zeros((h, w))
  b_unf = np.zeros((h, w))
  e_bb = np.zeros((d, d))
  e_t = e_t2 = p_unf = 0.0
  for (a, b), prob in cutmix_sizes(alpha, hw).items():
    if prob <= 0.0:
      continue
    r, c = line_indicators(h, a), line_indicators(w, b)
    area = np.outer(r.sum(1), c.sum(1))  # (H centres, W centres)
    folded = area > d / 2.0
    theta = np.where(folded, area / d, 1.0 - area / d)
    wt = prob / d  # each centre
    unf, fol = wt * (~folded), wt * folded
    sum_b = lambda g: r.T @ g @ c  # Σ_centres g(cy, cx) B(cy, cx), (H, W)
    b_u = sum_b(unf)
    e_n += unf.sum() - b_u + sum_b(fol)
    e_tn += (unf * theta).sum() - sum_b(unf * theta) + sum_b(fol * theta)
    e_t += float((wt * theta).sum())
    e_t2 += float((wt * theta**2).sum())
    p_unf += float(unf.sum())
    b_unf += b_u
    e_bb += wt * np.kron(r.T @ r, c.T @ c)
  bu = b_unf.reshape(d)
  e_nn = p_unf - bu[None, :] - bu[:, None] + e_bb
  return _Raw(e_n.reshape(d), e_nn, e_t, e_t2, e_tn.reshape(d))


def _exact_raw(law, hw) -> Optional[_Raw]:
  """Exact raw moments, or None when the law has no exact form here."""
  if not law.is_mask:
    raw, exact = _lambda_raw(law, hw)
    return raw if exact else None
  if isinstance(law, masks_lib.CutMix):
    return _cutmix_raw(float(law.alpha), hw)
  if isinstance(law, masks_lib.Switch):
    parts = [_exact_raw(law.law_a, hw), _exact_raw(law.law_b, hw)]
    if any(p is None for p in parts):
      return None
    return parts[0].scale(1.0 - float(law.p)) + parts[1].scale(float(law.p))
  return None


def _check_draws(num_draws) -> int:
  if isinstance(num_draws, bool) or not isinstance(num_draws, (int, np.integer)) \
      or num_draws < 2:
    raise ValueError(f"num_draws must be an integer ≥ 2, got {num_draws!r}.")
  return int(num_draws)


def _estimated(law, hw, num_draws: int, seed: int) -> MaskMoments:
  """Monte-Carlo moments from jitted draws (float32 on device, float64 sums on host)."""
  d = hw[0] * hw[1]

  @jax.jit
  def chunk_sums(key, valid):
    m, lam = law.masks(key, _CHUNK, hw)
    flip = lam < 0.5
    n = jnp.where(flip[:, None, None], 1.0 - m, m).reshape(_CHUNK, d)
    t = jnp.where(flip, 1.0 - lam, lam)
    keep = (jnp.arange(_CHUNK) < valid).astype(jnp.float32)
    n, t = n * keep[:, None], t * keep
    return (n.sum(0), n.T @ n, (n * n).sum(0), t @ n,
            jnp.stack([t.sum(), (t * t).sum(), (t**3).sum(), (t**4).sum()]))

  sums = None
  key = jax.random.key(seed)
  for i, start in enumerate(range(0, num_draws, _CHUNK)):
    part = chunk_sums(jax.random.fold_in(key, i), min(_CHUNK, num_draws - start))
    part = [np.asarray(p, np.float64) for p in part]
    sums = part if sums is None else [s + p for s, p in zip(sums, part)]
  s_n, s_nn, s_n2, s_tn, s_t = (v / num_draws for v in sums)
  if not (np.all(np.isfinite(s_nn)) and np.all(s_n >= 0) and np.all(s_n <= 1)):
    raise ValueError(f"{law.label} drew masks outside [0, 1] or not finite.")
  m1, m2, m3, m4 = (float(v) for v in s_t)
  se = delta_stderr(m1, m2, m3, m4, num_draws)
  n_se = float(np.sqrt(np.maximum(s_n2 - s_n**2, 0.0).max() / num_draws))
  raw = _Raw(s_n, s_nn, m1, m2, s_tn)
  return raw.central(hw, exact=False, stderr=MaskStderr(**se, n_bar=n_se,
                                                        num_draws=num_draws))


@functools.lru_cache(maxsize=32)
def _mask_moments(law, hw, num_draws: int, seed: int) -> MaskMoments:
  raw = _exact_raw(law, hw)
  if raw is not None:
    return raw.central(hw)
  return _estimated(law, hw, num_draws, seed)


def mask_moments(law: laws.Sampler, hw: Sequence[int], *,
                 num_draws: int = DEFAULT_MASK_DRAWS, seed: int = 0) -> MaskMoments:
  """The §8 moments of a law's folded masks on an H×W grid (`MaskMoments`).

  Exact for CutMix, λ-laws (constant masks) and switches of those; a Monte-Carlo
  estimate from `num_draws` jitted draws with the key `jax.random.key(seed)` otherwise
  (GMix, parts with `from_fn`), with `stderr`. Cached per (law, (H, W), num_draws, seed).
  Cost: exact CutMix on 28×28 ≈ 29 Kronecker products of 784×784; Monte Carlo
  ≈ num_draws · (HW)² flops for E NNᵀ.

  Args:
    law: a mask law or a λ-law (`mixjax.samplers`), with concrete (not stacked) values.
    hw: the image grid (H, W).
    num_draws: Monte-Carlo draws (laws without exact moments only).
    seed: PRNG seed of the Monte-Carlo draws.
  """
  law = _check_sampler(law)
  hw = masks_lib.check_hw(hw, law)
  return _mask_moments(law, hw, _check_draws(num_draws), int(seed))


def law_moments(law: laws.Sampler, input_shape: Optional[Sequence[int]] = None, **kwargs):
  """The moments the theory needs for any law: `theta_moments(law)` (a `ThetaMoments`)
  for a λ-law, `mask_moments(law, (H, W))` (a `MaskMoments`) for a mask law.

  Both carry mean (θ̄), var (σ²), gamma2 (γ²), strength (σ²/θ̄²) and global_strength
  (γ²/θ̄²) — what a run's summary records — and both stack over laws
  (`samplers.stack_moments`); a `MaskMoments` adds N̄ and the §8 matrices.

  Args:
    law: a Sampler.
    input_shape: the per-example input shape, (H, W) or (H, W, C) for images; needed by
      mask laws only.
    **kwargs: num_draws, seed for Monte-Carlo estimates.
  """
  law = _check_sampler(law)
  if not law.is_mask:
    return theta_moments(law, **kwargs)
  if input_shape is None:
    raise ValueError(
        f"{law.label} is a mask law: its moments depend on the image size; pass the "
        "per-example input shape, law_moments(law, (H, W, C)).")
  return mask_moments(law, masks_lib.image_hw(input_shape, law), **kwargs)


def stack_mask_moments(ms: Sequence[MaskMoments]) -> MaskMoments:
  """`MaskMoments` of several laws on one grid, every array field stacked on a leading
  axis (float32); `exact` is True when all are, `stderr` is dropped."""
  hws = {m.hw for m in ms}
  if len(hws) != 1:
    raise ValueError(f"stack_moments: mask moments on different grids {sorted(hws)}.")
  exact = all(m.exact for m in ms)
  ms = [m.replace(exact=True, stderr=None) for m in ms]
  stacked = jax.tree.map(lambda *xs: jnp.asarray(np.stack(xs), jnp.float32), *ms)
  return stacked.replace(exact=exact)
