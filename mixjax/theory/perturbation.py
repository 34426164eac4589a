"""Mixup as perturbed ERM: Theorem 1 and Lemma 2 of docs/THEORY.md (§2, §3).

With θ ~ Q (the law of max(λ, 1 − λ)) and j ~ Unif{1..n} independent, θ̄ = E θ,

    x̃_i = x̄ + θ̄ (x_i − x̄)                      ỹ_i = ȳ + θ̄ (y_i − ȳ)
    δ_i = (θ − θ̄)(x_i − x̄) + (1 − θ)(x_j − x̄)    ε_i = (θ − θ̄)(y_i − ȳ) + (1 − θ)(y_j − ȳ)

Theorem 1 (exact, for every f and ℓ):

    E^mix(f) = (1/n) Σ_i E_{θ,j} ℓ(ỹ_i + ε_i, f(x̃_i + δ_i)).

Lemma 2 (exact): with u_i = x̃_i − x̄, v_i = ỹ_i − ȳ, Σ̃ = θ̄² Σ,

    Σ^(i)_xx = E δ_i δ_iᵀ = (σ²/θ̄²) u_i u_iᵀ + (γ²/θ̄²) Σ̃_xx,

and likewise Σ^(i)_xy = E δ_i ε_iᵀ and Σ^(i)_yy = E ε_i ε_iᵀ: one rank-one term per
example plus one shared matrix. `PerturbationCovariances` stores exactly that (n×d
vectors and the shared d×d matrix or its top-k eigenpairs) and contracts it; it never
builds n copies of a d×d matrix.

Mask laws (docs/THEORY.md §8): with folded masks N (θ = mean N), N̄ = E N per pixel,

    x̃_i = x̄ + N̄ ⊙ (x_i − x̄)              ỹ_i = ȳ + θ̄ (y_i − ȳ)
    δ_i = (N − N̄) ⊙ (x_i − x̄) + (1 − N) ⊙ (x_j − x̄),  ε_i as above,

Theorem 1 holds exactly, and with u_i = x_i − x̄, v_i = y_i − ȳ and the mask moments
(`samplers.mask_moments`)

    E δ_i δ_iᵀ = C_N ⊙ u_i u_iᵀ + S_N ⊙ Σ_xx,   E δ_i ε_iᵀ = diag(c_N) u_i v_iᵀ + diag(s_N) Σ_xy,
    E ε_i ε_iᵀ = σ² v_i v_iᵀ + γ² Σ_yy

(`MaskPerturbationCovariances`; C_N, S_N live on the H·W pixel grid and act on every
channel alike). Everywhere a θ̄ is taken, the law's moments may be passed instead
(`samplers.law_moments(law, input_shape)`): θ-moments give θ̄, mask moments give the
per-pixel N̄ on the inputs and θ̄ on the labels.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional, Union

import chex
import flax.struct
import jax
import jax.numpy as jnp

from mixjax import losses as losses_lib
from mixjax import mixing
from mixjax import samplers as samplers_lib
from mixjax.theory import stats as stats_lib

# fold_in tags of the perturbation draw: one stream per purpose.
_THETA_STREAM = 0
_PARTNER_STREAM = 1


def _as_float(x: Any) -> jax.Array:
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    x = x.astype(jnp.result_type(float))
  return x


def flatten_inputs(x: Any, stats: stats_lib.DataStats, *, name: str = "x") -> jax.Array:
  """x (B, ...) as a float (B, d) array, checking d against the statistics."""
  x = _as_float(x)
  if x.ndim < 1:
    raise ValueError(f"{name} must have a batch axis, shape (B, ...); got shape {x.shape}.")
  d = math.prod(x.shape[1:])
  if d != stats.dim:
    raise ValueError(
        f"{name} has per-example shape {x.shape[1:]} (dimension {d}) but the data statistics "
        f"are for inputs of shape {stats.input_shape} (dimension {stats.dim}). Compute the "
        "stats with `data_stats` on training data shaped like these inputs.")
  return x.reshape(x.shape[0], d)


def _check_theta_bar(theta_bar: Any) -> None:
  if isinstance(theta_bar, (int, float)) and not 0.0 < theta_bar <= 1.0:
    raise ValueError(
        f"theta_bar = E max(λ, 1 − λ) lies in [1/2, 1]; got {theta_bar}. Take it from "
        "`mixjax.samplers.law_moments(law, input_shape)` (its `mean`, or pass the moments).")


def _theta_bar(theta_bar: Any) -> Any:
  """θ̄ from a number or from a law's moments (θ-moments or mask moments: `.mean`)."""
  if isinstance(theta_bar, (samplers_lib.ThetaMoments, samplers_lib.MomentArrays,
                            samplers_lib.MaskMoments)):
    return theta_bar.mean
  _check_theta_bar(theta_bar)
  return theta_bar


