"""Per-example regularization terms of Theorem 3 and the seed notes' upper bounds.

For cross-entropy (Corollary 4, docs/THEORY.md §4) at the transformed point x̃_i, with
s = S(f(x̃_i)), H = diag(s) − s sᵀ, g = s − ỹ_i, J = ∇f(x̃_i) (c×d), and Lemma 2's
Σ := Σ^(i)_xx (d×d), Σ_xy := Σ^(i)_xy (d×c):

  R1_i = ½ tr((J − J^(i)) Σ (J − J^(i))ᵀ H),     J^(i) = H⁺ Σ_xyᵀ Σ⁺
  R2_i = ½ Σ_k g_k tr(∇²f_k Σ)                     (the "hessian" term)
  R3_i = −½ tr(Σ_xyᵀ Σ⁺ Σ_xy H⁺)
  (R4 = 0 for cross-entropy.) Pseudo-inverses are restricted to the range (H·1 = 0), as
  docs/THEORY.md §4 prescribes; R1 + R3 = jacobian + cross holds when the range conditions do
  (checked by the study against `mixjax.theory.approx_mixup_terms`). When the softmax
  saturates, H has tiny eigenvalues and R1, R3 separately become large and sensitive to
  the pseudo-inverse cutoff; only their sum is well conditioned.

The notes' bounds ("Analysis beyond the paper"), computed as they are stated:

  B1_i = ½ tr(Σ) · Ent(s) · ‖J − J^(i)‖²_F       (uses tr(H) = 1 − ‖s‖² ≤ Ent(s); the
         intermediate B1'_i = ½ tr(Σ) tr(H) ‖J − J^(i)‖²_F is also returned)
  B2_i = ½ tr(Σ) · ‖s − ỹ‖₂ · ‖(tr ∇²f_k)_k‖₂   ("EL2N-like" × input-Hessian traces)
  B3_i = ½ tr(Σ_xyᵀ Σ_xy) · tr(Σ⁺) · Ent(s)       (as in the notes, with H; docs/THEORY.md
         "Errors in the notes" #3 says the correct factor is H⁻¹, so
         B3c_i = ½ tr(Σ_xyᵀ Σ_xy) · tr(Σ⁺) · tr(H⁺) is returned as well)

The trace-product steps Tr(AB) ≤ Tr(A) Tr(B) hold only for PSD A and B, so B2 (whose
matrix gᵀ∇²f is indefinite) and the sign of R2 are not guaranteed: the study reports where
each bound holds and how tight it is. Everything is exact given f (dense d×d per example:
for small d only).
"""
from __future__ import annotations

from typing import Any, Callable

import chex
import jax
import jax.numpy as jnp


def _pinv_psd(a: jax.Array) -> jax.Array:
  """Pseudo-inverse of a symmetric PSD matrix on its range, with the same cutoff as
  `mixjax.theory.approx_mixup_terms` (`jnp.linalg.pinv(..., hermitian=True)`), so that
  the per-example R1, R3 here average to the library's."""
  return jnp.linalg.pinv(a, hermitian=True)


