"""A random-features classifier (the two-moons model of the paper's appendix).

f(x) = W φ(x) + b with random Fourier features φ(x) = √(2/D) cos(Ω x + β), Ω ~ N(0, I/ℓ²)
(d×D) and β ~ U[0, 2π), drawn from `jax.random.key(feature_seed)` and held fixed: they
are constants of the model (not variables), so the optimizer never sees them and every
run with the same `feature_seed` shares one feature map; only W and b are trained. φ is
smooth, so the input Jacobians and Hessians of Theorem 3 are defined.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from mixjax.models import base


@base.register("random_features")
class RandomFeatures(nn.Module):
  """Random Fourier features + a trained linear head.

  Shapes: x (B, ...) (flattened to (B, d)) -> logits (B, num_classes) float32.

  Attributes:
    num_classes: outputs.
    num_features: D.
    bandwidth: ℓ, the kernel length scale (Ω ~ N(0, 1/ℓ²)).
    feature_seed: the seed of Ω and β.
    bn_axis_name: accepted for a uniform interface; unused (no BatchNorm).
    dtype: computation dtype of the features and the head (Ω and β are drawn in float32
      and then cast; the parameters stay float32; the logits are returned in float32).
  """
  num_classes: int
  num_features: int = 256
  bandwidth: float = 0.5
  feature_seed: int = 0
  bn_axis_name: str | None = None
  dtype: base.Dtype = jnp.float32

  def __post_init__(self):
    base.check_common(self)
    if int(self.num_features) < 1 or not float(self.bandwidth) > 0:
      raise ValueError(f"RandomFeatures: num_features must be ≥ 1 and bandwidth > 0, got "
                       f"{self.num_features} and {self.bandwidth}.")
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train
    x = jnp.reshape(x, (x.shape[0], -1)).astype(self.dtype)
    d = x.shape[1]
    k_omega, k_phase = jax.random.split(jax.random.key(self.feature_seed))
    omega = jax.random.normal(k_omega, (d, self.num_features)) / self.bandwidth
    phase = jax.random.uniform(k_phase, (self.num_features,), maxval=2 * jnp.pi)
    omega, phase = omega.astype(self.dtype), phase.astype(self.dtype)
    phi = jnp.sqrt(2.0 / self.num_features) * jnp.cos(x @ omega + phase)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(phi)
    return logits.astype(jnp.float32)
