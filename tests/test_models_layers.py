"""Tests for mixjax.models.layers: every CPU form equals the standard layer (flax /
lax) in the forward pass and in the gradients with respect to its input and its
parameters, on the configurations the models use; the models built from them equal the
same models built from the standard layers."""
from __future__ import annotations

import chex
import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from mixjax.models import base
from mixjax.models import get_model
from mixjax.models import layers

def _normal(*shape, scale=1.0, shift=0.0, seed=0):
  """Gaussian float32 draws, the same for the same arguments (whatever the test order)."""
  rng = np.random.default_rng([seed, *shape])
  return jnp.asarray(rng.normal(size=shape) * scale + shift, jnp.float32)


def _vjp(f, *args):
  """(f(*args), the VJP of f at args applied to a random cotangent that depends only on
  the output's shapes: two functions with equal outputs get the same one)."""
  out, vjp = jax.vjp(f, *args)
  rng = np.random.default_rng(1)
  ct = jax.tree.map(lambda o: jnp.asarray(rng.normal(size=o.shape), o.dtype), out)
  return out, vjp(ct)


def _assert_close(a, b, rtol=1e-5, atol=1e-5):
  """Tree-wise |a − b| ≤ atol·max|b| + rtol·|b| (float32 rounding of sums and products)."""
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    chex.assert_equal_shape([x, y])
    y = np.asarray(y)
    np.testing.assert_allclose(x, y, rtol=rtol, atol=atol * max(np.abs(y).max(), 1e-30))


@pytest.fixture
def standard_forms(monkeypatch):
  """Makes `layers` choose the standard ops, as on GPU/TPU."""
  monkeypatch.setattr(layers, "cpu_forms", lambda: False)


# --- max-pool ---------------------------------------------------------------------

POOLS = [((3, 28, 28, 4), (2, 2)), ((2, 14, 14, 8), (2, 2)), ((2, 7, 7, 3), (2, 2)),
         ((2, 5, 3, 2), (2, 2)), ((4, 40, 1, 5), (2, 1)), ((2, 9, 1, 2), (2, 1))]


@pytest.mark.parametrize("shape,window", POOLS)
def test_max_pool_equals_nn_max_pool_and_its_gradient(shape, window):
  """Continuous random inputs: every window's maximum is unique (almost surely), so the
  gradients must agree exactly; odd sizes exercise the SAME padding."""
  assert layers.cpu_forms()
  x = _normal(*shape)
  ref = lambda x: nn.max_pool(x, window, strides=window, padding="SAME")
  out, (g,) = _vjp(jax.jit(lambda x: layers.max_pool(x, window)), x)
  ref_out, (ref_g,) = _vjp(ref, x)
  np.testing.assert_array_equal(out, ref_out)
  np.testing.assert_array_equal(g, ref_g)


def test_max_pool_splits_the_gradient_of_tied_maxima():
  """At a tie the cotangent is split equally among the tied entries (the window's total
  gradient is the same as `nn.max_pool`'s, which gives all of it to one entry)."""
  x = jnp.asarray([[1.0, 3.0], [3.0, 2.0]]).reshape(1, 2, 2, 1)
  g = jax.grad(lambda x: layers.max_pool(x, (2, 2)).sum())(x)
  np.testing.assert_allclose(g.reshape(2, 2), [[0.0, 0.5], [0.5, 0.0]])
  ref = jax.grad(lambda x: nn.max_pool(x, (2, 2), strides=(2, 2)).sum())(x)
  assert float(ref.sum()) == float(g.sum()) == 1.0


def test_max_pool_standard_form_off_cpu(standard_forms):
  del standard_forms
  x = _normal(2, 6, 6, 3)
  jaxpr = str(jax.make_jaxpr(lambda x: layers.max_pool(x, (2, 2)))(x))
  assert "reduce_window_max" in jaxpr


# The ResNet-50 stem's pool (3×3, stride 2, padding 1) after the 112×112 stem, odd and
# tiny sizes (padding at the end, a single window).
STEM_POOLS = [(2, 16, 16, 4), (2, 7, 9, 3), (1, 1, 1, 2), (2, 2, 3, 1), (1, 112, 112, 2)]


