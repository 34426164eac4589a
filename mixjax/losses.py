"""Per-example losses ℓ(y, u) and the batch objectives built on them: ERM, mixup, RegMixup.

A loss is a function of ONE example, `loss(y, u) -> scalar`, with labels y (c,) (one-hot
or soft, float) and model outputs u (c,) (logits for cross-entropy). The batch objectives
vmap it (`batch_loss`) and take logits functions `logits_fn: (B, ...) -> (B, c)` that
treat examples independently, so everything here can be jitted, differentiated and
vmapped over seeds. Names are looked up in the `LOSSES` registry (`get_loss`).

The theory modules (docs/THEORY.md §4) differentiate these same functions with respect to u
and y (g = ∇_u ℓ, H_uu, M = ∇²_yu ℓ, H_yy), so they must stay smooth, pure `jnp`.
"""
from __future__ import annotations

from typing import Any, Callable, Union

import chex
import jax
import jax.numpy as jnp

from mixjax import mixing
from mixjax.registry import Registry

Loss = Callable[[jax.Array, jax.Array], jax.Array]
LogitsFn = Callable[[jax.Array], jax.Array]

LOSSES = Registry("loss function")


@LOSSES.register("cross_entropy")
def cross_entropy(y: jax.Array, u: jax.Array) -> jax.Array:
  """Soft-label cross-entropy ℓ(y, u) = −yᵀ log softmax(u) (docs/THEORY.md §4, Corollary 4).

  Args:
    y: labels (c,), one-hot or soft (need not sum to one: the formula is linear in y, as
      the second-order theory requires).
    u: logits (c,).

  Returns:
    scalar. Its derivatives: ∇_u ℓ = (1ᵀy) softmax(u) − y, ∇²_uu ℓ = (1ᵀy)(diag S − S Sᵀ),
    ∇²_yy ℓ = 0.
  """
  return -jnp.sum(y * jax.nn.log_softmax(u, axis=-1), axis=-1)


@LOSSES.register("squared")
def squared(y: jax.Array, u: jax.Array) -> jax.Array:
  """Squared loss ℓ(y, u) = ‖y − u‖² (no ½: the convention of docs/THEORY.md §4's affine case).

  Args:
    y: targets (c,).
    u: outputs (c,).

  Returns:
    scalar; ∇_u ℓ = 2(u − y), ∇²_uu ℓ = 2I, ∇²_yu ℓ = −2I, ∇²_yy ℓ = 2I.
  """
  return jnp.sum(jnp.square(y - u), axis=-1)


def get_loss(loss: Union[str, Loss]) -> Loss:
  """A per-example loss by name (`LOSSES`: "cross_entropy", "squared"), or `loss` itself
  when it is already a callable `loss(y, u) -> scalar`."""
  if callable(loss):
    return loss
  if not isinstance(loss, str):
    raise ValueError(
        f"loss must be a name ({', '.join(LOSSES.names())}) or a callable loss(y, u) -> "
        f"scalar; got {loss!r}.")
  return LOSSES.get(loss)


def smooth_labels(y: jax.Array, epsilon: Any) -> jax.Array:
  """Label smoothing towards the uniform distribution: (1 − ε) y + ε / c, (B, c).

  As timm applies it with mixup: the labels are smoothed first, then mixed (the mixed
  label of two smoothed labels is the smoothed mixed label, the map being affine). ε = 0
  returns `y` itself. Mixup's own label part is label smoothing towards the class prior
  ȳ with ε = 1 − θ̄ (Theorem 1, docs/THEORY.md §2; the trainer's
  `label_smoothing_matched` method).
  """
  if isinstance(epsilon, (int, float)) and epsilon == 0:
    return y
  return (1.0 - epsilon) * y + epsilon / y.shape[-1]


def batch_loss(loss: Union[str, Loss], y: jax.Array, u: jax.Array) -> jax.Array:
  """Per-example losses of a batch: ℓ(y_i, u_i) for i = 1..B, via `jax.vmap`.

  Args:
    loss: a per-example loss or its name.
    y: labels (B, c).
    u: outputs (B, c).

  Returns:
    (B,) losses (no reduction).
  """
  y = mixing.check_labels(y)
  u = jnp.asarray(u)
  if u.shape != y.shape:
    raise ValueError(
        f"Model outputs and labels must have the same shape (B, c); got outputs {u.shape} "
        f"and labels {y.shape}. Check the model's num_classes and the label one-hot depth.")
  out = jax.vmap(get_loss(loss))(y, u)
  chex.assert_shape(out, (y.shape[0],))
  return out


def _check_inputs(x: Any, y: Any) -> tuple[jax.Array, jax.Array]:
  x = jnp.asarray(x)
  if x.ndim < 1:
    raise ValueError(f"x must have a batch axis, shape (B, ...); got shape {x.shape}.")
  return x, mixing.check_labels(y, x.shape[0])


