"""What a built model contains, read from its traced initialization (no parameters are
computed): whether it has convolutions (the trainer's `group_mode="auto"` runs
convolutional groups one after another on CPU) and BatchNorm statistics (which the
`approx` method's JVPs cannot carry)."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def _init(model, input_shape):
  return lambda x: model.init(jax.random.key(0), x, train=False)


def has_convolution(model, input_shape) -> bool:
  """Whether the model has a convolution: a parameter with a 2-D spatial kernel
  (kh, kw, c_in, c_out). Read from the parameters' shapes, not from the traced ops,
  because `models.layers` may compute a convolution without `conv_general_dilated`."""
  x = jax.ShapeDtypeStruct((1,) + tuple(input_shape), jnp.float32)
  params = jax.eval_shape(_init(model, input_shape), x)["params"]
  return any(leaf.ndim == 4 for leaf in jax.tree.leaves(params))


def has_batch_stats(model, input_shape) -> bool:
  """Whether the model keeps BatchNorm running statistics ("batch_stats")."""
  x = jax.ShapeDtypeStruct((1,) + tuple(input_shape), jnp.float32)
  return bool(jax.eval_shape(_init(model, input_shape), x).get("batch_stats"))