@pytest.mark.parametrize("shape", STEM_POOLS)
def test_max_pool_3x3_s2_equals_nn_max_pool_and_its_gradient(shape):
  """Overlapping windows: each entry belongs to up to four windows; with continuous
  inputs every window's maximum is unique, so forward and gradient must agree exactly."""
  x = _normal(*shape)
  ref = lambda x: nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
  out, (g,) = _vjp(jax.jit(layers.max_pool_3x3_s2), x)
  ref_out, (ref_g,) = _vjp(ref, x)
  chex.assert_shape(out, (shape[0], -(-shape[1] // 2), -(-shape[2] // 2), shape[3]))
  np.testing.assert_array_equal(out, ref_out)
  np.testing.assert_array_equal(g, ref_g)
  assert "reduce_window" not in str(jax.make_jaxpr(jax.grad(
      lambda x: layers.max_pool_3x3_s2(x).sum()))(x))


def test_max_pool_3x3_s2_standard_form_off_cpu(standard_forms):
  del standard_forms
  x = _normal(2, 6, 6, 3)
  assert "reduce_window_max" in str(jax.make_jaxpr(layers.max_pool_3x3_s2)(x))


# --- pool before the activation ----------------------------------------------------

def test_nondecreasing_set_is_exactly_the_nondecreasing_activations():
  """Checked on a grid against every registered activation: the largest drop below the
  running maximum is float32 rounding (float32 tanh wiggles by 1e-7 near ±1) for the
  members, and large for the others (gelu and silu dip to −0.17 and −0.28 below zero,
  so they must pool after the activation)."""
  grid = jnp.linspace(-8.0, 8.0, 4001)
  for name in base.ACTIVATIONS.names():
    values = np.asarray(base.ACTIVATIONS.get(name)(grid), np.float64)
    drop = np.max(np.maximum.accumulate(values) - values)
    assert (name in layers.NONDECREASING) == (drop < 1e-6), (name, drop)


@pytest.mark.parametrize("name", sorted(base.ACTIVATIONS.names()))
def test_activate_and_pool_equals_pool_of_activation(name):
  act = base.ACTIVATIONS.get(name)
  x = _normal(3, 8, 6, 4, scale=2.0)
  f = lambda x: layers.activate_and_pool(x, act, (2, 2), name in layers.NONDECREASING)
  ref = lambda x: nn.max_pool(act(x), (2, 2), strides=(2, 2), padding="SAME")
  out, g = _vjp(jax.jit(f), x)
  ref_out, ref_g = _vjp(ref, x)
  _assert_close(out, ref_out, rtol=1e-6, atol=1e-7)
  _assert_close(g, ref_g, rtol=1e-5, atol=1e-6)


# --- BatchNorm ----------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(4, 28, 28, 32), (3, 5, 7, 6), (2, 4, 4, 8), (6, 3)])
def test_channel_sum_equals_float64_sum(shape):
  x = _normal(*shape, shift=1.0)
  want = np.asarray(x, np.float64).reshape(-1, shape[-1]).sum(0)
  np.testing.assert_allclose(layers.channel_sum(x), want, rtol=1e-5, atol=1e-4)


def _bn_pair(**kwargs):
  kw = dict(momentum=0.9, epsilon=1e-5, **kwargs)
  return nn.BatchNorm(use_running_average=False, **kw), \
      layers.BatchNorm(use_running_average=False, **kw)


def _bn_variables(c):
  return {"params": {"scale": _normal(c, scale=0.5, shift=1.0), "bias": _normal(c, seed=1)},
          "batch_stats": {"mean": _normal(c, seed=2), "var": jnp.exp(_normal(c, seed=3))}}


# The shapes of the models' BatchNorm layers (recipe CNN, CIFAR CNN, ResNet stages), small
# batches; inputs with a mean of 3 standard deviations (conv outputs are not centred).
@pytest.mark.parametrize("shape", [(8, 28, 28, 8), (6, 14, 14, 16), (4, 8, 8, 32),
                                   (5, 3, 3, 3), (2, 4, 4, 64)])
def test_batch_norm_train_equals_flax_with_gradients(shape):
  ref, new = _bn_pair()
  x = _normal(*shape, scale=2.0, shift=6.0)
  variables = _bn_variables(shape[-1])

  def apply(model):
    def f(params, x):
      y, upd = model.apply({**variables, "params": params}, x, mutable=["batch_stats"])
      return y, upd["batch_stats"]
    return f

  (y, stats), (gp, gx) = _vjp(jax.jit(apply(new)), variables["params"], x)
  (ref_y, ref_stats), (ref_gp, ref_gx) = _vjp(apply(ref), variables["params"], x)
  _assert_close(y, ref_y, rtol=1e-4, atol=1e-5)
  _assert_close(stats, ref_stats, rtol=1e-4, atol=1e-6)
  _assert_close(gx, ref_gx, rtol=1e-3, atol=1e-4)
  _assert_close(gp, ref_gp, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("form", ["cpu", "flax"])
def test_batch_norm_statistics_of_bfloat16_inputs_are_float32(form):
  """Mixed precision: with a bfloat16 input and dtype=bfloat16, the batch statistics, the
  running averages and the normalization are float32 computations on the (exactly
  representable) input. So they equal, bit for bit, those of the float32 layer fed the
  same values as float32, and the bfloat16 output is that float32 output rounded once:
  within one bfloat16 spacing, 2^-7 relative (the two programs fuse the float32
  arithmetic differently, so a value near a rounding boundary may round either way);
  statistics reduced in bfloat16 would be off by up to that spacing too. Both forms:
  `layers.BatchNorm` (CPU) and flax's `nn.BatchNorm` (elsewhere)."""
  cls = layers.BatchNorm if form == "cpu" else nn.BatchNorm
  x16 = _normal(6, 14, 14, 16, scale=2.0, shift=6.0).astype(jnp.bfloat16)
  variables = _bn_variables(16)

  def apply(dtype, x):
    m = cls(use_running_average=False, momentum=0.9, epsilon=1e-5, dtype=dtype)
    return jax.jit(lambda v, x: m.apply(v, x, mutable=["batch_stats"]))(variables, x)

  y16, upd16 = apply(jnp.bfloat16, x16)
  y32, upd32 = apply(jnp.float32, x16.astype(jnp.float32))
  assert y16.dtype == jnp.bfloat16
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(upd16))
  chex.assert_trees_all_equal(upd16, upd32)
  np.testing.assert_allclose(np.asarray(y16, np.float32), y32, rtol=2.0**-7, atol=0)
  # And the statistics are the float64 ones to float32 rounding (E[x²] − m² cancels
  # ~10× here: var 4 against E[x²] ≈ 40), far below bfloat16's 2^-8.
  xd = np.asarray(x16, np.float64).reshape(-1, 16)
  want_mean = 0.9 * np.asarray(variables["batch_stats"]["mean"]) + 0.1 * xd.mean(0)
  np.testing.assert_allclose(upd16["batch_stats"]["mean"], want_mean, rtol=1e-5, atol=1e-6)
  want_var = 0.9 * np.asarray(variables["batch_stats"]["var"]) + 0.1 * xd.var(0)
  np.testing.assert_allclose(upd16["batch_stats"]["var"], want_var, rtol=1e-4)


def test_batch_norm_eval_and_init_equal_flax():
  ref, new = _bn_pair()
  x = _normal(4, 5, 5, 6, shift=2.0)
  ref_init = ref.init(jax.random.key(0), x)
  new_init = new.init(jax.random.key(0), x)
  chex.assert_trees_all_equal(new_init, ref_init)
  variables = _bn_variables(6)
  ref_eval, new_eval = (nn.BatchNorm(use_running_average=True, momentum=0.9),
                        layers.BatchNorm(use_running_average=True, momentum=0.9))
  out, (gp, gx) = _vjp(lambda p, x: new_eval.apply({**variables, "params": p}, x),
                       variables["params"], x)
  ref_out, (ref_gp, ref_gx) = _vjp(lambda p, x: ref_eval.apply({**variables, "params": p}, x),
                                   variables["params"], x)
  _assert_close(out, ref_out, rtol=1e-5, atol=1e-6)
  _assert_close((gp, gx), (ref_gp, ref_gx), rtol=1e-5, atol=1e-6)


def test_batch_norm_axis_name_under_shard_map_equals_flax_and_the_global_batch():
  """4 devices × 3 examples, statistics over 'data', the loss `pmean`-ed as in the
  trainer: the gradients (parameters replicated, inputs sharded) equal flax's and those
  of one device on all 12 examples."""
  assert jax.device_count() >= 4
  mesh = jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  x = _normal(12, 6, 6, 5, scale=1.5, shift=2.0)
  w = _normal(12, 6, 6, 5, seed=1)
  variables = _bn_variables(5)

  def grads(model, sharded):
    def loss(params, x, w):
      y, upd = model.apply({**variables, "params": params}, x, mutable=["batch_stats"])
      local = jnp.mean(jnp.sin(y) * w) * 100.0
      return (lax.pmean(local, "data") if sharded else local), upd["batch_stats"]

    def body(params, x, w):
      (l, stats), g = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, x, w)
      return l, stats, g

    if not sharded:
      return jax.jit(body)(variables["params"], x, w)
    f = jax.shard_map(body, mesh=mesh, in_specs=(P(), P("data"), P("data")),
                      out_specs=(P(), P(), (P(), P("data"))))
    return jax.jit(f)(variables["params"], x, w)

  ref, new = _bn_pair(axis_name="data")
  glob, _ = _bn_pair()
  got, want, single = grads(new, True), grads(ref, True), grads(glob, False)
  _assert_close(got, want, rtol=1e-3, atol=1e-5)
  _assert_close(got, single, rtol=1e-3, atol=1e-5)


def test_batch_norm_vmapped_over_runs_equals_each_run():
  _, new = _bn_pair()
  x = _normal(3, 4, 5, 5, 6, shift=1.0)  # 3 runs
  params = {"scale": _normal(3, 6, shift=1.0), "bias": _normal(3, 6, seed=1)}
  stats = {"mean": jnp.zeros((3, 6)), "var": jnp.ones((3, 6))}

  def grad(p, s, x):
    f = lambda p, x: jnp.sum(jnp.cos(new.apply({"params": p, "batch_stats": s}, x,
                                               mutable=["batch_stats"])[0]))
    return jax.grad(f, argnums=(0, 1))(p, x)

  got = jax.jit(jax.vmap(grad))(params, stats, x)
  for r in range(3):
    one = grad(*jax.tree.map(lambda a: a[r], (params, stats, x)))
    _assert_close(jax.tree.map(lambda a: a[r], got), one, rtol=1e-4, atol=1e-5)


# --- convolutions -------------------------------------------------------------------

# (input shape, features, kernel, padding): the first convolution of the recipe CNN on
# 28×28×1, LeNet's on MNIST-1D seen as (40, 1, 1) (5 taps touch the input), the ResNet
# stem's explicit padding, asymmetric padding, and a 1-D convolution: all within
# `SHIFTED_CONV_MAX_TERMS`.
CONVS = [((4, 28, 28, 1), 8, (3, 3), "SAME"), ((5, 40, 1, 1), 6, (5, 5), "SAME"),
         ((2, 12, 12, 1), 5, (3, 3), ((1, 1), (1, 1))), ((3, 20, 1), 4, (5,), "SAME"),
         ((2, 9, 7, 1), 3, (3, 3), ((0, 2), (1, 0))), ((3, 10, 1, 3), 4, (3, 3), "SAME")]


@pytest.mark.parametrize("shape,features,kernel,padding", CONVS)
def test_shifted_conv_equals_nn_conv_with_gradients(shape, features, kernel, padding):
  x = _normal(*shape)
  conv = lambda f: nn.Conv(features, kernel, padding=padding, conv_general_dilated=f)
  ref, new = conv(None), conv(layers.conv_general_dilated)
  variables = ref.init(jax.random.key(0), x)
  variables = {"params": {"kernel": variables["params"]["kernel"],
                          "bias": _normal(features, seed=1)}}
  out, g = _vjp(jax.jit(lambda v, x: new.apply(v, x)), variables, x)
  ref_out, ref_g = _vjp(lambda v, x: ref.apply(v, x), variables, x)
  _assert_close(out, ref_out, rtol=1e-5, atol=1e-6)
  _assert_close(g, ref_g, rtol=1e-5, atol=1e-6)
  # The forward pass is the shifted form (no convolution op), not lax's.
  assert "conv_general_dilated" not in str(jax.make_jaxpr(new.apply)(variables, x))


def test_conv_with_more_terms_or_strides_is_lax():
  """More than `SHIFTED_CONV_MAX_TERMS` = 9 taps × channels (5×5×1 LeNet on 28×28,
  3×3×3 on CIFAR), or a stride: lax's convolution, unchanged."""
  assert layers.SHIFTED_CONV_MAX_TERMS == 9
  for shape, kernel, strides in [((2, 8, 8, 1), (5, 5), (1, 1)),
                                 ((2, 8, 8, 3), (3, 3), (1, 1)),
                                 ((2, 8, 8, 1), (3, 3), (2, 2))]:
    x = _normal(*shape)
    m = nn.Conv(4, kernel, strides=strides, conv_general_dilated=layers.conv_general_dilated)
    v = m.init(jax.random.key(0), x)
    assert "conv_general_dilated" in str(jax.make_jaxpr(m.apply)(v, x))
    ref = nn.Conv(4, kernel, strides=strides)
    np.testing.assert_array_equal(m.apply(v, x), ref.apply(v, x))


# --- the models ---------------------------------------------------------------------

MODELS = [("cnn", dict(stages=((32,), (64,))), (4, 28, 28, 1)),   # the recipe network
          ("lenet", dict(features=(16, 32), dense_sizes=(128,)), (8, 40, 1, 1)),  # MNIST-1D
          ("cnn", dict(stages=((8, 8), (16,)), dense_sizes=(32,)), (4, 12, 12, 3)),
          ("cnn", dict(stages=((8,), (16,)), activation="gelu", dense_sizes=(32,)),
           (4, 12, 12, 1)),
          ("lenet", dict(features=(8, 16), dense_sizes=(32,)), (4, 13, 13, 1))]


def _model_grads(name, kwargs, x, seed=0):
  model = get_model(name, 10, **kwargs)
  variables = jax.jit(lambda x: model.init(jax.random.key(seed), x))(x)
  w = jnp.asarray(np.random.default_rng(2).normal(size=(x.shape[0], 10)), jnp.float32)

  def loss(params, x):
    out, upd = model.apply({**variables, "params": params}, x, train=True,
                           mutable=["batch_stats"])
    return jnp.sum(jnp.sin(out) * w), (out, upd)

  return jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True))(variables["params"], x)


