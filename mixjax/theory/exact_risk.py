"""The exact mixup risk of a dataset, by θ-quadrature and an exact double sum over pairs.

    E^mix(f) = (1/n²) Σ_i Σ_j E_λ ℓ(λ y_i + (1−λ) y_j, f(λ x_i + (1−λ) x_j))
             = (1/n²) Σ_i Σ_j E_θ ℓ(θ y_i + (1−θ) y_j, f(θ x_i + (1−θ) x_j))
             ≈ (1/n²) Σ_i Σ_j Σ_q w_q ℓ(θ_q y_i + (1−θ_q) y_j, f(θ_q x_i + (1−θ_q) x_j))

The second line is docs/THEORY.md §1 (only θ = max(λ, 1−λ) matters: swap (i, j) with
λ ↦ 1−λ); the third uses the sampler's θ-quadrature (`mixjax.samplers.theta_quadrature`),
so the only error is the quadrature's (exact for laws with finitely many atoms, spectrally
small for smooth densities). The double sum is exact. This is the reference that
Theorem 1 and the approximate risk of Theorem 3 are tested against, and it is
differentiable in the parameters closed over in `logits_fn`.

For a mask law (docs/THEORY.md §8) the θ-nodes become the law's finite rule of masks
M_k with weights w_k (`samplers.mask_support`: exact for CutMix, every box size and
centre), and the pair (i, j) gives ℓ(λ_k y_i + (1−λ_k) y_j, f(M_k ⊙ x_i + (1−M_k) ⊙ x_j)),
λ_k = mean(M_k).
"""
from __future__ import annotations

import math
from typing import Any, Optional, Union

import jax
import jax.numpy as jnp

from mixjax import losses as losses_lib
from mixjax import mixing
from mixjax import samplers as samplers_lib

# Default number of model evaluations per chunk (chunk_size · n · num_nodes).
_EVALS_PER_CHUNK = 1 << 15


def exact_mixup_risk(logits_fn, x: Any, y: Any, sampler, *,
                     loss: Union[str, losses_lib.Loss] = "cross_entropy",
                     num_nodes: int = 32, chunk_size: Optional[int] = None) -> jax.Array:
  """Mixup risk over all n² ordered pairs (i, j) and the θ-quadrature of `sampler`.

  The pairs are processed in blocks of `chunk_size` first indices i (`jax.lax.map`), each
  block as one (chunk_size · n · num_nodes, ...) batch through `logits_fn`; padded rows of
  the last block are masked out.

  Args:
    logits_fn: f, (N, ...) -> (N, c), examples treated independently.
    x: inputs (n, ...).
    y: labels (n, c), one-hot or soft.
    sampler: λ-law (`mixjax.samplers`; only its θ-law enters), or a mask law with a
      finite rule (`samplers.mask_support`: CutMix, switches of it and λ-laws), then x is
      (n, H, W[, C]).
    loss: per-example loss or its name.
    num_nodes: θ-quadrature nodes (per λ-law part).
    chunk_size: first indices per block; default so that a block is ≈ 32k evaluations.

  Returns:
    scalar E^mix(f) (exact double sum, quadrature in θ).
  """
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    x = x.astype(jnp.result_type(float))
  if x.ndim < 1:
    raise ValueError(f"x must have a batch axis, shape (n, ...); got shape {x.shape}.")
  n = x.shape[0]
  y = mixing.check_labels(y, n)
  if not isinstance(num_nodes, int) or num_nodes < 1:
    raise ValueError(f"num_nodes must be a positive integer; got {num_nodes!r}.")
  trailing = x.shape[1:]
  if getattr(sampler, "is_mask", False):
    hw = samplers_lib.image_hw(trailing, sampler)
    nodes, weights = samplers_lib.mask_support(sampler, hw, num_nodes=num_nodes)
    label_nodes = nodes.reshape(len(nodes), -1).mean(axis=1)
    if len(trailing) == 3:
      nodes = nodes[..., None]
  else:
    nodes, weights = samplers_lib.theta_quadrature(sampler, num_nodes)
    label_nodes = nodes
  num_q = len(nodes)
  if chunk_size is None:
    chunk_size = max(1, min(n, _EVALS_PER_CHUNK // max(1, n * num_q)))
  if not isinstance(chunk_size, int) or chunk_size < 1:
    raise ValueError(f"chunk_size must be a positive integer; got {chunk_size!r}.")
  chunk_size = min(chunk_size, n)
  num_chunks = math.ceil(n / chunk_size)

  dtype = jnp.result_type(x.dtype, y.dtype)
  theta = jnp.asarray(nodes, dtype)
  w = jnp.asarray(weights, dtype)
  # Rows past n repeat real rows (finite values) and are masked out.
  idx = jnp.arange(num_chunks * chunk_size)
  mask = (idx < n).astype(dtype).reshape(num_chunks, chunk_size)
  idx = (idx % n).reshape(num_chunks, chunk_size)

  # θ-nodes broadcast over the trailing axes, or masks (K, H, W[, 1]) over the channels.
  th_x = theta.reshape((1, 1, num_q) + theta.shape[1:] + (1,) * (len(trailing) + 1
                                                                  - theta.ndim))
  th_y = jnp.asarray(label_nodes, dtype).reshape(1, 1, num_q, 1)

  def block(args):
    rows, row_mask = args
    xi, yi = x[rows], y[rows]  # (C, ...), (C, c)
    x_mix = th_x * xi[:, None, None] + (1 - th_x) * x[None, :, None]  # (C, n, Q, ...)
    y_mix = th_y * yi[:, None, None] + (1 - th_y) * y[None, :, None]  # (C, n, Q, c)
    size = chunk_size * n * num_q
    u = logits_fn(x_mix.reshape((size,) + trailing))
    per = losses_lib.batch_loss(loss, y_mix.reshape(size, y.shape[1]), u)
    per = per.reshape(chunk_size, n, num_q)
    return jnp.einsum("inq,q,i->", per, w, row_mask)

  return jnp.sum(jax.lax.map(block, (idx, mask))) / (n * n)