def _is_mask(moments: Any) -> bool:
  return isinstance(moments, samplers_lib.MaskMoments)


def pixel_grid(input_shape, moments) -> int:
  """The number of channels C of per-example inputs (H, W[, C]) on the moments' grid."""
  hw = moments.hw
  input_shape = tuple(input_shape)
  if len(input_shape) not in (2, 3) or input_shape[:2] != hw:
    raise ValueError(
        f"Mask moments are for {hw[0]}×{hw[1]} images, but the inputs have per-example "
        f"shape {input_shape}. Compute them with samplers.law_moments(law, input_shape) "
        "for these inputs.")
  return input_shape[2] if len(input_shape) == 3 else 1


def tile_channels(a: jax.Array, channels: int, axes: int = 1) -> jax.Array:
  """A pixel-grid vector (P,) or matrix (P, P) on the flattened (H, W, C) inputs, (P·C,)
  or (P·C, P·C): every channel of a pixel gets the pixel's value (masks are shared by
  the channels; flat index p·C + channel)."""
  if channels == 1:
    return a
  if axes == 1:
    return jnp.repeat(a, channels, axis=-1)
  return jnp.repeat(jnp.repeat(a, channels, axis=-1), channels, axis=-2)


def _input_factor(theta_bar: Any, input_shape) -> Any:
  """θ̄ (a scalar), or the per-pixel N̄ of mask moments flattened to (d,)."""
  if not _is_mask(theta_bar):
    return _theta_bar(theta_bar)
  channels = pixel_grid(input_shape, theta_bar)
  n_bar = jnp.asarray(theta_bar.n_bar)
  return tile_channels(n_bar.reshape(n_bar.shape[:-2] + (-1,)), channels)


def transform_inputs(x: Any, stats: stats_lib.DataStats, theta_bar: Any) -> jax.Array:
  """x̃ = x̄ + θ̄ (x − x̄) (Theorem 1), x (B, ...) -> (B, ...) (same shape).

  With mask moments (§8), x̃ = x̄ + N̄ ⊙ (x − x̄), N̄ (H, W) shared by the channels.
  """
  x = _as_float(x)
  x_flat = flatten_inputs(x, stats)
  factor = _input_factor(theta_bar, x.shape[1:])
  x_mean = stats.x_mean.astype(x.dtype)
  return (x_mean + factor * (x_flat - x_mean)).reshape(x.shape)


def transform_labels(y: Any, stats: stats_lib.DataStats, theta_bar: Any) -> jax.Array:
  """ỹ = ȳ + θ̄ (y − ȳ) (Theorem 1; label smoothing towards ȳ with weight 1 − θ̄), (B, c)."""
  theta_bar = _theta_bar(theta_bar)
  y = mixing.check_labels(y)
  if y.shape[1] != stats.num_classes:
    raise ValueError(
        f"y has {y.shape[1]} classes but the data statistics have {stats.num_classes}.")
  y_mean = stats.y_mean.astype(y.dtype)
  return y_mean + theta_bar * (y - y_mean)


def transform(x: Any, y: Any, stats: stats_lib.DataStats,
              theta_bar: Any) -> tuple[jax.Array, jax.Array]:
  """The transformed data of Theorem 1: (x̃, ỹ) = (x̄ + θ̄(x − x̄), ȳ + θ̄(y − ȳ)).

  For a mask law (§8): (x̃, ỹ) = (x̄ + N̄ ⊙ (x − x̄), ȳ + θ̄(y − ȳ)).

  Args:
    x: inputs (B, ...), any trailing shape with prod = stats.dim; (B, H, W[, C]) for
      mask moments.
    y: labels (B, c).
    stats: training-set `DataStats` (x̄, ȳ).
    theta_bar: θ̄ = E θ of the law (a number), or the law's moments
      (`samplers.law_moments(law, input_shape)`): θ-moments use their mean, mask moments
      their N̄ on the inputs and θ̄ on the labels.

  Returns:
    x̃ (B, ...) and ỹ (B, c), exact.
  """
  x = _as_float(x)
  y = mixing.check_labels(y, x.shape[0] if x.ndim else None)
  return transform_inputs(x, stats, theta_bar), transform_labels(y, stats, theta_bar)


