"""θ-moments of a sampler's θ-law (docs/THEORY.md §1, §3): θ̄, σ², γ² and the strengths.

`theta_moments(sampler)` gives θ̄ = E θ, σ² = Var θ, γ² = E(1−θ)² = σ² + (1−θ̄)², and the
regularization strengths σ²/θ̄² and γ²/θ̄² of Lemma 2. They are exact (closed forms) for
every built-in law and their mixtures, and a Monte-Carlo estimate with delta-method
standard errors for `from_fn` laws. `MomentArrays` holds the same fields as (traceable)
arrays, stacked over laws by `stack_moments`, for the theory functions' `moments=`
argument inside programs vmapped over laws.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from scipy import special as sp_special

from mixjax.samplers import laws
from mixjax.samplers.laws import Atom, FoldedBeta, Sampler, ShiftedBeta
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


def stack_moments(samplers: Sequence[Sampler | ThetaMoments]) -> MomentArrays:
  """The exact θ-moments (computed on the host in float64) of each sampler (or the given
  `ThetaMoments`), stacked: fields of shape (len(samplers),), float32."""
  ms = [s if isinstance(s, ThetaMoments) else theta_moments(s) for s in samplers]
  return MomentArrays(**{f: jnp.asarray([getattr(m, f) for m in ms], jnp.float32)
                         for f in laws.MOMENT_FIELDS})
