"""Quadrature over a law: Gauss rules for E_Q g(θ) over a sampler's θ-law
(docs/THEORY.md §1), and a mask law's exact finite support (§8, `mask_support`).

`theta_quadrature(sampler, num_nodes)` gives a Gauss rule (nodes in [½, 1], weights ≥ 0
summing to 1) that integrates polynomials in θ of degree ≤ 2·num_nodes − 1 exactly
against each continuous component of Q (also when α < 1, where the density is singular
at θ = 1); atoms enter as single nodes.
"""
from __future__ import annotations

import functools
import math

import numpy as np
from scipy import linalg as sp_linalg
from scipy import special as sp_special

from mixjax.samplers import masks as masks_lib
from mixjax.samplers import moments as moments_lib
from mixjax.samplers.laws import Atom, FoldedBeta, Sampler, ShiftedBeta, Unknown
from mixjax.samplers.moments import _check_sampler, _theta_draws  # pylint: disable=protected-access


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
# The exact support of a mask law (for the exact mixup risk of small problems).
# ---------------------------------------------------------------------------
def _cutmix_support(alpha: float, hw):
  h, w = hw
  masks, weights = [], []
  for (a, b), prob in moments_lib.cutmix_sizes(alpha, hw).items():
    if prob <= 0.0:
      continue
    r, c = moments_lib.line_indicators(h, a), moments_lib.line_indicators(w, b)
    box = r[:, None, :, None] * c[None, :, None, :]  # (cy, cx, H, W)
    masks.append(1.0 - box.reshape(h * w, h, w))
    weights.append(np.full(h * w, prob / (h * w)))
  return np.concatenate(masks), np.concatenate(weights)


def mask_support(law: laws.Sampler, hw: Sequence[int], *, num_nodes: int = 32
                 ) -> tuple[np.ndarray, np.ndarray]:
  """A finite rule for E_M g(M): (masks (K, H, W) float64, weights (K,) summing to 1).

  CutMix: its exact support (every box size and centre, with the exact probabilities of
  `mask_moments`). A λ-law: the constant masks θ_q·1 of its θ-quadrature
  (`theta_quadrature(law, num_nodes)`; by §1 only θ matters). A switch: both parts'
  rules, weighted. Raises a ValueError for laws known only by their draws (GMix).
  """
  law = _check_sampler(law)
  hw = masks_lib.check_hw(hw, law)
  if not law.is_mask:
    nodes, weights = theta_quadrature(law, num_nodes)
    return np.broadcast_to(nodes[:, None, None], (len(nodes),) + hw).copy(), weights
  if isinstance(law, masks_lib.CutMix):
    return _cutmix_support(float(law.alpha), hw)
  if isinstance(law, masks_lib.Switch):
    (ma, wa), (mb, wb) = (mask_support(p, hw, num_nodes=num_nodes)
                          for p in (law.law_a, law.law_b))
    p = float(law.p)
    return np.concatenate([ma, mb]), np.concatenate([(1.0 - p) * wa, p * wb])
  raise ValueError(
      f"{law.label} has no exact finite support (it is known through its draws): the "
      "exact mixup risk needs CutMix, λ-laws or switches of them; use the stochastic "
      "estimators (perturbed_erm_loss, approx_mixup_risk(..., estimator='stochastic')).")