class Perturbations(NamedTuple):
  """One draw of Theorem 1's perturbations and the draw itself.

  Attributes:
    delta: δ (B, ...) (same shape as x).
    eps: ε (B, c).
    theta: θ (B,), θ = max(λ, 1 − λ) with λ from the sampler (= mean N for masks).
    partner: j (B,) int32, indices into the pool.
    mask: the folded masks N (B, H, W) of a mask law, or None for a λ-law.
  """
  delta: jax.Array
  eps: jax.Array
  theta: jax.Array
  partner: jax.Array
  mask: Optional[jax.Array] = None


def sample_perturbations(key: jax.Array, x: Any, y: Any, x_pool: Any, y_pool: Any,
                         stats: stats_lib.DataStats, sampler, *,
                         theta_bar: Optional[float] = None) -> Perturbations:
  """Draws (θ, j) per example and returns Theorem 1's δ and ε (docs/THEORY.md §2).

      δ_i = (θ_i − θ̄)(x_i − x̄) + (1 − θ_i)(x_pool[j_i] − x̄)
      ε_i = (θ_i − θ̄)(y_i − ȳ) + (1 − θ_i)(y_pool[j_i] − ȳ)

  θ_i = max(λ_i, 1 − λ_i) with λ_i ~ sampler (key stream `fold_in(key, 0)`), j_i uniform
  over the pool (stream `fold_in(key, 1)`). With the pool = the training set and (x̄, ȳ, θ̄)
  its exact means, E δ = E ε = 0 and the second moments are Lemma 2's. With the pool =
  the batch, this is the minibatch version. For a mask law (§8) the folded mask N_i
  (θ_i = mean N_i) is drawn from the same stream and
  δ_i = (N_i − N̄) ⊙ (x_i − x̄) + (1 − N_i) ⊙ (x_pool[j_i] − x̄).

  Args:
    key: PRNG key.
    x: inputs (B, ...); (B, H, W[, C]) for a mask law. y: labels (B, c).
    x_pool: partner inputs (P, ...); y_pool: partner labels (P, c).
    stats: `DataStats` (x̄, ȳ).
    sampler: a λ-law or a mask law.
    theta_bar: θ̄, or the law's moments (mask moments for a mask law); default
      `samplers.law_moments(sampler, x.shape[1:])`.

  Returns:
    `Perturbations(delta, eps, theta, partner, mask)`.
  """
  mixing.check_key(key, "sample_perturbations(key, x, y, x_pool, y_pool, stats, law)")
  x = _as_float(x)
  y = mixing.check_labels(y, x.shape[0] if x.ndim else None)
  x_flat = flatten_inputs(x, stats)
  pool_flat = flatten_inputs(x_pool, stats, name="x_pool")
  y_pool = mixing.check_labels(y_pool, pool_flat.shape[0], name="y_pool")
  if theta_bar is None:
    theta_bar = samplers_lib.law_moments(sampler, x.shape[1:])
  batch, pool_size = x_flat.shape[0], pool_flat.shape[0]
  theta_key = jax.random.fold_in(key, _THETA_STREAM)

  mask = None
  if getattr(sampler, "is_mask", False):
    if not _is_mask(theta_bar):
      raise ValueError(
          f"{sampler.label} is a mask law: pass its mask moments as theta_bar "
          "(samplers.law_moments(law, input_shape)), not a θ̄.")
    channels = pixel_grid(x.shape[1:], theta_bar)
    m, lam = sampler.masks(theta_key, batch, theta_bar.hw)
    flip = lam < 0.5
    mask = jnp.where(flip[:, None, None], 1.0 - m, m)
    theta = jnp.where(flip, 1.0 - lam, lam).astype(x_flat.dtype)
    n_flat = tile_channels(mask.reshape(batch, -1), channels).astype(x_flat.dtype)
    a = n_flat - _input_factor(theta_bar, x.shape[1:]).astype(x_flat.dtype)
    b = 1.0 - n_flat
    theta_bar = theta_bar.mean
  else:
    theta_bar = _theta_bar(theta_bar)
    lam = jnp.asarray(sampler(theta_key, (batch,)))
    theta = jnp.maximum(lam, 1 - lam).astype(x_flat.dtype)
  partner = jax.random.randint(
      jax.random.fold_in(key, _PARTNER_STREAM), (batch,), 0, pool_size, dtype=jnp.int32)
  if mask is None:
    a, b = (theta - theta_bar)[:, None], (1 - theta)[:, None]
  x_mean, y_mean = stats.x_mean.astype(x_flat.dtype), stats.y_mean.astype(y.dtype)
  delta = a * (x_flat - x_mean) + b * (pool_flat.astype(x_flat.dtype)[partner] - x_mean)
  a_y, b_y = (theta - theta_bar)[:, None], (1 - theta)[:, None]
  eps = (a_y.astype(y.dtype) * (y - y_mean)
         + b_y.astype(y.dtype) * (y_pool.astype(y.dtype)[partner] - y_mean))
  chex.assert_shape(delta, x_flat.shape)
  chex.assert_shape(eps, y.shape)
  return Perturbations(delta.reshape(x.shape), eps, theta, partner, mask)


