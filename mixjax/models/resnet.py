"""ResNets: CIFAR-style PreAct-ResNet-18 (mixup's reference network) and ResNet-34, and
the ImageNet ResNet-50.

Both use a 3×3 stride-1 stem (no max-pool), four stages of basic blocks with widths
`width·(1, 2, 4, 8)` (64–512 by default) and strides (1, 2, 2, 2), global average pooling
and a linear head. On 32×32 inputs the last feature map is 4×4.

- `preact_resnet18`: pre-activation basic blocks [2, 2, 2, 2] (He et al., "Identity
  Mappings in Deep Residual Networks", 2016), as used by Zhang et al. (mixup, 2018) on
  CIFAR. Block: `a = relu(bn1(x)); h = conv3x3(a, stride); h = conv3x3(relu(bn2(h)));
  out = h + (conv1x1(a, stride) if the shape changes else x)`. With `final_norm=True`
  (He et al.) a BN–ReLU precedes the pooling; `final_norm=False` is the mixup repository's
  network exactly (11,171,146 parameters for 10 classes).
- `resnet34`: post-activation basic blocks [3, 4, 6, 3] (He et al., 2015), CIFAR stem:
  `out = relu(bn2(conv(relu(bn1(conv(x))))) + shortcut(x))`, shortcut conv1x1 + BN when
  the shape changes (21,282,122 parameters for 10 classes).

- `resnet50`: the ImageNet ResNet-50 (He et al., 2015, Table 1) in its "v1.5" form (the
  stride in the bottleneck's 3×3 convolution, as torchvision, flax `examples/imagenet` and
  uncertainty-baselines' `resnet50_deterministic`): a 7×7 stride-2 stem convolution, BN,
  ReLU, a 3×3 stride-2 max-pool, four stages of bottleneck blocks [3, 4, 6, 3] with widths
  64·(1, 2, 4, 8) (outputs 4× that) and strides (1, 2, 2, 2), global average pooling and a
  linear head. On 224×224 inputs the feature maps are 112 → 56 → 56, 28, 14, 7.
  25,557,032 parameters for 1000 classes (torchvision's `resnet50` has the same count).

Convolutions use PyTorch's symmetric padding (1 for 3×3, 3 for the 7×7 stem), no bias.
Initialization: He-normal (fan_out) for the CIFAR nets; for `resnet50` the official
mixup ImageNet code's (uncertainty-baselines, Keras `he_normal`: truncated normal,
fan_in, and a N(0, 0.01²) head). BatchNorm: momentum 0.9, ε = 1e-5, statistics averaged
over `bn_axis_name`, computed in float32 for any `dtype`.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mixjax.models import base
from mixjax.models import layers


def _conv(features: int, kernel: int, stride: int, dtype, name: str,
          kernel_init=base.conv_init) -> nn.Conv:
  pad = (kernel - 1) // 2
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((pad, pad), (pad, pad)), use_bias=False, dtype=dtype,
                 param_dtype=jnp.float32, kernel_init=kernel_init,
                 conv_general_dilated=layers.conv_general_dilated, name=name)


class PreActBlock(nn.Module):
  """Pre-activation basic block (He et al. 2016, Fig. 4e); WideResNet's block with
  `dropout_rate > 0` (dropout between the two convolutions, Zagoruyko & Komodakis)."""
  features: int
  stride: int
  bn_axis_name: str | None
  dtype: base.Dtype
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    a = nn.relu(base.batch_norm(train, self.bn_axis_name, self.dtype, "bn1")(x))
    if self.stride != 1 or x.shape[-1] != self.features:
      shortcut = _conv(self.features, 1, self.stride, self.dtype, "shortcut")(a)
    else:
      shortcut = x
    h = _conv(self.features, 3, self.stride, self.dtype, "conv1")(a)
    h = nn.relu(base.batch_norm(train, self.bn_axis_name, self.dtype, "bn2")(h))
    if self.dropout_rate > 0:
      h = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
    h = _conv(self.features, 3, 1, self.dtype, "conv2")(h)
    return h + shortcut


class BasicBlock(nn.Module):
  """Post-activation basic block (He et al. 2015)."""
  features: int
  stride: int
  bn_axis_name: str | None
  dtype: base.Dtype

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    bn = lambda name: base.batch_norm(train, self.bn_axis_name, self.dtype, name)
    h = nn.relu(bn("bn1")(_conv(self.features, 3, self.stride, self.dtype, "conv1")(x)))
    h = bn("bn2")(_conv(self.features, 3, 1, self.dtype, "conv2")(h))
    if self.stride != 1 or x.shape[-1] != self.features:
      x = bn("shortcut_bn")(_conv(self.features, 1, self.stride, self.dtype, "shortcut")(x))
    return nn.relu(h + x)


def _check_resnet(module) -> None:
  base.check_common(module)
  if int(module.width) < 1:
    raise ValueError(f"{type(module).__name__}: width must be >= 1, got {module.width}.")
  if len(module.stage_sizes) != 4 or any(int(n) < 1 for n in module.stage_sizes):
    raise ValueError(f"{type(module).__name__}: stage_sizes must be 4 positive ints, got "
                     f"{module.stage_sizes}.")


@base.register("preact_resnet18")
class PreActResNet(nn.Module):
  """CIFAR PreAct-ResNet; `preact_resnet18` is stage_sizes (2, 2, 2, 2), width 64.

  Shapes: `x` (B, H, W, C) float -> logits (B, num_classes) float32.

  Attributes:
    num_classes: number of outputs.
    stage_sizes: blocks per stage.
    width: channels of the first stage (stages use width·1, 2, 4, 8). Small widths give
      cheap test networks.
    final_norm: BN–ReLU before pooling (He et al.); False is the mixup repository's net.
    bn_axis_name: None, or the mesh axis (e.g. "data") over which batch statistics are
      averaged inside `shard_map`.
    dtype: computation dtype (float32 parameters).
  """
  num_classes: int
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  width: int = 64
  final_norm: bool = True
  bn_axis_name: str | None = None
  dtype: base.Dtype = jnp.float32

  def __post_init__(self):
    _check_resnet(self)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    base.check_input(self, x, 4)
    x = _conv(self.width, 3, 1, self.dtype, "stem")(x.astype(self.dtype))
    for s, n in enumerate(self.stage_sizes):
      for b in range(n):
        x = PreActBlock(self.width * 2**s, 2 if (s > 0 and b == 0) else 1,
                        self.bn_axis_name, self.dtype, name=f"stage{s + 1}_block{b + 1}"
                        )(x, train)
    if self.final_norm:
      x = nn.relu(base.batch_norm(train, self.bn_axis_name, self.dtype, "final_bn")(x))
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
    return x.astype(jnp.float32)


@base.register("resnet34")
class ResNet(nn.Module):
  """CIFAR ResNet with post-activation basic blocks; `resnet34` is (3, 4, 6, 3).

  Shapes: `x` (B, H, W, C) float -> logits (B, num_classes) float32. Attributes as in
  `PreActResNet` (without `final_norm`).
  """
  num_classes: int
  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  width: int = 64
  bn_axis_name: str | None = None
  dtype: base.Dtype = jnp.float32

  def __post_init__(self):
    _check_resnet(self)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    base.check_input(self, x, 4)
    x = _conv(self.width, 3, 1, self.dtype, "stem")(x.astype(self.dtype))
    x = nn.relu(base.batch_norm(train, self.bn_axis_name, self.dtype, "stem_bn")(x))
    for s, n in enumerate(self.stage_sizes):
      for b in range(n):
        x = BasicBlock(self.width * 2**s, 2 if (s > 0 and b == 0) else 1,
                       self.bn_axis_name, self.dtype, name=f"stage{s + 1}_block{b + 1}"
                       )(x, train)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
    return x.astype(jnp.float32)


# Keras' `he_normal` (uncertainty-baselines' ResNet-50): N(0, 2/fan_in) truncated at ±2σ
# (σ rescaled so that the variance stays 2/fan_in), and the head's N(0, 0.01²).
he_normal_fan_in = nn.initializers.variance_scaling(2.0, "fan_in", "truncated_normal")
head_init = nn.initializers.normal(0.01)


class Bottleneck(nn.Module):
  """Bottleneck block, ResNet v1.5: the stride is in the 3×3 convolution.

  `h = relu(bn1(conv1x1(x))); h = relu(bn2(conv3x3(h, stride))); h = bn3(conv1x1(h))`
  with `features`, `features`, 4·`features` channels; `out = relu(h + shortcut)`, the
  shortcut `bn(conv1x1(x, stride))` when the shape changes, else x. With
  `zero_init_residual`, bn3's γ starts at 0 (each block starts as the identity;
  Goyal et al. 2017, flax `examples/imagenet`)."""
  features: int
  stride: int
  bn_axis_name: str | None
  dtype: base.Dtype
  zero_init_residual: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    bn = lambda name, **kw: base.batch_norm(train, self.bn_axis_name, self.dtype, name, **kw)
    conv = lambda f, k, s, name: _conv(f, k, s, self.dtype, name, he_normal_fan_in)
    out = 4 * self.features
    h = nn.relu(bn("bn1")(conv(self.features, 1, 1, "conv1")(x)))
    h = nn.relu(bn("bn2")(conv(self.features, 3, self.stride, "conv2")(h)))
    last_init = nn.initializers.zeros if self.zero_init_residual else nn.initializers.ones
    h = bn("bn3", scale_init=last_init)(conv(out, 1, 1, "conv3")(h))
    if self.stride != 1 or x.shape[-1] != out:
      x = bn("shortcut_bn")(conv(out, 1, self.stride, "shortcut")(x))
    return nn.relu(h + x)


@base.register("resnet50")
class BottleneckResNet(nn.Module):
  """ImageNet ResNet with bottleneck blocks; `resnet50` is stage_sizes (3, 4, 6, 3).

  Shapes: `x` (B, H, W, C) float (224×224×3 on ImageNet) -> logits (B, num_classes)
  float32. Any H, W ≥ 1 work (the stem and each stride-2 stage halve them, rounding up).

  Attributes:
    num_classes: number of outputs.
    stage_sizes: bottleneck blocks per stage ((3, 4, 6, 3): ResNet-50; (3, 4, 23, 3):
      ResNet-101).
    width: bottleneck channels of the first stage (stages use width·1, 2, 4, 8; outputs
      4× that; stem `width` channels). Small widths give cheap test networks.
    zero_init_residual: γ = 0 for each block's last BN (False: the official mixup
      ImageNet code's initialization, γ = 1).
    bn_axis_name: None, or the mesh axis (e.g. "data") over which batch statistics are
      averaged inside `shard_map`.
    dtype: computation dtype (float32 parameters, float32 BatchNorm statistics, float32
      logits).
  """
  num_classes: int
  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  width: int = 64
  zero_init_residual: bool = False
  bn_axis_name: str | None = None
  dtype: base.Dtype = jnp.float32

  def __post_init__(self):
    _check_resnet(self)
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    base.check_input(self, x, 4)
    x = _conv(self.width, 7, 2, self.dtype, "stem", he_normal_fan_in)(x.astype(self.dtype))
    x = nn.relu(base.batch_norm(train, self.bn_axis_name, self.dtype, "stem_bn")(x))
    x = layers.max_pool_3x3_s2(x)
    for s, n in enumerate(self.stage_sizes):
      for b in range(n):
        x = Bottleneck(self.width * 2**s, 2 if (s > 0 and b == 0) else 1,
                       self.bn_axis_name, self.dtype, self.zero_init_residual,
                       name=f"stage{s + 1}_block{b + 1}")(x, train)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32,
                 kernel_init=head_init, name="head")(x)
    return x.astype(jnp.float32)
