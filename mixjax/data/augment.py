"""On-device image augmentation: random crop with zero padding and horizontal flip."""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp


def augment(key: jax.Array, images: jax.Array, *, crop_padding: int = 4, flip: bool = True,
            flip_prob: float = 0.5, return_draw: bool = False):
  """Standard CIFAR augmentation, batched and jit-able (no per-example Python loop).

  Each example i is zero-padded by `p = crop_padding` pixels on every side, cropped back
  to (H, W) at offset (dy_i, dx_i) ~ Unif{0..2p}², and mirrored left–right with
  probability `flip_prob` (when `flip`):

      out[i, h, w] = pad(x_i)[dy_i + h, dx_i + (W − 1 − w if f_i else w)]

  All draws come from `key` (offsets and flips from two sub-keys, one value per example).
  Zero padding is applied to the images as given: on normalized images it pads with
  the training mean.

  Args:
    key: PRNG key.
    images: (B, H, W, C).
    crop_padding: p ≥ 0; 0 disables cropping.
    flip: whether to flip at all.
    flip_prob: probability of a flip when `flip` (1.0 always flips).
    return_draw: also return `(offsets (B, 2) int32, flips (B,) bool)`.

  Returns:
    Augmented images (B, H, W, C), same dtype; and the draw if `return_draw`.
  """
  chex.assert_rank(images, 4)
  p = int(crop_padding)
  if p < 0:
    raise ValueError(f"crop_padding must be >= 0, got {crop_padding}.")
  if not 0.0 <= flip_prob <= 1.0:
    raise ValueError(f"flip_prob must be in [0, 1], got {flip_prob}.")
  b, h, w, c = images.shape
  k_crop, k_flip = jax.random.split(key)
  offsets = jax.random.randint(k_crop, (b, 2), 0, 2 * p + 1, dtype=jnp.int32)
  if flip:
    flips = jax.random.bernoulli(k_flip, flip_prob, (b,))
  else:
    flips = jnp.zeros((b,), bool)
  padded = jnp.pad(images, ((0, 0), (p, p), (p, p), (0, 0)))

  def one(img, off, f):
    crop = jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, c))
    return jnp.where(f, crop[:, ::-1], crop)

  out = jax.vmap(one)(padded, offsets, flips)
  chex.assert_equal_shape((out, images))
  return (out, (offsets, flips)) if return_draw else out