def perturbed_erm_loss(key: jax.Array, logits_fn, x: Any, y: Any, sampler,
                       stats: stats_lib.DataStats, *,
                       loss: Union[str, losses_lib.Loss] = "cross_entropy",
                       num_draws: int = 1, theta_bar: Optional[float] = None) -> jax.Array:
  """Monte-Carlo form of Theorem 1's right-hand side on a batch.

      (1/(B·D)) Σ_{draws} Σ_i ℓ(ỹ_i + ε_i, f(x̃_i + δ_i))

  with D = `num_draws` independent draws of (θ, j) per example and partners j drawn from
  the batch itself. Unbiased for the batch's mixup risk when `stats` are the batch's
  statistics (and for the perturbed form of the full-data risk with the training stats
  and pool; here the pool is the batch). All D·B perturbed inputs go through `logits_fn`
  as one batch.

  Args:
    key: PRNG key (first, as in `jax.random`; draw k uses `fold_in(key, k)`).
    logits_fn: f, (N, ...) -> (N, c), examples treated independently.
    x: inputs (B, ...) ((B, H, W[, C]) for a mask law); y: labels (B, c).
    sampler: a λ-law or a mask law (then (N, j) are drawn and δ, ε are §8's).
    stats: `DataStats` of the training set (x̄, ȳ).
    loss: per-example loss or its name.
    num_draws: D ≥ 1.
    theta_bar: θ̄, or the law's moments (mask moments for a mask law); default
      `samplers.law_moments(sampler, x.shape[1:])`.

  Returns:
    scalar (an unbiased estimate; exact only in expectation).
  """
  mixing.check_key(key, "perturbed_erm_loss(key, f, x, y, law, stats)")
  if not isinstance(num_draws, int) or num_draws < 1:
    raise ValueError(f"num_draws must be a positive integer; got {num_draws!r}.")
  x = _as_float(x)
  y = mixing.check_labels(y, x.shape[0] if x.ndim else None)
  if theta_bar is None:
    theta_bar = samplers_lib.law_moments(sampler, x.shape[1:])
  x_t, y_t = transform(x, y, stats, theta_bar)
  keys = jax.vmap(lambda k: jax.random.fold_in(key, k))(jnp.arange(num_draws))
  draw = jax.vmap(
      lambda k: sample_perturbations(k, x, y, x, y, stats, sampler, theta_bar=theta_bar))(keys)
  x_in = (x_t[None] + draw.delta).reshape((num_draws * x.shape[0],) + x.shape[1:])
  y_in = (y_t[None] + draw.eps).reshape(num_draws * x.shape[0], y.shape[1])
  return jnp.mean(losses_lib.batch_loss(loss, y_in, logits_fn(x_in)))


def _per_example(a: jax.Array, n: int) -> bool:
  return a.ndim == 3 and a.shape[0] == n