def erm_loss(logits_fn: LogitsFn, x: Any, y: Any, *,
             loss: Union[str, Loss] = "cross_entropy") -> jax.Array:
  """Empirical risk on a batch: (1/B) Σ_i ℓ(y_i, f(x_i)).

  Args:
    logits_fn: f, (B, ...) -> (B, c).
    x: inputs (B, ...).
    y: labels (B, c), one-hot or soft float (1-D integer ids raise a ValueError that
      says to use `jax.nn.one_hot`).
    loss: per-example loss or its name.

  Returns:
    scalar (exact batch mean).
  """
  x, y = _check_inputs(x, y)
  return jnp.mean(batch_loss(loss, y, logits_fn(x)))


def mixup_loss(key: jax.Array, logits_fn: LogitsFn, x: Any, y: Any, sampler, *,
               loss: Union[str, Loss] = "cross_entropy", granularity: str = "example",
               pairing: str = "permutation", fold: bool = False) -> jax.Array:
  """Mixup loss of a batch at one draw: (1/B) Σ_i ℓ(y_mix_i, f(x_mix_i)).

  With (x_mix, y_mix, λ, π) from `mixjax.mixing.mix`:
      x_mix_i = λ_i x_i + (1 − λ_i) x_π(i),   y_mix_i = λ_i y_i + (1 − λ_i) y_π(i).
  Over λ ~ sampler and a uniform random permutation π, its expectation is the batch's
  mixup risk E^mix = (1/B²) Σ_i Σ_j E_λ ℓ(λy_i + (1−λ)y_j, f(λx_i + (1−λ)x_j))
  (docs/THEORY.md, Setup); one call is a one-draw unbiased estimate of it.

  Args:
    key: PRNG key for λ and the partners (first, as in `jax.random`).
    logits_fn: f, (B, ...) -> (B, c), examples treated independently.
    x: inputs (B, ...).
    y: labels (B, c), one-hot or soft float.
    sampler: λ-law, `sampler(key, shape) -> λ` (`mixjax.samplers`).
    loss: per-example loss or its name.
    granularity: as in `mixjax.mixing.mix`.
    pairing: as in `mixjax.mixing.mix`.
    fold: as in `mixjax.mixing.mix`.

  Returns:
    scalar.
  """
  mixing.check_key(key, "mixup_loss(key, f, x, y, law)")
  x, y = _check_inputs(x, y)
  x_mix, y_mix = mixing.mix(key, x, y, sampler, granularity=granularity,
                            pairing=pairing, fold=fold)[:2]
  return jnp.mean(batch_loss(loss, y_mix, logits_fn(x_mix)))


def regmixup_loss(key: jax.Array, logits_fn: LogitsFn, x: Any, y: Any, sampler, *,
                  eta: float = 1.0, loss: Union[str, Loss] = "cross_entropy",
                  granularity: str = "example", pairing: str = "permutation",
                  fold: bool = False) -> jax.Array:
  """RegMixup (Pinto et al., NeurIPS 2022): ERM plus η times the mixup loss.

      (1/B) Σ_i ℓ(y_i, f(x_i)) + η (1/B) Σ_i ℓ(y_mix_i, f(x_mix_i))

  with the same draw as `mixup_loss(key, ..., sampler)` (so this equals
  `erm_loss + eta * mixup_loss` for the same key). The clean and the mixed batch go
  through `logits_fn` as one concatenated (2B, ...) batch, as in the RegMixup recipe.
  In expectation this is (1 + η) times the mixup risk whose θ-law puts mass 1/(1+η) at
  θ = 1 (docs/THEORY.md §6; `mixjax.samplers.regmixup`).

  Args:
    key: PRNG key for λ and the partners (first, as in `jax.random`).
    logits_fn: f, (N, ...) -> (N, c), examples treated independently.
    x: inputs (B, ...).
    y: labels (B, c), one-hot or soft float.
    sampler: λ-law of the mixup part (Pinto et al. use Beta(α, α) with large α, e.g. 10).
    eta: weight η ≥ 0 of the mixup part.
    loss: as in `mixup_loss`.
    granularity: as in `mixup_loss`.
    pairing: as in `mixup_loss`.
    fold: as in `mixup_loss`.

  Returns:
    scalar.
  """
  mixing.check_key(key, "regmixup_loss(key, f, x, y, law)")
  if isinstance(eta, (int, float)) and not eta >= 0:
    raise ValueError(f"RegMixup weight eta must be >= 0 (got {eta}).")
  x, y = _check_inputs(x, y)
  batch_size = x.shape[0]
  x_mix, y_mix = mixing.mix(key, x, y, sampler, granularity=granularity,
                            pairing=pairing, fold=fold)[:2]
  u = logits_fn(jnp.concatenate([x.astype(x_mix.dtype), x_mix], axis=0))
  per_example = batch_loss(loss, jnp.concatenate([y, y_mix], axis=0), u)
  return jnp.mean(per_example[:batch_size]) + eta * jnp.mean(per_example[batch_size:])
