"""Multi-layer perceptron on flattened inputs."""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mixjax.models import base


@base.register("mlp")
class MLP(nn.Module):
  """Dense layers with an activation between them; any input `(B, ...)` is flattened.

  Shapes: `x` (B, ...) -> logits (B, num_classes) float32. No BatchNorm, so
  `train` only exists for a uniform call signature.

  Attributes:
    num_classes: number of outputs.
    hidden_sizes: widths of the hidden layers (empty: a linear model).
    activation: a name in `base.ACTIVATIONS` (relu, gelu, tanh, sigmoid, silu, ...).
    weight_init: a name in `base.INITS` ("he": LeCun normal kernels, biases 0; "torch":
      PyTorch's U(±1/√fan_in) for kernels and biases).
    bn_axis_name: accepted for a uniform interface; unused (no BatchNorm).
    dtype: computation dtype; parameters stay float32.
  """
  num_classes: int
  hidden_sizes: Sequence[int] = (512, 512)
  activation: str = "relu"
  weight_init: str = base.DEFAULT_INIT
  bn_axis_name: str | None = None
  dtype: base.Dtype = jnp.float32

  def __post_init__(self):
    base.check_common(self)
    base.ACTIVATIONS.get(self.activation)  # unknown names list the known ones
    base.INITS.get(self.weight_init)
    if any(int(h) < 1 for h in self.hidden_sizes):
      raise ValueError(f"MLP: hidden_sizes must be positive, got {self.hidden_sizes}.")
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train
    act = base.ACTIVATIONS.get(self.activation)
    init = base.INITS.get(self.weight_init)
    x = jnp.reshape(x, (x.shape[0], -1)).astype(self.dtype)
    for i, h in enumerate(self.hidden_sizes):
      x = act(nn.Dense(h, dtype=self.dtype, kernel_init=init.dense,
                       bias_init=init.bias(x.shape[-1]), name=f"dense{i}")(x))
    x = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=init.dense,
                 bias_init=init.bias(x.shape[-1]), name="head")(x)
    return x.astype(jnp.float32)