@pytest.mark.parametrize("name,kwargs,shape", MODELS)
def test_models_equal_their_standard_layer_versions(name, kwargs, shape, monkeypatch):
  """Logits, BatchNorm statistics and gradients (parameters and input) of the model on
  the CPU forms equal those of the same model on `nn.max_pool` / `nn.BatchNorm` /
  `lax.conv_general_dilated` (the GPU/TPU forms)."""
  x = _normal(*shape)
  got = _model_grads(name, kwargs, x)
  monkeypatch.setattr(layers, "cpu_forms", lambda: False)
  want = _model_grads(name, kwargs, x)
  _assert_close(got, want, rtol=1e-3, atol=1e-4)


def _model_jvp(name, kwargs, x, seed=0):
  model = get_model(name, 10, **kwargs)
  variables = jax.jit(lambda x: model.init(jax.random.key(seed), x))(x)
  f = lambda x: model.apply(variables, x, train=True, mutable=["batch_stats"])[0]
  tangent = _normal(*x.shape, seed=3)
  return jax.jit(lambda x, t: jax.jvp(f, (x,), (t,)))(x, tangent)


@pytest.mark.parametrize("name,kwargs,shape", MODELS[:2])
def test_models_forward_mode_equals_their_standard_layer_versions(name, kwargs, shape,
                                                                   monkeypatch):
  """Input-direction derivatives (`jax.jvp`, as the approximate mixup risk takes them)
  through the CPU forms equal those through the standard layers."""
  x = _normal(*shape)
  got = _model_jvp(name, kwargs, x)
  monkeypatch.setattr(layers, "cpu_forms", lambda: False)
  want = _model_jvp(name, kwargs, x)
  _assert_close(got, want, rtol=1e-3, atol=1e-4)


def test_resnet_forward_equals_its_standard_layer_version(monkeypatch):
  """Forward and statistics only: a deep ReLU network's gradient at initialization moves
  by percents under a 1e-7 input perturbation (ReLU kinks), so float32 rounding alone
  makes gradients differ by more than a tolerance could separate from a bug; the
  layers' gradients are checked above."""
  model = get_model("preact_resnet18", 10, width=8, stage_sizes=(1, 1, 1, 1))
  x = _normal(4, 16, 16, 1)
  variables = jax.jit(model.init)(jax.random.key(0), x)
  f = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))
  got = f(variables, x)
  monkeypatch.setattr(layers, "cpu_forms", lambda: False)
  want = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(
      variables, x)
  _assert_close(got, want, rtol=1e-4, atol=1e-5)