@flax.struct.dataclass
class PerturbationCovariances:
  """Lemma 2 as a structured object (docs/THEORY.md §3); a JAX pytree.

      Σ^(i)_xx = s u_i u_iᵀ + g Σ̃_xx,  Σ^(i)_xy = s u_i v_iᵀ + g Σ̃_xy,
      Σ^(i)_yy = s v_i v_iᵀ + g Σ̃_yy,

  with s = σ²/θ̄² (`strength`), g = γ²/θ̄² (`global_strength`), u_i = x̃_i − x̄,
  v_i = ỹ_i − ȳ and Σ̃ = θ̄² Σ. Exact when the shared Σ̃_xx is dense; with only the top-k
  eigenpairs of Σ_xx it is replaced by Σ_k λ̃_k v_k v_kᵀ (exact at k = rank Σ_xx).

  Attributes:
    u: (n, d) per-example input deviations x̃_i − x̄.
    v: (n, c) per-example label deviations ỹ_i − ȳ.
    strength: scalar σ²/θ̄².
    global_strength: scalar γ²/θ̄².
    sxx: Σ̃_xx (d, d) or None.
    sxy: Σ̃_xy (d, c).
    syy: Σ̃_yy (c, c).
    eigvecs: (d, k) eigenvectors of Σ̃_xx (same as Σ_xx's) or None.
    eigvals: (k,) eigenvalues of Σ̃_xx (θ̄² λ_k) or None.
  """
  u: jax.Array
  v: jax.Array
  strength: jax.Array
  global_strength: jax.Array
  sxx: Optional[jax.Array]
  sxy: jax.Array
  syy: jax.Array
  eigvecs: Optional[jax.Array]
  eigvals: Optional[jax.Array]

  @property
  def n(self) -> int:
    return self.u.shape[0]

  def shared_xx(self) -> jax.Array:
    """Σ̃_xx as a dense (d, d) matrix (from its eigenpairs when only those are kept)."""
    if self.sxx is not None:
      return self.sxx
    return (self.eigvecs * self.eigvals) @ self.eigvecs.T

  def _shared_xx_quadratic(self, a: jax.Array) -> jax.Array:
    """tr(A Σ̃_xx) for A (d, d) -> scalar, or A (n, d, d) -> (n,)."""
    if self.sxx is not None:
      return jnp.einsum("...ab,ba->...", a, self.sxx)
    return jnp.einsum("...ab,bk,ak,k->...", a, self.eigvecs, self.eigvecs, self.eigvals)

  def xx_trace(self, i: Optional[int] = None) -> jax.Array:
    """tr Σ^(i)_xx = s ‖u_i‖² + g tr Σ̃_xx: (n,), or a scalar for example i."""
    if self.sxx is not None:
      shared = jnp.trace(self.sxx)
    else:
      shared = jnp.sum(self.eigvals)
    u = self.u if i is None else self.u[i]
    return self.strength * jnp.sum(u * u, axis=-1) + self.global_strength * shared

  def xx_quadratic(self, a: jax.Array) -> jax.Array:
    """tr(A_i Σ^(i)_xx) = s u_iᵀ A_i u_i + g tr(A_i Σ̃_xx), (n,).

    Args:
      a: a shared (d, d) matrix, or per-example matrices (n, d, d) (small d only).
    """
    spec = "nab" if _per_example(a, self.n) else "ab"
    per = jnp.einsum(f"na,{spec},nb->n", self.u, a, self.u)
    return self.strength * per + self.global_strength * self._shared_xx_quadratic(a)

  def _apply_u(self, lin: jax.Array) -> jax.Array:
    """L_i u_i, (n, m), for per-example (n, m, d) or shared (m, d) maps."""
    if lin.ndim == 3:
      return jnp.einsum("nmd,nd->nm", lin, self.u)
    return self.u @ lin.T

  def xx_sandwich(self, lin: jax.Array) -> jax.Array:
    """L_i Σ^(i)_xx L_iᵀ = s (L_i u_i)(L_i u_i)ᵀ + g L_i Σ̃_xx L_iᵀ, (n, m, m).

    Args:
      lin: per-example (n, m, d) or shared (m, d) linear maps, e.g. Jacobians J_i (c×d).
    """
    lu = self._apply_u(lin)
    lin_t = jnp.swapaxes(lin, -1, -2)
    if self.sxx is not None:
      shared = lin @ self.sxx @ lin_t
    else:
      lv = lin @ self.eigvecs
      shared = (lv * self.eigvals) @ jnp.swapaxes(lv, -1, -2)
    shared = jnp.broadcast_to(shared, (self.n,) + shared.shape[-2:])
    return self.strength * lu[:, :, None] * lu[:, None, :] + self.global_strength * shared

  def xy_apply(self, lin: jax.Array) -> jax.Array:
    """L_i Σ^(i)_xy = s (L_i u_i) v_iᵀ + g L_i Σ̃_xy, (n, m, c).

    Args:
      lin: per-example (n, m, d) or shared (m, d) linear maps.
    """
    lu = self._apply_u(lin)
    shared = jnp.broadcast_to(lin @ self.sxy, (self.n,) + lin.shape[-2:-1] + self.sxy.shape[-1:])
    return self.strength * lu[:, :, None] * self.v[:, None, :] + self.global_strength * shared

  def xy_contract(self, b: jax.Array) -> jax.Array:
    """tr(B_i Σ^(i)_xy) = s v_iᵀ B_i u_i + g tr(B_i Σ̃_xy), (n,), B (c, d) or (n, c, d)."""
    return jnp.trace(self.xy_apply(b), axis1=-2, axis2=-1)

  def yy_quadratic(self, a: jax.Array) -> jax.Array:
    """tr(A_i Σ^(i)_yy) = s v_iᵀ A_i v_i + g tr(A_i Σ̃_yy), (n,), A (c, c) or (n, c, c)."""
    spec = "nab" if _per_example(a, self.n) else "ab"
    per = jnp.einsum(f"na,{spec},nb->n", self.v, a, self.v)
    return self.strength * per + self.global_strength * jnp.einsum(
        f"{spec},ba->{'n' if spec == 'nab' else ''}", a, self.syy)

  def dense(self, i: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(Σ^(i)_xx (d, d), Σ^(i)_xy (d, c), Σ^(i)_yy (c, c)) of example i. For tests only."""
    u, v = self.u[i], self.v[i]
    s, g = self.strength, self.global_strength
    return (s * jnp.outer(u, u) + g * self.shared_xx(),
            s * jnp.outer(u, v) + g * self.sxy,
            s * jnp.outer(v, v) + g * self.syy)


@flax.struct.dataclass
class MaskPerturbationCovariances:
  """Lemma 2 for a mask law (docs/THEORY.md §8) as a structured object; a JAX pytree.

      Σ^(i)_xx = C ⊙ u_i u_iᵀ + S ⊙ Σ_xx,   Σ^(i)_xy = diag(c) u_i v_iᵀ + diag(s) Σ_xy,
      Σ^(i)_yy = σ² v_i v_iᵀ + γ² Σ_yy,

  with u_i = x_i − x̄, v_i = y_i − ȳ (not scaled by θ̄: the mask moments carry the
  scale) and C = C_N, S = S_N, c = c_N, s = s_N of `samplers.mask_moments` on the H·W
  pixel grid, tiled over the channels (every channel of a pixel shares its mask value).
  Per-example products use (w ⊙ u)ᵀ C (w ⊙ u) on the pixel grid: O(P²) per vector
  (P = H·W), never a d×d matrix per example. The methods match `PerturbationCovariances`,
  so the approximate risk contracts either.

  Attributes:
    u: (n, d) x_i − x̄.  v: (n, c) y_i − ȳ.
    c_mat, s_mat: (P, P) C_N, S_N.  c_vec, s_vec: (P,) c_N, s_N.
    var: σ².  gamma2: γ².
    sxx: Σ_xx (d, d) or None; sxy: Σ_xy (d, c); syy: Σ_yy (c, c).
    eigvecs: (d, k) or None; eigvals: (k,) or None (top-k eigenpairs of Σ_xx).
    channels: C (static).
  """
  u: jax.Array
  v: jax.Array
  c_mat: jax.Array
  s_mat: jax.Array
  c_vec: jax.Array
  s_vec: jax.Array
  var: jax.Array
  gamma2: jax.Array
  sxx: Optional[jax.Array]
  sxy: jax.Array
  syy: jax.Array
  eigvecs: Optional[jax.Array]
  eigvals: Optional[jax.Array]
  channels: int = flax.struct.field(pytree_node=False, default=1)

  @property
  def n(self) -> int:
    return self.u.shape[0]

  def _pixels(self, a: jax.Array) -> jax.Array:
    """(..., d) -> (..., P): the sum over each pixel's channels."""
    return a.reshape(a.shape[:-1] + (-1, self.channels)).sum(-1)

  def sigma_xx(self) -> jax.Array:
    """Σ_xx (d, d), dense (from its eigenpairs when only those are kept)."""
    if self.sxx is not None:
      return self.sxx
    return (self.eigvecs * self.eigvals) @ self.eigvecs.T

  def shared_xx(self) -> jax.Array:
    """S ⊙ Σ_xx, (d, d) (dense: for the exact estimator of small problems)."""
    return tile_channels(self.s_mat, self.channels, axes=2) * self.sigma_xx()

  def shared_xy(self) -> jax.Array:
    """diag(s) Σ_xy, (d, c)."""
    return tile_channels(self.s_vec, self.channels)[:, None] * self.sxy

  def _per_quad(self, w: jax.Array) -> jax.Array:
    """(w ⊙ u_i)ᵀ C (w ⊙ u_i) summed over channels per pixel; w (n, m, d) -> (n, m, m)."""
    wu = self._pixels(w * self.u[:, None, :])  # (n, m, P)
    return jnp.einsum("nap,pq,nbq->nab", wu, self.c_mat, wu)

  def xx_trace(self, i: Optional[int] = None) -> jax.Array:
    """tr Σ^(i)_xx = Σ_p C_pp Σ_ch u_(p,ch)² + tr(S ⊙ Σ_xx): (n,), or a scalar."""
    u = self.u if i is None else self.u[i]
    per = self._pixels(u * u) @ jnp.diag(self.c_mat)
    diag_s = tile_channels(jnp.diag(self.s_mat), self.channels)
    sig_diag = (jnp.diag(self.sxx) if self.sxx is not None
                else jnp.einsum("dk,k,dk->d", self.eigvecs, self.eigvals, self.eigvecs))
    return per + jnp.sum(diag_s * sig_diag)

  def xx_quadratic(self, a: jax.Array) -> jax.Array:
    """tr(A_i Σ^(i)_xx) = u_iᵀ (A_i ⊙ C) u_i + tr(A_i (S ⊙ Σ_xx)), (n,).

    Args:
      a: a shared (d, d) matrix, or per-example matrices (n, d, d) (small d only).
    """
    spec = "nab" if _per_example(a, self.n) else "ab"
    c_full = tile_channels(self.c_mat, self.channels, axes=2)
    per = jnp.einsum(f"na,{spec},ab,nb->n", self.u, a, c_full, self.u)
    shared = jnp.einsum(f"{spec},ba->{'n' if spec == 'nab' else ''}", a, self.shared_xx())
    return per + shared

  def xx_sandwich(self, lin: jax.Array) -> jax.Array:
    """L_i Σ^(i)_xx L_iᵀ = (L_i ⊙ u_i) C (L_i ⊙ u_i)ᵀ + L_i (S ⊙ Σ_xx) L_iᵀ, (n, m, m).

    Args:
      lin: per-example (n, m, d) or shared (m, d) linear maps, e.g. Jacobians J_i (c×d).
    """
    lin_n = lin if lin.ndim == 3 else jnp.broadcast_to(lin, (self.n,) + lin.shape)
    shared = lin @ self.shared_xx() @ jnp.swapaxes(lin, -1, -2)
    shared = jnp.broadcast_to(shared, (self.n,) + shared.shape[-2:])
    return self._per_quad(lin_n) + shared

  def xy_apply(self, lin: jax.Array) -> jax.Array:
    """L_i Σ^(i)_xy = (L_i (c ⊙ u_i)) v_iᵀ + L_i diag(s) Σ_xy, (n, m, c).

    Args:
      lin: per-example (n, m, d) or shared (m, d) linear maps.
    """
    cu = tile_channels(self.c_vec, self.channels) * self.u  # (n, d)
    lcu = (jnp.einsum("nmd,nd->nm", lin, cu) if lin.ndim == 3 else cu @ lin.T)
    shared = lin @ self.shared_xy()
    shared = jnp.broadcast_to(shared, (self.n,) + shared.shape[-2:])
    return lcu[:, :, None] * self.v[:, None, :] + shared

  def xy_contract(self, b: jax.Array) -> jax.Array:
    """tr(B_i Σ^(i)_xy), (n,), B (c, d) or (n, c, d)."""
    return jnp.trace(self.xy_apply(b), axis1=-2, axis2=-1)

  def yy_quadratic(self, a: jax.Array) -> jax.Array:
    """tr(A_i Σ^(i)_yy) = σ² v_iᵀ A_i v_i + γ² tr(A_i Σ_yy), (n,), A (c, c) or (n, c, c)."""
    spec = "nab" if _per_example(a, self.n) else "ab"
    per = jnp.einsum(f"na,{spec},nb->n", self.v, a, self.v)
    return self.var * per + self.gamma2 * jnp.einsum(
        f"{spec},ba->{'n' if spec == 'nab' else ''}", a, self.syy)

  def dense(self, i: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(Σ^(i)_xx (d, d), Σ^(i)_xy (d, c), Σ^(i)_yy (c, c)) of example i. For tests only."""
    u, v = self.u[i], self.v[i]
    c_full = tile_channels(self.c_mat, self.channels, axes=2)
    c_vec = tile_channels(self.c_vec, self.channels)
    return (c_full * jnp.outer(u, u) + self.shared_xx(),
            jnp.outer(c_vec * u, v) + self.shared_xy(),
            self.var * jnp.outer(v, v) + self.gamma2 * self.syy)


def perturbation_covariances(x: Any, y: Any, stats: stats_lib.DataStats,
                             moments) -> PerturbationCovariances:
  """Lemma 2 (docs/THEORY.md §3) for the examples (x, y): exact second moments of (δ_i, ε_i).

  Args:
    x: inputs (n, ...) (any trailing shape with prod = stats.dim; (n, H, W[, C]) for
      mask moments).
    y: labels (n, c).
    stats: `DataStats` of the training set (x̄, ȳ, Σ); with `rank=k` stats the shared
      Σ̃_xx is kept as its k eigenpairs.
    moments: the law's moments (`mixjax.samplers.law_moments(law, input_shape)`):
      θ-moments (`mean`, `strength`, `global_strength`), or mask moments (§8).

  Returns:
    `PerturbationCovariances` for θ-moments, O(n(d + c) + d²) memory (O(n(d + c) + dk)
    at rank k); `MaskPerturbationCovariances` for mask moments, O(n(d + c) + d² + P²).
  """
  x_flat = flatten_inputs(x, stats)
  y = mixing.check_labels(y, x_flat.shape[0])
  stats_lib.check_stats(stats, x_flat.shape[1], y.shape[1], where="perturbation_covariances")
  if _is_mask(moments):
    channels = pixel_grid(jnp.shape(x)[1:], moments)
    dtype = jnp.result_type(x_flat.dtype, y.dtype)
    cast = lambda a: None if a is None else jnp.asarray(a, dtype)
    return MaskPerturbationCovariances(
        u=x_flat.astype(dtype) - stats.x_mean.astype(dtype),
        v=y.astype(dtype) - stats.y_mean.astype(dtype),
        c_mat=cast(moments.c_mat), s_mat=cast(moments.s_mat), c_vec=cast(moments.c_vec),
        s_vec=cast(moments.s_vec), var=cast(moments.var), gamma2=cast(moments.gamma2),
        sxx=cast(stats.sxx), sxy=cast(stats.sxy), syy=cast(stats.syy),
        eigvecs=cast(stats.eigvecs), eigvals=cast(stats.eigvals), channels=channels)
  theta_bar = moments.mean
  dtype = jnp.result_type(x_flat.dtype, y.dtype)
  tb2 = theta_bar ** 2
  u = theta_bar * (x_flat.astype(dtype) - stats.x_mean.astype(dtype))
  v = theta_bar * (y.astype(dtype) - stats.y_mean.astype(dtype))
  cast = lambda a: None if a is None else a.astype(dtype)
  return PerturbationCovariances(
      u=u, v=v,
      strength=jnp.asarray(moments.strength, dtype),
      global_strength=jnp.asarray(moments.global_strength, dtype),
      sxx=None if stats.sxx is None else tb2 * cast(stats.sxx),
      sxy=tb2 * cast(stats.sxy),
      syy=tb2 * cast(stats.syy),
      eigvecs=cast(stats.eigvecs),
      eigvals=None if stats.eigvals is None else tb2 * cast(stats.eigvals))
