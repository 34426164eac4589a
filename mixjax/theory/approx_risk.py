"""Theorem 3 of docs/THEORY.md (§4): the second-order ("approximate") mixup risk.

Expanding ℓ(ỹ_i + ε_i, f(x̃_i + δ_i)) to second order in (δ_i, ε_i) around
(ỹ_i, f(x̃_i)) and taking expectations with Lemma 2's covariances (first-order terms
vanish because E δ = E ε = 0):

    E^mix(f) ≈ (1/n) Σ_i [ ℓ(ỹ_i, f(x̃_i))                        "erm"
                         + ½ tr(J_iᵀ H_uu J_i Σ^(i)_xx)            "jacobian"
                         + tr(M J_i Σ^(i)_xy)                      "cross"
                         + ½ Σ_k g_k tr(∇²f_k Σ^(i)_xx)            "hessian" (paper's R2)
                         + ½ tr(H_yy Σ^(i)_yy) ]                   "label"   (paper's R4)

with J_i = ∇f(x̃_i) (c×d), g = ∇_u ℓ, H_uu = ∇²_uu ℓ, M = ∇²_yu ℓ (M[a, b] =
∂²ℓ/∂y_a ∂u_b), H_yy = ∇²_yy ℓ at (ỹ_i, f(x̃_i)), and
Σ^(i)_xx = s u_i u_iᵀ + g Σ̃_xx (s = σ²/θ̄², g = γ²/θ̄², u_i = x̃_i − x̄; Lemma 2), and
likewise Σ^(i)_xy (whose shared part is Σ̃_xy = θ̄² Σ_xy) and Σ^(i)_yy.
The remainder is third order in (δ, ε) jointly.

Loss derivatives come from autodiff of the per-example loss (any twice-differentiable
ℓ), or, for cross-entropy, from Corollary 4's closed form: g = (1ᵀy) S − y,
H_uu = (1ᵀy)(diag S − S Sᵀ), M = −I (exact on label perturbations with 1ᵀε = 0, i.e.
labels whose rows all sum to the same value, such as one-hot or soft labels),
H_yy = 0.

Estimators of the input-derivative terms (docs/THEORY.md §4, "Estimators that scale"):
  exact: full Jacobians J_i and Hessians ∇²(g_iᵀ f)(x̃_i) per example; the value of the
    quadratic risk itself. O(n d²) memory: for d up to a few hundred. Also gives the
    paper's completed-square grouping R1 + R3 (= jacobian + cross) as diagnostics.
  lowrank: the per-example σ² part exactly with directional derivatives along u_i (a JVP
    gives J_i u_i, a JVP of a JVP gives u_iᵀ ∇²f_k u_i); the global γ² part along the
    top-k eigenvectors v_k of Σ̃_xx (one nested JVP each), with Σ̃_xx ≈ Σ_k λ̃_k v_k v_kᵀ
    and Σ̃_xy ≈ Σ_k v_k v_kᵀ Σ̃_xy (its projection on the same subspace). Equal to exact
    at full rank; a deterministic truncation otherwise.
  stochastic: one draw (θ, j) per example and probe as mixup would make it (j from the
    batch), δ_i, ε_i from Theorem 1, and the terms ½(Jδ)ᵀH_uu(Jδ), εᵀM(Jδ),
    ½ d²/dt² gᵀf(x̃ + tδ)|₀, ½ εᵀH_yy ε at that draw, averaged over `num_probes`;
    unbiased for the quadratic risk when the batch is the data that `stats` describe.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence, Union

import chex
import flax.struct
import jax
import jax.numpy as jnp

from mixjax import losses as losses_lib
from mixjax import mixing
from mixjax import samplers as samplers_lib
from mixjax.theory import perturbation
from mixjax.theory import stats as stats_lib

ESTIMATORS = ("exact", "lowrank", "stochastic")
TERMS = ("jacobian", "cross", "hessian", "label")
# The default terms of `approx_mixup_risk` / `approx_mixup_terms` and of the trainer's
# `method.terms`: the hessian term (R2) is unbounded below, and the paper drops it in
# training.
DEFAULT_TERMS = ("jacobian", "cross", "label")
DERIVATIVES = ("auto", "autodiff", "closed_form")


@flax.struct.dataclass
class LossDerivatives:
  """Derivatives of ℓ(y, u) at n points (y_i, u_i).

  Attributes:
    g: ∇_u ℓ, (n, c).
    huu: ∇²_uu ℓ, (n, c, c).
    m: ∇²_yu ℓ, (n, c, c), m[i, a, b] = ∂²ℓ/∂y_a ∂u_b.
    hyy: ∇²_yy ℓ, (n, c, c), or None when it is identically 0 (cross-entropy).
  """
  g: jax.Array
  huu: jax.Array
  m: jax.Array
  hyy: Optional[jax.Array]


def _is_cross_entropy(loss) -> bool:
  return (isinstance(loss, str) and loss == "cross_entropy") or (
      loss is losses_lib.cross_entropy)


def loss_derivatives(loss: Union[str, losses_lib.Loss], y: jax.Array, u: jax.Array, *,
                     method: str = "auto") -> LossDerivatives:
  """g, H_uu, M = ∇²_yu ℓ and H_yy of a per-example loss at (y_i, u_i), i = 1..n.

  Args:
    loss: per-example loss ℓ(y, u) or its name.
    y: labels (n, c).
    u: outputs (n, c).
    method: "autodiff" (jax.grad/hessian/jacfwd of ℓ; any twice-differentiable ℓ),
      "closed_form" (cross-entropy only, Corollary 4: M is returned as −I, which is exact
      on label perturbations with 1ᵀε = 0, and H_yy as None = 0), or "auto"
      (closed form for cross-entropy, autodiff otherwise).

  Returns:
    `LossDerivatives`.
  """
  if method not in DERIVATIVES:
    raise ValueError(f"Unknown derivatives method {method!r}. Valid: {', '.join(DERIVATIVES)}.")
  if method == "closed_form" and not _is_cross_entropy(loss):
    raise ValueError(
        "derivatives='closed_form' exists only for loss='cross_entropy'; use 'autodiff' "
        f"for {loss!r}.")
  n, c = y.shape
  if method == "closed_form" or (method == "auto" and _is_cross_entropy(loss)):
    s = jax.nn.softmax(u, axis=-1)
    total = jnp.sum(y, axis=-1, keepdims=True)
    g = total * s - y
    huu = total[..., None] * (jax.vmap(jnp.diag)(s) - s[:, :, None] * s[:, None, :])
    m = jnp.broadcast_to(-jnp.eye(c, dtype=u.dtype), (n, c, c))
    return LossDerivatives(g=g, huu=huu, m=m, hyy=None)
  fn = losses_lib.get_loss(loss)
  grad_u = jax.grad(fn, argnums=1)
  g = jax.vmap(grad_u)(y, u)
  huu = jax.vmap(jax.hessian(fn, argnums=1))(y, u)
  # jacfwd(grad_u, argnums=0)[b, a] = ∂²ℓ/∂u_b ∂y_a; M[a, b] is its transpose.
  m = jnp.swapaxes(jax.vmap(jax.jacfwd(grad_u, argnums=0))(y, u), -1, -2)
  hyy = jax.vmap(jax.hessian(fn, argnums=0))(y, u)
  return LossDerivatives(g=g, huu=huu, m=m, hyy=hyy)


def _batched_fn(logits_fn, input_shape):
  """F: (N, d) -> (N, c), logits_fn on inputs reshaped to (N, *input_shape)."""
  return lambda z: logits_fn(z.reshape((z.shape[0],) + tuple(input_shape)))


def _directional(fn, x_flat: jax.Array, tangent: jax.Array, second: bool):
  """Per-example directional derivatives of F along per-example tangents t_i.

  Since examples are independent, one batched forward-mode pass gives every J_i t_i and,
  nested, every t_iᵀ ∇²f_k(x_i) t_i.

  Returns:
    (F(x) (N, c), J t (N, c), tᵀ∇²f t (N, c) or None).
  """
  if not second:
    f, jt = jax.jvp(fn, (x_flat,), (tangent,))
    return f, jt, None
  inner = lambda z: jax.jvp(fn, (z,), (tangent,))
  (f, jt), (_, htt) = jax.jvp(inner, (x_flat,), (tangent,))
  return f, jt, htt


def _jacobians(fn, x_flat: jax.Array, c: int) -> jax.Array:
  """Input Jacobians J_i = ∇f(x_i), (n, c, d): reverse mode if c ≤ d, else forward."""
  n, d = x_flat.shape
  if c <= d:
    out, vjp = jax.vjp(fn, x_flat)
    # `+ zeros_like(out)`: the cotangents take the output's type, including its
    # device-varying axes under shard_map (a plain constant would be device-invariant).
    basis = jnp.eye(c, dtype=out.dtype)[:, None, :] + jnp.zeros_like(out)[None]
    rows = jax.vmap(lambda e: vjp(e)[0])(basis)  # (c, n, d)
    return jnp.transpose(rows, (1, 0, 2))
  basis = jnp.eye(d, dtype=x_flat.dtype)[:, None, :] + jnp.zeros_like(x_flat)[None]
  cols = jax.vmap(lambda e: jax.jvp(fn, (x_flat,), (e,))[1])(basis)  # (d, n, c)
  return jnp.transpose(cols, (1, 2, 0))


def _weighted_hessians(fn, x_flat: jax.Array, g: jax.Array) -> jax.Array:
  """∇²(g_iᵀ f)(x_i) = Σ_k g_ik ∇²f_k(x_i), (n, d, d), g held fixed (forward-over-reverse)."""
  n, d = x_flat.shape
  grad_h = jax.grad(lambda z: jnp.sum(g * fn(z)))
  basis = jnp.eye(d, dtype=x_flat.dtype)[:, None, :] + jnp.zeros_like(x_flat)[None]
  cols = jax.vmap(lambda e: jax.jvp(grad_h, (x_flat,), (e,))[1])(basis)  # (d, n, d)
  return jnp.transpose(cols, (1, 2, 0))


def _quad(a: jax.Array, h: jax.Array, b: jax.Array) -> jax.Array:
  """a_iᵀ H_i b_i: a (n, c), H (n, c, c), b (n, c) -> (n,)."""
  return jnp.einsum("na,nab,nb->n", a, h, b)


def _paper_terms(jac: jax.Array, der: LossDerivatives,
                 cov: perturbation.PerturbationCovariances) -> tuple[jax.Array, jax.Array]:
  """Per-example R1 and R3 (the paper's completed square; docs/THEORY.md §4), (n,) each.

      A_i = Mᵀ Σ^(i)_yx,   J^(i) = −H_uu⁺ A_i (Σ^(i)_xx)⁺,
      R1_i = ½ tr(H_uu (J_i − J^(i)) Σ^(i)_xx (J_i − J^(i))ᵀ),
      R3_i = −½ tr(H_uu⁺ A_i (Σ^(i)_xx)⁺ A_iᵀ).

  With M symmetric, A_i = M Σ^(i)_yx as written in docs/THEORY.md; for a general M (e.g.
  cross-entropy's autodiff M = 1Sᵀ − I) it is Mᵀ that completes the square of
  jacobian + cross = ½ tr(H J Σ Jᵀ) + tr(J Σ_xy M). Pseudo-inverses act on the ranges;
  R1 + R3 = jacobian + cross whenever range(A_i) ⊆ range(H_uu) (true for cross-entropy,
  whose label perturbations sum to zero) and the rows of A_i lie in range(Σ^(i)_xx).
  Dense n×d×d: a diagnostic for small d.
  """
  n = jac.shape[0]
  sig_xx, sig_xy, _ = jax.vmap(cov.dense)(jnp.arange(n))
  sxx_pinv = jnp.linalg.pinv(sig_xx, hermitian=True)
  h_pinv = jnp.linalg.pinv(der.huu, hermitian=True)
  a = jnp.einsum("nba,ndb->nad", der.m, sig_xy)  # Mᵀ Σ_yx, (n, c, d)
  j_star = -h_pinv @ a @ sxx_pinv
  diff = jac - j_star
  r1 = 0.5 * jnp.einsum("nab,nbd,nde,nae->n", der.huu, diff, sig_xx, diff)
  r3 = -0.5 * jnp.einsum("nab,nbd,nde,nae->n", h_pinv, a, sxx_pinv, a)
  return r1, r3


def _eigenbasis(cov: perturbation.PerturbationCovariances, rank: Optional[int]):
  """(V (d, k), λ̃ (k,)) of Σ̃_xx, decreasing: the stats' eigenpairs or eigh of Σ̃_xx."""
  if cov.eigvecs is not None:
    vecs, vals = cov.eigvecs, cov.eigvals
  else:
    vals, vecs = jnp.linalg.eigh(cov.sxx)
    vals, vecs = jnp.maximum(vals[::-1], 0.0), vecs[:, ::-1]
  if rank is not None:
    vecs, vals = vecs[:, :rank], vals[:rank]
  return vecs, vals


def _check_key(key, name: str) -> None:
  mixing.check_key(key, f"{name}(key, f, x, y, stats, law) (key=None for the deterministic "
                   "estimators)", optional=True)


def _validate(logits_fn, x, y, stats, estimator, key, num_probes, terms, rank):
  if estimator not in ESTIMATORS:
    raise ValueError(
        f"Unknown estimator {estimator!r}. Valid estimators: {', '.join(ESTIMATORS)}.")
  if isinstance(terms, str):
    terms = (terms,)
  terms = tuple(terms)
  unknown = [t for t in terms if t not in TERMS]
  if unknown:
    raise ValueError(f"Unknown terms {unknown}. Valid terms: {', '.join(TERMS)}.")
  if estimator == "stochastic" and key is None:
    raise ValueError(
        "estimator='stochastic' draws perturbations: pass a PRNG key first, "
        "approx_mixup_risk(key, f, x, y, stats, law, estimator='stochastic').")
  if not isinstance(num_probes, int) or num_probes < 1:
    raise ValueError(f"num_probes must be a positive integer; got {num_probes!r}.")
  if not callable(logits_fn):
    raise ValueError("logits_fn must be a callable (B, ...) -> (B, c).")
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    x = x.astype(jnp.result_type(float))
  if x.ndim < 1:
    raise ValueError(f"x must have a batch axis, shape (n, ...); got shape {x.shape}.")
  y = mixing.check_labels(y, x.shape[0])
  d = math.prod(x.shape[1:])
  stats_lib.check_stats(stats, d, y.shape[1], where="approx_mixup_terms")
  if estimator == "exact" and stats.sxx is None:
    raise ValueError(
        "estimator='exact' needs the dense Σ_xx, but these stats keep only "
        f"{stats.rank} eigenpairs. Use data_stats(x, y, rank=None) or estimator='lowrank'.")
  if rank is not None:
    avail = stats.rank if stats.sxx is None else d
    if not isinstance(rank, int) or not 1 <= rank <= avail:
      raise ValueError(f"rank must be an integer in [1, {avail}] for these stats; got {rank!r}.")
  return x, y, terms


def _lowrank_mask_terms(fn, x_t, der: LossDerivatives,
                        cov: perturbation.MaskPerturbationCovariances, rank, mask_rank,
                        need_jac: bool, second: bool, direction_batch_size):
  """The lowrank estimator for a mask law (docs/THEORY.md §8), per example (n,) terms.

  Per-example part: with C_N = Σ_l μ_l e_l e_lᵀ (pixel grid, tiled over the channels),
  C_N ⊙ u_i u_iᵀ = Σ_l μ_l (e_l ⊙ u_i)(e_l ⊙ u_i)ᵀ: one JVP (and a JVP of a JVP for the
  hessian term) along each t_il = e_l ⊙ u_i. The per-example cross part
  v_iᵀ M J_i (c_N ⊙ u_i) is one JVP along c_N ⊙ u_i. Shared part: the top-`rank`
  eigenpairs of the dense S_N ⊙ Σ_xx, or, with rank-k statistics Σ_xx = Σ_k λ_k v_k v_kᵀ,
  the directions s_l ⊙ v_k with weights ρ_l λ_k (S_N = Σ_l ρ_l s_l s_lᵀ); the shared cross
  part tr(M J_i diag(s_N) Σ_xy) is one JVP per class. Exact at full ranks.
  """
  n, d = x_t.shape
  ch = cov.channels

  def eig(mat, k):
    vals, vecs = jnp.linalg.eigh(mat)
    vals, vecs = jnp.maximum(vals[::-1], 0.0), vecs[:, ::-1]
    return (vals, vecs) if k is None else (vals[:k], vecs[:, :k])

  mu, e = eig(cov.c_mat, mask_rank)
  e = perturbation.tile_channels(e.T, ch)  # (L, d)
  if cov.sxx is not None:
    omega, z = eig(cov.shared_xx(), rank)
    z = z.T  # (K, d)
  else:
    rho, sv = eig(cov.s_mat, mask_rank)
    sv = perturbation.tile_channels(sv.T, ch)  # (L', d)
    lam_k, vk = cov.eigvals, cov.eigvecs.T
    if rank is not None:
      lam_k, vk = lam_k[:rank], vk[:rank]
    z = (sv[:, None, :] * vk[None, :, :]).reshape(-1, d)
    omega = (rho[:, None] * lam_k[None, :]).reshape(-1)

  def along(t):
    _, jt, ht = _directional(fn, x_t, jnp.broadcast_to(t, x_t.shape), second)
    return (jt, ht) if second else (jt, jnp.zeros_like(jt))

  def along_all(ts):
    if direction_batch_size is None:
      return jax.vmap(along)(ts)
    return jax.lax.map(along, ts, batch_size=direction_batch_size)

  j_per, h_per = along_all(e[:, None, :] * cov.u[None])  # (L, n, c) each
  j_sh, h_sh = along_all(z)  # (K, n, c) each
  out = {}
  if need_jac:
    out["jacobian"] = 0.5 * (
        jnp.einsum("l,lna,nab,lnb->n", mu, j_per, der.huu, j_per)
        + jnp.einsum("k,kna,nab,knb->n", omega, j_sh, der.huu, j_sh))
    cu = perturbation.tile_channels(cov.c_vec, ch) * cov.u
    j_cu = _directional(fn, x_t, cu, False)[1]  # (n, c)
    j_xy = along_all(cov.shared_xy().T)[0]  # (c_cls, n, c): J_i applied to each column
    out["cross"] = (_quad(cov.v, der.m, j_cu)
                    + jnp.einsum("nab,bnb->n", der.m, j_xy))
  if second:
    out["hessian"] = 0.5 * (jnp.einsum("l,nc,lnc->n", mu, der.g, h_per)
                            + jnp.einsum("k,nc,knc->n", omega, der.g, h_sh))
  return out


def approx_mixup_terms(key: Optional[jax.Array], logits_fn, x: Any, y: Any,
                       stats: stats_lib.DataStats, sampler, *,
                       loss: Union[str, losses_lib.Loss] = "cross_entropy",
                       estimator: str = "exact", num_probes: int = 1,
                       terms: Sequence[str] = DEFAULT_TERMS,
                       rank: Optional[int] = None, derivatives: str = "auto",
                       moments=None, diagnostics: bool = True,
                       direction_batch_size: Optional[int] = None,
                       mask_rank: Optional[int] = None) -> Dict[str, jax.Array]:
  """The terms of Theorem 3's expanded form, each a mean over the n examples.

  Args:
    key: PRNG key, first as in `jax.random`; required for "stochastic" (probe p uses
      `fold_in(key, p)`), None for the deterministic "exact" and "lowrank".
    logits_fn: f, (N, ...) -> (N, c), examples treated independently.
    x: inputs (n, ...), any trailing shape with prod = stats.dim.
    y: labels (n, c), one-hot or soft.
    stats: `DataStats` of the whole training set (x̄, ȳ, Σ): `data_stats(x_train,
      y_train)`, or `StatsAccumulator` over all of its batches; never the statistics
      of the batch (x, y), which change every step.
    sampler: λ-law; only its θ-moments enter (and its draws, for "stochastic").
    loss: per-example loss or its name.
    estimator: "exact", "lowrank" or "stochastic" (see the module docstring).
    num_probes: draws per example averaged by "stochastic".
    terms: subset of ("jacobian", "cross", "hessian", "label") to compute; default
      `DEFAULT_TERMS` = ("jacobian", "cross", "label"), the training objective (see
      `approx_mixup_risk`).
    rank: "lowrank" only: keep the top `rank` eigenpairs (default all available: the
      stats' eigenpairs, or all d from an eigendecomposition of the dense Σ_xx, which is
      then redone at every call: for training, precompute `data_stats(..., rank=k)`).
    derivatives: loss derivatives, "auto" | "autodiff" | "closed_form" (`loss_derivatives`).
    moments: the law's moments to use instead of `samplers.law_moments(sampler,
      x.shape[1:])` (θ-moments, or mask moments for a mask law).
    diagnostics: "exact" only: also return the paper's R1..R4.
    direction_batch_size: "lowrank" only: eigen-directions per vectorized pass
      (`jax.lax.map` batch size); None does all k at once.
    mask_rank: "lowrank" with a mask law only: keep the top `mask_rank` eigenpairs of
      C_N (and of S_N with rank-k statistics); default all nonzero ones.

  Returns:
    dict with "erm" = (1/n) Σ ℓ(ỹ_i, f(x̃_i)), each selected term, and for
    estimator="exact" with `diagnostics` "R1", "R2" (= hessian), "R3", "R4" (= label),
    where R1 + R3 = jacobian + cross. Scalars, differentiable in the parameters closed
    over in `logits_fn`.
  """
  _check_key(key, "approx_mixup_terms")
  x, y, terms = _validate(logits_fn, x, y, stats, estimator, key, num_probes, terms, rank)
  if moments is None:
    moments = samplers_lib.law_moments(sampler, x.shape[1:])
  n, c = y.shape
  input_shape = x.shape[1:]
  fn = _batched_fn(logits_fn, input_shape)
  x_t, y_t = perturbation.transform(x, y, stats, moments)
  x_t = x_t.reshape(n, -1)
  cov = perturbation.perturbation_covariances(x, y, stats, moments)
  is_mask = isinstance(cov, perturbation.MaskPerturbationCovariances)

  want = set(terms)
  if estimator == "exact" and diagnostics:
    want = set(TERMS)
  u_out = fn(x_t)
  chex.assert_shape(u_out, (n, c))
  der = loss_derivatives(loss, y_t, u_out, method=derivatives)
  out = {"erm": jnp.mean(losses_lib.batch_loss(loss, y_t, u_out))}
  per: Dict[str, jax.Array] = {}
  second = "hessian" in want
  need_jac = bool(want & {"jacobian", "cross"})

  if estimator == "exact":
    if need_jac:
      jac = _jacobians(fn, x_t, c)
      chex.assert_shape(jac, (n, c, x_t.shape[1]))
      per["jacobian"] = 0.5 * jnp.einsum("nab,nba->n", der.huu, cov.xx_sandwich(jac))
      per["cross"] = jnp.einsum("nab,nba->n", der.m, cov.xy_apply(jac))
    if second:
      per["hessian"] = 0.5 * cov.xx_quadratic(_weighted_hessians(fn, x_t, der.g))

  elif estimator == "lowrank" and is_mask:
    if need_jac or second:
      per.update(_lowrank_mask_terms(fn, x_t, der, cov, rank, mask_rank, need_jac, second,
                                     direction_batch_size))

  elif estimator == "lowrank":
    s, g_str = cov.strength, cov.global_strength
    if need_jac or second:
      _, ju, hu = _directional(fn, x_t, cov.u, second)
      vecs, vals = _eigenbasis(cov, rank)

      def along(v):
        _, jv, hv = _directional(fn, x_t, jnp.broadcast_to(v, x_t.shape), second)
        return (jv, hv) if second else (jv, jnp.zeros_like(jv))

      if direction_batch_size is None:
        jv, hv = jax.vmap(along)(vecs.T)  # (k, n, c) each
      else:
        jv, hv = jax.lax.map(along, vecs.T, batch_size=direction_batch_size)
      if need_jac:
        per["jacobian"] = 0.5 * (
            s * _quad(ju, der.huu, ju)
            + g_str * jnp.einsum("k,kna,nab,knb->n", vals, jv, der.huu, jv))
        sxy_proj = vecs.T @ cov.sxy  # (k, c): v_kᵀ Σ̃_xy
        per["cross"] = (
            s * _quad(cov.v, der.m, ju)
            + g_str * jnp.einsum("kb,nbc,knc->n", sxy_proj, der.m, jv))
      if second:
        per["hessian"] = 0.5 * (
            s * jnp.einsum("nc,nc->n", der.g, hu)
            + g_str * jnp.einsum("k,nc,knc->n", vals, der.g, hv))

  else:  # stochastic
    def probe(p):
      draw = perturbation.sample_perturbations(
          jax.random.fold_in(key, p), x, y, x, y, stats, sampler, theta_bar=moments)
      delta = draw.delta.reshape(n, -1).astype(x_t.dtype)
      _, jd, hd = _directional(fn, x_t, delta, second)
      res = {}
      if need_jac:
        res["jacobian"] = 0.5 * _quad(jd, der.huu, jd)
        res["cross"] = _quad(draw.eps, der.m, jd)
      if second:
        res["hessian"] = 0.5 * jnp.einsum("nc,nc->n", der.g, hd)
      if "label" in want:
        res["label"] = (jnp.zeros((n,), x_t.dtype) if der.hyy is None
                        else 0.5 * _quad(draw.eps, der.hyy, draw.eps))
      return res

    probes = jax.vmap(probe)(jnp.arange(num_probes))
    per.update({k: jnp.mean(v, axis=0) for k, v in probes.items()})

  if "label" in want and estimator != "stochastic":
    per["label"] = (jnp.zeros((n,), x_t.dtype) if der.hyy is None
                    else 0.5 * cov.yy_quadratic(der.hyy))

  for name in terms:
    chex.assert_shape(per[name], (n,))
    out[name] = jnp.mean(per[name])
  if estimator == "exact" and diagnostics:
    r1, r3 = _paper_terms(jac, der, cov)
    out.update(R1=jnp.mean(r1), R2=jnp.mean(per["hessian"]), R3=jnp.mean(r3),
               R4=jnp.mean(per["label"]))
  return out


def approx_mixup_risk(key: Optional[jax.Array], logits_fn, x: Any, y: Any,
                      stats: stats_lib.DataStats, sampler, *,
                      loss: Union[str, losses_lib.Loss] = "cross_entropy",
                      estimator: str = "exact", num_probes: int = 1,
                      terms: Sequence[str] = DEFAULT_TERMS, **kwargs) -> jax.Array:
  """Theorem 3's quadratic mixup risk: erm + the selected terms (a scalar).

      approx_mixup_risk(key, f, x, y, stats, law)             # key=None: exact/lowrank

  The default terms, `DEFAULT_TERMS` = ("jacobian", "cross", "label"), are the training
  objective, the same default as the trainer's `method.terms`: the paper drops the
  "hessian" term R2 in training, and rightly so: ½ Σ_k g_k tr(∇²f_k Σ^(i)_xx) is not
  bounded below (its sign follows the residual g and the curvature of f, which the
  model can make large; see results/paper_claims), so minimizing it diverges. Pass
  terms=TERMS (all four) for the full second-order value, e.g. to compare with the exact
  risk. Differentiable with respect to the parameters closed over in `logits_fn`.
  Arguments as in `approx_mixup_terms` (extra keyword arguments: rank, derivatives,
  moments, direction_batch_size). `x`, `y` are a batch, but `stats` belong to the whole
  training set: `data_stats(x_train, y_train)` once before training, or a
  `StatsAccumulator` streamed over every batch; never `data_stats(x, y)` of the batch.
  """
  _check_key(key, "approx_mixup_risk")
  kwargs.setdefault("diagnostics", False)
  out = approx_mixup_terms(key, logits_fn, x, y, stats, sampler, loss=loss,
                           estimator=estimator, num_probes=num_probes, terms=terms, **kwargs)
  if isinstance(terms, str):
    terms = (terms,)
  return out["erm"] + sum((out[t] for t in terms), jnp.zeros_like(out["erm"]))
