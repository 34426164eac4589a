"""A random-features classifier (the two-moons model of the paper's appendix).

f(x) = W φ(x) + b with random Fourier features φ(x) = √(2/D) cos(Ω x + β), Ω ~ N(0, I/ℓ²)
(d×D) and β ~ U[0, 2π) drawn at initialization and then held fixed (they live in the
"constants" variable collection, so the optimizer never sees them); only W and b are
trained. φ is smooth, so the input Jacobians and Hessians of Theorem 3 are defined.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


class RandomFeatures(nn.Module):
  """Random Fourier features + a trained linear head.

  Shapes: x (B, ...) (flattened to (B, d)) -> logits (B, num_classes) float32.

  Attributes:
    num_classes: outputs.
    num_features: D.
    bandwidth: ℓ, the kernel length scale (Ω ~ N(0, 1/ℓ²)).
  """
  num_classes: int
  num_features: int = 256
  bandwidth: float = 0.5

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train
    x = jnp.reshape(x, (x.shape[0], -1)).astype(jnp.float32)
    d = x.shape[1]
    omega = self.variable(
        "constants", "omega",
        lambda: jax.random.normal(self.make_rng("params"), (d, self.num_features))
        / self.bandwidth)
    phase = self.variable(
        "constants", "phase",
        lambda: jax.random.uniform(self.make_rng("params"), (self.num_features,),
                                   maxval=2 * jnp.pi))
    phi = jnp.sqrt(2.0 / self.num_features) * jnp.cos(x @ omega.value + phase.value)
    return nn.Dense(self.num_classes, name="head")(phi)
