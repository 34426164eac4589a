"""Mixup's input/label mixing: pairing, granularity, and the draw it made.

For a batch (x_i, y_i), i = 1..B, mixup forms

    x_mix_i = λ_i x_i + (1 − λ_i) x_{π(i)}        y_mix_i = λ_i y_i + (1 − λ_i) y_{π(i)}

with λ_i drawn from a λ-law (a sampler, see `mixjax.samplers`) and π a pairing of the
batch. A mask law (CutMix, GMix, a switch; docs/THEORY.md §8) draws a mask M_i ∈ [0, 1]^(H×W)
per image instead, shared by the channels, and λ_i = mean(M_i):

    x_mix_i = M_i ⊙ x_i + (1 − M_i) ⊙ x_{π(i)}    y_mix_i = λ_i y_i + (1 − λ_i) y_{π(i)}

A λ-law is the constant mask M_i = λ_i·1, so both go through one code path. `mix` returns
the mixed batch *and* its draw (mask, λ, π) so that analysis and tests can see exactly
what happened (STYLE.md, "samplers return their draw").

Averaged over λ and over a uniformly random partner, this is an unbiased estimate of the
mixup risk E^mix of docs/THEORY.md (Setup); by docs/THEORY.md §1 only θ = max(λ, 1 − λ) matters for
that risk. Folding λ to max(λ, 1 − λ) (`fold=True`) therefore leaves the expected loss
unchanged whenever the pairing is symmetric in law: a uniform permutation makes every
ordered pair (i, j) equally likely (P(π(i) = j) = 1/B, so the expectation over π is the
full double sum over the batch), and `pairing="reverse"` contains both (i, π(i)) and
(π(i), i). Folding changes only the variance.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Tuple

import chex
import jax
import jax.numpy as jnp

Sampler = Callable[..., jax.Array]

GRANULARITIES = ("example", "batch")
PAIRINGS = ("permutation", "reverse")

# fold_in tags: one independent stream per purpose.
_LAM_STREAM = 0
_PARTNER_STREAM = 1


def check_labels(y: Any, batch_size: int | None = None, *, name: str = "y") -> jax.Array:
  """Validates (B, c) labels and returns them as a float array.

  Labels in mixjax are one-hot or soft, shape (B, c), float. 1-D integer class ids are
  the common mistake; they get a ValueError that says how to convert them
  (`jax.nn.one_hot(y, num_classes)`). 2-D integer/bool one-hot labels are cast to
  float32 (exact).

  Args:
    y: labels, (B, c).
    batch_size: if given, the expected B (e.g. x.shape[0]).
    name: the argument's name in error messages.

  Returns:
    y as a floating array of shape (B, c).
  """
  y = jnp.asarray(y)
  if y.ndim == 1:
    kind = "integer class ids" if not jnp.issubdtype(y.dtype, jnp.floating) else "a 1-D array"
    raise ValueError(
        f"Labels {name} have shape {y.shape} ({kind}); mixjax needs one-hot or soft labels "
        f"of shape (B, c), float. Convert them with "
        f"`{name} = jax.nn.one_hot({name}, num_classes)`.")
  if y.ndim != 2:
    raise ValueError(
        f"Labels {name} must have shape (B, c) (one-hot or soft, float); got shape {y.shape}.")
  if batch_size is not None and y.shape[0] != batch_size:
    raise ValueError(
        f"Batch size mismatch: x has {batch_size} examples but labels {name} have "
        f"{y.shape[0]} (shape {y.shape}). Pass x of shape (B, ...) and {name} of shape (B, c).")
  if not jnp.issubdtype(y.dtype, jnp.floating):
    y = y.astype(jnp.float32)
  return y


def check_key(key: Any, usage: str, *, name: str = "key",
              optional: bool = False) -> Any:
  """Checks that `key` is a PRNG key, the first argument of every mixjax function that
  draws randomness (as in `jax.random` and big_vision's `get_mixup(rng, p)`).

  Accepts a typed key (`jax.random.key(seed)`, dtype key<...>) or a raw uint32 key
  (`jax.random.PRNGKey(seed)`, shape (..., 2)), concrete or traced; also None when
  `optional`. Anything else (a function, a float array, a Python int, ...) raises one
  TypeError that names the argument and the convention, before JAX's own
  "not a valid JAX array type" can.

  Args:
    key: the value passed in the key's place.
    usage: the call as it should be written, e.g. "mixup_loss(key, f, x, y, law)".
    name: the argument's name in the message.
    optional: allow None (estimators that draw nothing).

  Returns:
    key, unchanged.
  """
  if key is None and optional:
    return key
  dtype = getattr(key, "dtype", None)
  if dtype is not None and not callable(key):
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
      return key
    if dtype == jnp.uint32 and getattr(key, "ndim", 0) >= 1:
      return key
  what = (f"a function ({getattr(key, '__name__', type(key).__name__)})" if callable(key)
          else f"{type(key).__name__}" + (f" of dtype {dtype}" if dtype is not None else ""))
  raise TypeError(
      f"{name} must be a PRNG key (jax.random.key(seed)); got {what}. mixjax takes the "
      f"PRNG key first: {usage}.")


def _check_choice(value: str, valid: Tuple[str, ...], what: str) -> None:
  if value not in valid:
    raise ValueError(
        f"Unknown {what} {value!r}. Valid {what}s: {', '.join(repr(v) for v in valid)}.")


def partners(key: jax.Array, batch_size: int, pairing: str = "permutation") -> jax.Array:
  """The partner index π(i) of every example, (B,) int32.

  Args:
    key: PRNG key (used only by `pairing="permutation"`).
    batch_size: B.
    pairing: "permutation" (π a uniformly random permutation of 0..B−1) or "reverse"
      (π(i) = B − 1 − i, the reversed batch, as in the official code of the mixup
      regularization paper; with B odd the middle example is paired with itself).
  """
  _check_choice(pairing, PAIRINGS, "pairing")
  if pairing == "permutation":
    return jax.random.permutation(key, batch_size).astype(jnp.int32)
  return jnp.arange(batch_size - 1, -1, -1, dtype=jnp.int32)


def _bcast(lam: jax.Array, ndim: int) -> jax.Array:
  """(B,) -> (B, 1, ..., 1) with `ndim` axes in total."""
  return lam.reshape(lam.shape + (1,) * (ndim - 1))


class Mixed(NamedTuple):
  """A mixed batch and the draw that made it (`mix`).

  Attributes:
    x: x_mix (B, ...) float, = mask * x + (1 − mask) * x[partner].
    y: y_mix (B, c) float, = lam y + (1 − lam) y[partner].
    lam: λ (B,) float32, the label weight actually used (after folding; for a mask
      law the area mean(M) the example keeps).
    partner: π (B,) int32.
    mask: the weight of x_i, shaped to broadcast against x: (B, 1, …, 1) (= λ) for a
      λ-law; (B, H, W, 1) for images (B, H, W, C) and (B, H, W) for (B, H, W) under a
      mask law (`mask[..., 0]` is then the (B, H, W) pixel mask of channel-last images).
  """
  x: jax.Array
  y: jax.Array
  lam: jax.Array
  partner: jax.Array
  mask: jax.Array


def _mask_draw(sampler, key, batch_size: int, x_shape, granularity: str):
  """A mask law's draw: (mask broadcastable to x, λ (B,)) (docs/THEORY.md §8)."""
  from mixjax.samplers import masks as masks_lib  # pylint: disable=g-import-not-at-top
  hw = masks_lib.image_hw(x_shape[1:], sampler)
  if granularity == "example":
    m, lam = sampler.masks(key, batch_size, hw)
  else:
    m, lam = sampler.masks(key, 1, hw)
    m = jnp.broadcast_to(m, (batch_size,) + hw)
    lam = jnp.broadcast_to(lam, (batch_size,))
  chex.assert_shape(m, (batch_size,) + hw)
  return (m[..., None] if len(x_shape) == 4 else m), lam


def _draw(sampler, key, batch_size: int, x: jax.Array, granularity: str, fold: bool):
  """(mask broadcastable to x in x.dtype, λ (B,) float32), folded if `fold`."""
  if getattr(sampler, "is_mask", False):
    mask, lam = _mask_draw(sampler, key, batch_size, x.shape, granularity)
    if fold:
      flip = lam < 0.5
      mask = jnp.where(_bcast(flip, mask.ndim), 1.0 - mask, mask)
      lam = jnp.where(flip, 1.0 - lam, lam)
    chex.assert_shape(lam, (batch_size,))
    return mask.astype(x.dtype), lam
  if granularity == "example":
    lam = jnp.asarray(sampler(key, (batch_size,)), jnp.float32)
  else:
    lam0 = jnp.asarray(sampler(key, ()), jnp.float32)
    chex.assert_shape(lam0, ())
    lam = jnp.broadcast_to(lam0, (batch_size,))
  chex.assert_shape(lam, (batch_size,))
  if fold:
    lam = jnp.maximum(lam, 1.0 - lam)
  # A λ-law's constant mask: λ broadcast over the trailing axes, never materialized.
  return _bcast(lam.astype(x.dtype), x.ndim), lam


def mix(key: jax.Array, x: Any, y: Any, sampler: Sampler, *,
        granularity: str = "example", pairing: str = "permutation",
        fold: bool = False) -> Mixed:
  """Mixes a batch with its partners and returns the draw.

      x_mix = mask * x + (1 − mask) * x[partner]
      y_mix = lam * y + (1 − lam) * y[partner]

  For a λ-law, mask = λ broadcast over the trailing axes, (B, 1, …, 1); for a mask law
  (docs/THEORY.md §8) it is the drawn per-pixel mask, shared by the channels, and
  λ = mean(mask). The mask (or λ) and the partners come from separate key streams
  (`fold_in(key, 0)` and `fold_in(key, 1)`), so changing the pairing never changes the
  mask; a λ-law draws λ as `sampler(fold_in(key, 0), (B,))`.

  Args:
    key: PRNG key.
    x: inputs, (B, ...) with any trailing shape for a λ-law; images (B, H, W, C)
      (channels last) or (B, H, W) for a mask law. Integer inputs (e.g. uint8 images) are
      converted to float32; mixed inputs are never quantized back. Any B ≥ 1, odd too.
    y: labels, (B, c), one-hot or soft (see `check_labels`).
    sampler: a λ-law, `sampler(key, shape) -> λ` in [0, 1], or a mask law
      (`law.masks(key, B, (H, W))`; `mixjax.samplers`).
    granularity: "example" (one λ or mask per example) or "batch" (one for the whole
      batch, `sampler(key, ())` for a λ-law, broadcast to (B,)).
    pairing: "permutation" or "reverse" (see `partners`).
    fold: replace λ by max(λ, 1 − λ) (uncertainty-baselines' ImageNet mixup), and a mask
      M by 1 − M where mean(M) < ½, so that every mixed example is dominated by its own
      x_i.

  Returns:
    `Mixed(x, y, lam, partner, mask)`: x_mix (B, ...) float, y_mix (B, c) float, lam
    (B,) float32 (the label weight actually used, after folding), partner (B,) int32,
    mask (see `Mixed`). Unpacks as `x_mix, y_mix, lam, partner, mask = mix(...)`.

  Raises:
    ValueError: x and y batch sizes differ, y is not (B, c), x is a scalar, a mask law
      gets inputs that are not images, or granularity/pairing is unknown.
  """
  check_key(key, "mix(key, x, y, law)")
  _check_choice(granularity, GRANULARITIES, "granularity")
  _check_choice(pairing, PAIRINGS, "pairing")
  x = jnp.asarray(x)
  if x.ndim < 1:
    raise ValueError(f"x must have a batch axis, shape (B, ...); got a scalar of shape {x.shape}.")
  batch_size = x.shape[0]
  y = check_labels(y, batch_size)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    x = x.astype(jnp.float32)

  lam_key = jax.random.fold_in(key, _LAM_STREAM)
  partner_key = jax.random.fold_in(key, _PARTNER_STREAM)
  lam_x, lam = _draw(sampler, lam_key, batch_size, x, granularity, fold)
  partner = partners(partner_key, batch_size, pairing)

  # One code path for λ-laws and mask laws: lam_x is the mask, broadcastable to x.
  x_mix = lam_x * x + (1 - lam_x) * x[partner]
  lam_y = _bcast(lam.astype(y.dtype), 2)
  y_mix = lam_y * y + (1 - lam_y) * y[partner]
  chex.assert_equal_shape([x_mix, x])
  chex.assert_equal_shape([y_mix, y])
  return Mixed(x_mix, y_mix, lam, partner, lam_x)