def per_example_terms(logits_fn: Callable[[jax.Array], jax.Array], x: jax.Array,
                      y: jax.Array, stats: Any, moments: Any) -> dict[str, jax.Array]:
  """R1–R3, the bounds B1, B1', B2, B3, B3c and their ingredients, each (n,).

  Args:
    logits_fn: f, (N, d) -> (N, c) (flat inputs; examples independent, twice
      differentiable).
    x: inputs (n, d).
    y: labels (n, c) (one-hot or soft; cross-entropy).
    stats: `mixjax.theory.DataStats` with the dense Σ_xx (the data the terms refer to).
    moments: θ-moments (`mean`, `strength`, `global_strength`; arrays are fine).

  Returns:
    dict of (n,) arrays: R1, R2, R3, B1, B1_mid, B2, B3, B3_corrected, entropy, trace_h,
    el2n (‖s − ỹ‖₂), hess_trace_norm (‖(tr ∇²f_k)_k‖₂), jac_dev (‖J − J^(i)‖²_F),
    trace_sigma (tr Σ^(i)_xx).
  """
  from mixjax import theory  # pylint: disable=g-import-not-at-top
  n, d = x.shape
  c = y.shape[1]
  cov = theory.perturbation_covariances(x, y, stats, moments)
  x_t, y_t = theory.transform(x, y, stats, moments.mean)

  def f1(xi):
    return logits_fn(xi[None])[0]

  u = logits_fn(x_t)
  chex.assert_shape(u, (n, c))
  s = jax.nn.softmax(u, axis=-1)
  jac = jax.vmap(jax.jacfwd(f1))(x_t)  # (n, c, d)
  hess = jax.vmap(jax.hessian(f1))(x_t)  # (n, c, d, d)
  chex.assert_shape(jac, (n, c, d))

  def one(i, s_i, yt_i, j_i, h_i):
    sxx, sxy, _ = cov.dense(i)
    hmat = jnp.diag(s_i) - jnp.outer(s_i, s_i)
    h_pinv = _pinv_psd(hmat)
    sxx_pinv = _pinv_psd(sxx)
    j_star = h_pinv @ sxy.T @ sxx_pinv  # (c, d)
    dev = j_i - j_star
    g = s_i - yt_i
    r1 = 0.5 * jnp.trace(dev @ sxx @ dev.T @ hmat)
    r2 = 0.5 * jnp.einsum("k,kab,ba->", g, h_i, sxx)
    r3 = -0.5 * jnp.trace(sxy.T @ sxx_pinv @ sxy @ h_pinv)
    ent = -jnp.sum(jnp.where(s_i > 0, s_i * jnp.log(jnp.where(s_i > 0, s_i, 1.0)), 0.0))
    tr_s = jnp.trace(sxx)
    dev2 = jnp.sum(dev * dev)
    hess_tr = jnp.trace(h_i, axis1=-2, axis2=-1)  # (c,)
    el2n = jnp.linalg.norm(g)
    sxy2 = jnp.sum(sxy * sxy)
    return dict(
        R1=r1, R2=r2, R3=r3,
        B1=0.5 * tr_s * ent * dev2, B1_mid=0.5 * tr_s * jnp.trace(hmat) * dev2,
        B2=0.5 * tr_s * el2n * jnp.linalg.norm(hess_tr),
        B3=0.5 * sxy2 * jnp.trace(sxx_pinv) * ent,
        B3_corrected=0.5 * sxy2 * jnp.trace(sxx_pinv) * jnp.trace(h_pinv),
        entropy=ent, trace_h=jnp.trace(hmat), el2n=el2n,
        hess_trace_norm=jnp.linalg.norm(hess_tr), jac_dev=dev2, trace_sigma=tr_s)

  return jax.vmap(one)(jnp.arange(n), s, y_t, jac, hess)


def summarize_bounds(per: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """Means of terms and bounds, the fraction of examples where each bound holds, and the
  median tightness |term| / bound (1 = tight)."""
  out = {k: jnp.mean(v) for k, v in per.items()}
  pairs = {"B1": "R1", "B1_mid": "R1", "B2": "R2", "B3": "R3", "B3_corrected": "R3"}
  for b, t in pairs.items():
    term, bound = per[t], per[b]
    out[f"holds_{b}"] = jnp.mean((jnp.abs(term) <= bound * (1 + 1e-5) + 1e-12)
                                 .astype(jnp.float32))
    out[f"tight_{b}"] = jnp.median(jnp.abs(term) / jnp.maximum(bound, 1e-30))
  out["holds_B2_signed"] = jnp.mean((per["R2"] <= per["B2"] * (1 + 1e-5) + 1e-12)
                                    .astype(jnp.float32))
  return out
