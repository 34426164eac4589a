"""A small VGG-style CNN for 28×28 and 32×32 images, sized for CPU training."""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mixjax.models import base
from mixjax.models import layers


@base.register("cnn")
class CNN(nn.Module):
  """Stages of 3×3 convolutions (SAME) → BatchNorm → activation, each stage ending in a
  2×2 max-pool; then flatten → dense layers → linear head. The convolutions, BatchNorm
  and pool are `models.layers`' (the forms measured fastest per backend; for a
  non-decreasing activation the pool runs before it, the same function).

  With the defaults (`stages=((32, 32), (64, 64))`, `dense_sizes=(256,)`) this is
  conv32-conv32-pool-conv64-conv64-pool-dense256-head: on 28×28×1 the last feature map
  is 7×7×64 and the network has 870,826 parameters for 10 classes (BatchNorm scales and
  biases included, running statistics not).

  Shapes: `x` (B, H, W, C) -> logits (B, num_classes) float32.

  Attributes:
    num_classes: number of outputs.
    stages: channels of the convolutions, one tuple per stage; a stage ends in a pool.
    dense_sizes: hidden dense layers after flattening.
    batch_norm: BatchNorm after every convolution (statistics over `bn_axis_name`);
      without it the convolutions have biases.
    dropout_rate: dropout before each hidden dense layer and the head (0: none); needs a
      `"dropout"` rng when training.
    activation: a name in `base.ACTIVATIONS`.
    weight_init: a name in `base.INITS` ("he": convolutions N(0, 2/fan_out), dense
      LeCun normal, biases 0; "torch": PyTorch's U(±1/√fan_in) for kernels and biases).
    bn_axis_name: None, or the mesh axis name ("data") to average BatchNorm statistics.
    dtype: computation dtype; parameters stay float32.
  """
  num_classes: int
  stages: Sequence[Sequence[int]] = ((32, 32), (64, 64))
  dense_sizes: Sequence[int] = (256,)
  batch_norm: bool = True
  dropout_rate: float = 0.0
  activation: str = "relu"
  weight_init: str = base.DEFAULT_INIT
  bn_axis_name: str | None = None
  dtype: base.Dtype = jnp.float32

  def __post_init__(self):
    base.check_common(self)
    base.ACTIVATIONS.get(self.activation)
    base.INITS.get(self.weight_init)
    if not self.stages or any(not s or any(int(f) < 1 for f in s) for s in self.stages):
      raise ValueError(f"CNN: stages must be a non-empty list of non-empty lists of "
                       f"positive ints, got {self.stages}.")
    if not 0.0 <= float(self.dropout_rate) < 1.0:
      raise ValueError(f"CNN: dropout_rate must be in [0, 1), got {self.dropout_rate}.")
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    base.check_input(self, x, 4)
    act = base.ACTIVATIONS.get(self.activation)
    init = base.INITS.get(self.weight_init)
    x = x.astype(self.dtype)
    for i, stage in enumerate(self.stages):
      for j, f in enumerate(stage):
        x = nn.Conv(int(f), (3, 3), padding="SAME", use_bias=not self.batch_norm,
                    dtype=self.dtype, param_dtype=jnp.float32,
                    kernel_init=init.conv, bias_init=init.bias(9 * x.shape[-1]),
                    conv_general_dilated=layers.conv_general_dilated,
                    name=f"conv{i}_{j}")(x)
        if self.batch_norm:
          x = base.batch_norm(train, self.bn_axis_name, self.dtype, f"bn{i}_{j}")(x)
        if j < len(stage) - 1:
          x = act(x)
      window = tuple(min(2, s) for s in x.shape[1:3])
      x = layers.activate_and_pool(x, act, window,
                                   self.activation in layers.NONDECREASING)
    x = jnp.reshape(x, (x.shape[0], -1))
    for i, h in enumerate(self.dense_sizes):
      if self.dropout_rate > 0:
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
      x = act(nn.Dense(int(h), dtype=self.dtype, param_dtype=jnp.float32,
                       kernel_init=init.dense, bias_init=init.bias(x.shape[-1]),
                       name=f"dense{i}")(x))
    if self.dropout_rate > 0:
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32,
                 kernel_init=init.dense, bias_init=init.bias(x.shape[-1]), name="head")(x)
    return x.astype(jnp.float32)
