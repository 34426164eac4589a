"""A small LeNet-like CNN (no BatchNorm) for MNIST-sized images and 1-D signals."""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mixjax.models import base
from mixjax.models import layers


@base.register("lenet")
class LeNet(nn.Module):
  """`len(features)` blocks of conv(k×k, SAME) → activation → 2×2 max-pool, then dense layers.

  Works on 28×28×1 (MNIST), 32×32×3 (CIFAR) and 1-D signals that the caller reshapes to
  `(B, L, 1, 1)`: pooling uses window min(2, size) per spatial axis, so a spatial axis of
  size 1 is left alone. Shapes: `x` (B, H, W, C) -> logits (B, num_classes) float32.
  Convolutions and pools are `models.layers`' (for a non-decreasing activation the pool
  runs before it, the same function).

  Attributes:
    num_classes: number of outputs.
    features: channels of the convolutions (2 or 3 entries is LeNet-like).
    kernel_size: convolution window.
    dense_sizes: hidden dense layers after flattening.
    activation: a name in `base.ACTIVATIONS`.
    weight_init: a name in `base.INITS` (see `CNN`).
    bn_axis_name: accepted for a uniform interface; unused (no BatchNorm).
    dtype: computation dtype; parameters stay float32.
  """
  num_classes: int
  features: Sequence[int] = (32, 64)
  kernel_size: int = 5
  dense_sizes: Sequence[int] = (256,)
  activation: str = "relu"
  weight_init: str = base.DEFAULT_INIT
  bn_axis_name: str | None = None
  dtype: base.Dtype = jnp.float32

  def __post_init__(self):
    base.check_common(self)
    base.ACTIVATIONS.get(self.activation)
    base.INITS.get(self.weight_init)
    if not self.features or any(int(f) < 1 for f in self.features):
      raise ValueError(f"LeNet: features must be a non-empty list of positive ints, "
                       f"got {self.features}.")
    if int(self.kernel_size) < 1:
      raise ValueError(f"LeNet: kernel_size must be >= 1, got {self.kernel_size}.")
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train
    base.check_input(self, x, 4)
    act = base.ACTIVATIONS.get(self.activation)
    init = base.INITS.get(self.weight_init)
    x = x.astype(self.dtype)
    k = self.kernel_size
    for i, f in enumerate(self.features):
      x = nn.Conv(f, (k, k), padding="SAME", dtype=self.dtype, kernel_init=init.conv,
                  bias_init=init.bias(k * k * x.shape[-1]),
                  conv_general_dilated=layers.conv_general_dilated, name=f"conv{i}")(x)
      window = tuple(min(2, s) for s in x.shape[1:3])
      x = layers.activate_and_pool(x, act, window,
                                   self.activation in layers.NONDECREASING)
    x = jnp.reshape(x, (x.shape[0], -1))
    for i, h in enumerate(self.dense_sizes):
      x = act(nn.Dense(h, dtype=self.dtype, kernel_init=init.dense,
                       bias_init=init.bias(x.shape[-1]), name=f"dense{i}")(x))
    x = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=init.dense,
                 bias_init=init.bias(x.shape[-1]), name="head")(x)
    return x.astype(jnp.float32)
