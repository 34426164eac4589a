"""WideResNet (Zagoruyko & Komodakis, 2016) for CIFAR; `wrn28_10` is depth 28, width ×10.

Depth d = 6n + 4: a 3×3 stem with 16 channels, three stages of n pre-activation blocks
with 16k, 32k, 64k channels (k = widen_factor) and strides (1, 2, 2), a final BN–ReLU,
global average pooling and a linear head. Block:
`a = relu(bn1(x)); h = conv3x3(a, stride); h = dropout(relu(bn2(h))); h = conv3x3(h);
out = h + (conv1x1(a, stride) if the shape changes else x)`.
WRN-28-10 has 36,479,194 parameters for 10 classes (≈ 36.5M, as published).
Dropout (between the two convolutions, as in the paper) needs `rngs={"dropout": key}`
when `train=True` and `dropout_rate > 0`.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from mixjax.models import base
from mixjax.models.resnet import PreActBlock
from mixjax.models.resnet import _conv


@base.register("wrn28_10")
class WideResNet(nn.Module):
  """WRN-depth-widen_factor. Shapes: `x` (B, H, W, C) -> logits (B, num_classes) float32.

  Attributes:
    num_classes: number of outputs.
    depth: 6n + 4 (28 gives n = 4 blocks per stage).
    widen_factor: k; stage widths 16k, 32k, 64k.
    dropout_rate: dropout between the block's convolutions (0.3 in the paper's
      best CIFAR runs; 0 by default, as in most mixup work).
    bn_axis_name: None, or the mesh axis over which batch statistics are averaged.
    dtype: computation dtype (float32 parameters).
  """
  num_classes: int
  depth: int = 28
  widen_factor: int = 10
  dropout_rate: float = 0.0
  bn_axis_name: str | None = None
  dtype: base.Dtype = jnp.float32

  def __post_init__(self):
    base.check_common(self)
    if self.depth < 10 or (self.depth - 4) % 6:
      raise ValueError(f"WideResNet: depth must be 6n + 4 with n >= 1 (e.g. 16, 22, 28, "
                       f"40), got {self.depth}.")
    if int(self.widen_factor) < 1:
      raise ValueError(f"WideResNet: widen_factor must be >= 1, got {self.widen_factor}.")
    if not 0.0 <= float(self.dropout_rate) < 1.0:
      raise ValueError(f"WideResNet: dropout_rate must be in [0, 1), got "
                       f"{self.dropout_rate}.")
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    base.check_input(self, x, 4)
    n = (self.depth - 4) // 6
    x = _conv(16, 3, 1, self.dtype, "stem")(x.astype(self.dtype))
    for s in range(3):
      for b in range(n):
        x = PreActBlock(16 * self.widen_factor * 2**s, 2 if (s > 0 and b == 0) else 1,
                        self.bn_axis_name, self.dtype, self.dropout_rate,
                        name=f"stage{s + 1}_block{b + 1}")(x, train)
    x = nn.relu(base.batch_norm(train, self.bn_axis_name, self.dtype, "final_bn")(x))
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
    return x.astype(jnp.float32)
