"""`Reshaped`: a model applied to each example viewed in another shape."""
from __future__ import annotations

import flax.linen as nn


class Reshaped(nn.Module):
  """Applies `module` to the batch reshaped to (B, *input_shape) (`config.model.input_shape`).

  The data, the DataStats, mixing and the theory all stay in the dataset's input shape;
  only the network sees the reshaped view (e.g. MNIST-1D's (40,) as (40, 1, 1) for LeNet).
  """
  module: nn.Module
  input_shape: tuple[int, ...]

  @nn.compact
  def __call__(self, x, train: bool = False):
    return self.module(x.reshape((x.shape[0],) + tuple(self.input_shape)), train=train)
