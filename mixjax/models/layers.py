r"""Layers shared by the models, in the forms measured fastest on each backend.

The models call these instead of `nn.max_pool`, `nn.BatchNorm` and plain `nn.Conv`;
each form computes the same function as the standard layer (forward and gradients equal
to float32 rounding; the pool's gradient at tied maxima is the one exception, below).
Which form runs is decided when the step is traced, by `jax.default_backend()`: the
forms below on "cpu", the standard `lax` ops elsewhere (GPU/TPU kernels for the standard
ops are what XLA tunes; nothing here was measured faster there).

Why (XLA:CPU, jaxlib 0.10.2, YNN fusions off as `import mixjax` sets them, 2 cores; one
SGD-momentum step of the Fashion-MNIST recipe network conv32-BN-ReLU-pool-conv64-BN-
ReLU-pool-dense256-head, batch 128, 28×28×1; `python -m benchmarks.bench_steps
--models=recipe` has the side-by-side figures):

- **max-pool** (`max_pool`). The gradient of `nn.max_pool` (`reduce_window` max) is a
  `select_and_scatter`, which XLA:CPU expands into iota/scatter loops: ~40 ms of the
  108 ms step. The same pool as `x.reshape(B, H/2, 2, W/2, 2, C).max((2, 4))` is a
  plain reduction and its gradient an elementwise select: step 108 → 67 ms. Forward
  identical; gradient identical wherever a window's maximum is unique (at ties the
  reshape form splits the gradient equally among the tied entries, `nn.max_pool` gives it
  to one of them).
- **BatchNorm statistics** (`BatchNorm`, `channel_sum`). XLA:CPU lowers a reduction over
  every axis but the minor one, (B, H, W, C) → (C,), as a `reduce-window` that walks
  memory with stride C: 4.8 ms for one 128×28×28×32 sum. Summing first over a leading
  block axis, `x.reshape(32, -1).sum(0)` (a vectorized row reduction), then over the
  rest takes 0.36 ms. The batch statistics are written with that sum, and the
  per-channel scale and shift with its transpose (`channel_broadcast`), so that the
  gradient's sums (Σ dy, Σ dy·x) take the same form (plain jnp: forward- and
  reverse-mode autodiff as usual): step 67 → 44 ms.
- **pool before the activation** (`activate_and_pool`). For a non-decreasing activation
  φ, pool(φ(x)) = φ(pool(x)) exactly, and the activation then runs on a quarter of the
  entries: step 44 → 40 ms. Applied on every backend (it is the same function).
- **small one-channel convolutions** (`conv_general_dilated`, passed to `nn.Conv`).
  Eigen's convolution with one input channel is slow: 2.1 ms forward for 128×28×28×1
  → 32; the sum of the 3×3 shifted inputs times the kernel rows is one elementwise
  fusion, 0.4 ms. Its tangent, and so its gradients, are `lax.conv_general_dilated`'s
  (a custom JVP: the same kernels as the standard layer): step 40 → 38 ms. Only up to
  `SHIFTED_CONV_MAX_TERMS` = 9 terms (taps that touch the input × input channels: the
  recipe's 3×3×1, MNIST-1D's 5×1 column): XLA fuses the sum into each of its consumers,
  so with more terms the whole step gets slower although the convolution alone is
  faster (LeNet 5×5×1 on 28×28: 59 → 82 ms; 5×5×3 on 32×32: 85 → 325 ms). With 32
  input channels Eigen's convolution is faster than any rewrite tried (patches + matmul
  16 ms against 2.9 ms).

What remains of the gap to PyTorch is in the convolution kernels themselves (Eigen's
backward convolutions: 3.4 ms input gradient + 5.8 ms weight gradient with its layout
transposes, against ~3 ms for oneDNN's), see the profile table in docs/benchmarks.md.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp

# Activations φ (names in `base.ACTIVATIONS`) with φ non-decreasing, so that
# max(φ(a), φ(b)) = φ(max(a, b)) and the pool may run first.
NONDECREASING = frozenset({"relu", "tanh", "sigmoid", "elu", "softplus", "identity"})

# First-stage block count of `channel_sum` (a divisor of the number of rows is used).
_SUM_BLOCKS = 32

# `conv_general_dilated` computes a convolution as shifted multiply-adds on CPU when it
# has at most this many terms (kernel taps that touch the input × input channels).
SHIFTED_CONV_MAX_TERMS = 9


def cpu_forms() -> bool:
  """True when the forms of this module are used: the default backend is the CPU."""
  return jax.default_backend() == "cpu"


def max_pool(x: jax.Array, window: Sequence[int]) -> jax.Array:
  """Non-overlapping max-pool over the spatial axes: `nn.max_pool(x, window,
  strides=window, padding="SAME")`.

  Shapes: x (B, *spatial, C) -> (B, *ceil(spatial / window), C). On CPU it is the
  reshape form (a spatial size not divisible by its window is padded with −∞ at the
  end, as SAME padding does for stride = window); elsewhere `nn.max_pool`.
  """
  window = tuple(int(w) for w in window)
  if not cpu_forms():
    return nn.max_pool(x, window, strides=window, padding="SAME")
  spatial = x.shape[1:-1]
  if len(window) != len(spatial):
    raise ValueError(f"max_pool: window {window} does not match the {len(spatial)} "
                     f"spatial axes of an input of shape {x.shape}.")
  out = tuple(-(-s // w) for s, w in zip(spatial, window))
  pads = [(0, o * w - s) for s, w, o in zip(spatial, window, out)]
  if any(p for _, p in pads):
    x = jnp.pad(x, [(0, 0), *pads, (0, 0)], constant_values=-jnp.inf)
  split = [x.shape[0]]
  for o, w in zip(out, window):
    split += [o, w]
  x = x.reshape(*split, x.shape[-1])
  return x.max(axis=tuple(2 + 2 * i for i in range(len(window))))


def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
  """The ImageNet ResNet stem's overlapping max-pool: 3×3 windows, stride 2, padding 1
  (PyTorch's `MaxPool2d(3, 2, 1)`; flax `nn.max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1)))`).

  Shapes: x (B, H, W, C) -> (B, ceil(H/2), ceil(W/2), C). On CPU it is the maximum of
  the nine strided slices of the (−∞)-padded input (elementwise maxima; its gradient is
  a select, not `reduce_window`'s `select_and_scatter`, as for `max_pool`); elsewhere
  `nn.max_pool`. Forward identical; gradient identical wherever a window's maximum is
  unique.
  """
  if not cpu_forms():
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
  b, h, w, c = x.shape
  ho, wo = -(-h // 2), -(-w // 2)
  # Pad 1 before; after, enough for the last window (2·(o − 1) + 3 = 2·o + 1 rows).
  xp = jnp.pad(x, [(0, 0), (1, 2 * ho + 1 - h - 1), (1, 2 * wo + 1 - w - 1), (0, 0)],
               constant_values=-jnp.inf)
  out = None
  for i in range(3):
    for j in range(3):
      win = lax.slice(xp, (0, i, j, 0), (b, i + 2 * ho - 1, j + 2 * wo - 1, c),
                      (1, 2, 2, 1))
      out = win if out is None else jnp.maximum(out, win)
  return out


def activate_and_pool(x: jax.Array, act: Callable[[jax.Array], jax.Array],
                      window: Sequence[int], nondecreasing: bool) -> jax.Array:
  """`max_pool(act(x), window)`, computed as `act(max_pool(x, window))` (the same
  values) when `nondecreasing` (the activation's name is in `NONDECREASING`)."""
  if nondecreasing:
    return act(max_pool(x, window))
  return max_pool(act(x), window)


def channel_sum(x: jax.Array) -> jax.Array:
  """Σ over every axis but the last: (..., C) -> (C,), as a block sum over a leading
  axis (`x.reshape(k, -1).sum(0)`, k = gcd(rows, 32)) followed by the sum of the
  k-times smaller remainder (see the module docstring for why)."""
  c = x.shape[-1]
  k = math.gcd(math.prod(x.shape[:-1]), _SUM_BLOCKS)
  if k > 1:
    x = x.reshape(k, -1).sum(0)
  return x.reshape(-1, c).sum(0)


def channel_broadcast(v: jax.Array, shape: Sequence[int]) -> jax.Array:
  """(C,) -> `shape` (..., C): `v` broadcast over every axis but the last, written as the
  transpose of `channel_sum` (broadcast to the k-times smaller block, then over the k
  blocks), so that its gradient, Σ over the broadcast axes, is `channel_sum`'s fast form
  rather than XLA's strided reduction."""
  c = shape[-1]
  rows = math.prod(shape[:-1])
  k = math.gcd(rows, _SUM_BLOCKS)
  v = jnp.broadcast_to(v, (rows // k, c))
  if k > 1:
    v = jnp.broadcast_to(v.reshape(-1), (k, rows // k * c))
  return v.reshape(shape)


def batch_norm_train(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float,
                     axis_name: str | None) -> tuple[jax.Array, jax.Array, jax.Array]:
  r"""BatchNorm with batch statistics: (y, mean, var).

  With m = E[x], v = max(E[x²] − m², 0) per channel (over all axes but the last, and
  over the devices of `axis_name`, equal local batches), s = 1/√(v + ε):
  y = (x − m)·s·scale + bias, computed as x·a + (bias − m·a), a = s·scale: flax's
  `nn.BatchNorm` (its E[x²] − m² variance). Every per-channel sum is `channel_sum` and
  every per-channel broadcast `channel_broadcast`, so the gradient's sums (Σ dy,
  Σ dy·x) take the fast form too; plain jnp, so forward- and reverse-mode autodiff
  both apply.

  Shapes: x (..., C) float32; scale, bias (C,); y like x; mean, var (C,).
  """
  n = math.prod(x.shape[:-1])
  m = jnp.stack([channel_sum(x), channel_sum(x * x)]) / n
  if axis_name is not None:
    m = lax.pmean(m, axis_name)
  mean = m[0]
  var = jnp.maximum(m[1] - mean * mean, 0.0)
  a = scale * lax.rsqrt(var + epsilon)
  y = x * channel_broadcast(a, x.shape) + channel_broadcast(bias - mean * a, x.shape)
  return y, mean, var


class BatchNorm(nn.Module):
  """`nn.BatchNorm` over the last axis (same variables: params `scale`, `bias`;
  batch_stats `mean`, `var`; same running-average update, ε, `axis_name` and
  float32 statistics), its training-mode statistics and gradient by
  `batch_norm_train`. Shapes: x (..., C) -> like x, in `dtype` (default: x's).

  Mixed precision: whatever x's dtype (e.g. bfloat16), the statistics, the running
  averages and the normalization are computed in float32 (x is promoted first, as flax's
  `force_float32_reductions`); only the output is cast to `dtype`."""
  use_running_average: bool
  momentum: float = 0.99
  epsilon: float = 1e-5
  axis_name: str | None = None
  dtype: Any = None
  param_dtype: Any = jnp.float32
  scale_init: Callable[..., jax.Array] = nn.initializers.ones

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    ra_mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32), (c,))
    ra_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, jnp.float32), (c,))
    scale = self.param("scale", self.scale_init, (c,), self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, (c,), self.param_dtype)
    dtype = self.dtype or jnp.result_type(x, scale)
    x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    scale, bias = scale.astype(x32.dtype), bias.astype(x32.dtype)
    if self.use_running_average:
      y = (x32 - ra_mean.value) * (scale * lax.rsqrt(ra_var.value + self.epsilon)) + bias
      return y.astype(dtype)
    initializing = self.is_initializing()
    y, mean, var = batch_norm_train(x32, scale, bias, self.epsilon,
                                    None if initializing else self.axis_name)
    if not initializing:
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    return y.astype(dtype)


def _same_pads(spatial, kernel, padding):
  if isinstance(padding, str):
    return lax.padtype_to_pads(spatial, kernel, (1,) * len(kernel), padding)
  return [tuple(p) for p in padding]


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _shifted_conv(x, kernel, pads):
  """Stride-1 NHWC/HWIO convolution as Σ_taps Σ_ci shift(x)[..., ci]·kernel[tap, ci]
  (taps that read only padding are skipped); its tangent (and so its gradients, by
  transposition) is `lax.conv_general_dilated`'s."""
  spatial = x.shape[1:-1]
  xp = jnp.pad(x, [(0, 0), *pads, (0, 0)])
  out_shape = tuple(s + lo + hi - k + 1
                    for s, (lo, hi), k in zip(spatial, pads, kernel.shape[:-2]))
  y = None
  for tap in _taps(spatial, pads, kernel.shape[:-2], out_shape):
    window = xp[(slice(None), *(slice(t, t + o) for t, o in zip(tap, out_shape)))]
    for ci in range(x.shape[-1]):
      term = window[..., ci:ci + 1] * kernel[tap][ci]
      y = term if y is None else y + term
  return y


@functools.partial(_shifted_conv.defjvp, symbolic_zeros=True)
def _shifted_conv_jvp(pads, primals, tangents):
  x, kernel = primals
  dx, dkernel = tangents
  y = _shifted_conv(x, kernel, pads)
  dy = jnp.zeros_like(y)
  if not isinstance(dx, jax.custom_derivatives.SymbolicZero):
    dy = dy + _lax_conv(dx, kernel, pads)
  if not isinstance(dkernel, jax.custom_derivatives.SymbolicZero):
    dy = dy + _lax_conv(x, dkernel, pads)
  return y, dy


def _taps(spatial, pads, kernel, out_shape):
  """Kernel offsets whose window overlaps the unpadded input."""
  ranges = []
  for s, (lo, _), k, o in zip(spatial, pads, kernel, out_shape):
    ranges.append([t for t in range(k) if t + o > lo and t < lo + s])
  return [tuple(t) for t in _product(ranges)]


def _product(ranges):
  out = [()]
  for r in ranges:
    out = [p + (t,) for p in out for t in r]
  return out


def _lax_conv(x, kernel, pads):
  return lax.conv_general_dilated(x, kernel, (1,) * (x.ndim - 2), pads,
                                  dimension_numbers=_nhwc(x.ndim))


def _nhwc(ndim: int) -> lax.ConvDimensionNumbers:
  spatial = "".join("HWDXYZ"[i] for i in range(ndim - 2))
  return lax.conv_dimension_numbers(
      (1,) * ndim, (1,) * ndim, ("N" + spatial + "C", spatial + "IO", "N" + spatial + "C"))


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None,
                         feature_group_count=1, precision=None, **kwargs):
  """`lax.conv_general_dilated` for `nn.Conv(conv_general_dilated=...)`: on CPU, a
  stride-1, undilated, ungrouped channels-last convolution of at most
  `SHIFTED_CONV_MAX_TERMS` terms runs its forward pass as shifted multiply-adds (its
  gradients are `lax.conv_general_dilated`'s); everything else is
  `lax.conv_general_dilated` itself."""
  nd = lhs.ndim
  ones = (1,) * (nd - 2)
  fast = (cpu_forms() and not kwargs and feature_group_count == 1
          and lhs.shape[-1] <= SHIFTED_CONV_MAX_TERMS
          and tuple(int(s) for s in window_strides) == ones
          and tuple(int(d) for d in (lhs_dilation or ones)) == ones
          and tuple(int(d) for d in (rhs_dilation or ones)) == ones
          and dimension_numbers == _nhwc(nd) and lhs.dtype == rhs.dtype)
  if fast:
    spatial, kernel = lhs.shape[1:-1], rhs.shape[:-2]
    pads = tuple(tuple(int(v) for v in p) for p in _same_pads(spatial, kernel, padding))
    out = tuple(s + lo + hi - k + 1 for s, (lo, hi), k in zip(spatial, pads, kernel))
    if len(_taps(spatial, pads, kernel, out)) * lhs.shape[-1] <= SHIFTED_CONV_MAX_TERMS:
      return _shifted_conv(lhs, rhs, pads)
  return lax.conv_general_dilated(
      lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
      rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
      feature_group_count=feature_group_count, precision=precision, **kwargs)
