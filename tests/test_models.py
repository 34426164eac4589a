"""Tests for mixjax.models: shapes, parameter counts, cross-device BatchNorm, errors."""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from mixjax import models
from mixjax.models import get_model

KEY = jax.random.key(0)
# Parameter initialization is jitted (eager init compiles every op separately: ~10x
# slower on CPU) and uses the "rbg" PRNG, which compiles several times faster on CPU than
# threefry for dozens of truncated-normal draws; the values do not matter to these tests.
INIT_KEY = jax.random.key(0, impl="rbg")


def _num_params(model, shape):
  """Parameter count via jax.eval_shape (nothing is run or compiled)."""
  variables = jax.eval_shape(model.init, KEY, jnp.zeros(shape, jnp.float32))
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables["params"]))


# Independent closed-form counts from the architectures' definitions (PyTorch-style
# trainable parameters: conv kernels without bias, BN scale+shift, dense weight+bias).
def _preact_count(stages, w, nc, final_norm, cin=3):
  total, c_prev = 9 * cin * w, w
  for s, n in enumerate(stages):
    c = w * 2**s
    for b in range(n):
      c_in = c_prev if b == 0 else c
      total += 2 * c_in + 9 * c_in * c + 2 * c + 9 * c * c
      total += c_in * c if (c_in != c or (s > 0 and b == 0)) else 0
    c_prev = c
  return total + (2 * c_prev if final_norm else 0) + c_prev * nc + nc


def _resnet_count(stages, w, nc, cin=3):
  total, c_prev = 9 * cin * w + 2 * w, w
  for s, n in enumerate(stages):
    c = w * 2**s
    for b in range(n):
      c_in = c_prev if b == 0 else c
      total += 9 * c_in * c + 2 * c + 9 * c * c + 2 * c
      total += c_in * c + 2 * c if (c_in != c or (s > 0 and b == 0)) else 0
    c_prev = c
  return total + c_prev * nc + nc


def _wrn_count(depth, k, nc, cin=3):
  n = (depth - 4) // 6
  total = 9 * cin * 16 + _preact_count([n] * 3, 16 * k, nc, True, cin=16 * k) \
      - 9 * 16 * k * 16 * k  # reuse the pre-activation block formula with base width 16k
  # The first block's input has 16 (not 16k) channels: fix its three terms.
  c = 16 * k
  total += -(2 * c + 9 * c * c) + (2 * 16 + 9 * 16 * c + 16 * c)
  return total


def test_param_counts_match_closed_form_and_published():
  pre = _num_params(get_model("preact_resnet18", 10, final_norm=False), (1, 32, 32, 3))
  assert pre == _preact_count((2, 2, 2, 2), 64, 10, False)
  assert abs(pre / 1e6 - 11.17) < 0.005  # Zhang et al.'s PreAct-ResNet-18: 11.17M
  pre_he = _num_params(get_model("preact_resnet18", 10), (1, 32, 32, 3))
  assert pre_he == _preact_count((2, 2, 2, 2), 64, 10, True) == pre + 2 * 512
  r34 = _num_params(get_model("resnet34", 10), (1, 32, 32, 3))
  assert r34 == _resnet_count((3, 4, 6, 3), 64, 10)
  assert abs(r34 / 1e6 - 21.28) < 0.005  # CIFAR ResNet-34: 21.28M
  wrn = _num_params(get_model("wrn28_10", 10), (1, 32, 32, 3))
  assert wrn == _wrn_count(28, 10, 10)
  assert abs(wrn / 1e6 - 36.5) < 0.05  # Zagoruyko & Komodakis: 36.5M
  # Class count enters only through the head.
  pre100 = _num_params(get_model("preact_resnet18", 100, final_norm=False), (1, 32, 32, 3))
  assert pre100 - pre == 90 * 512 + 90


@pytest.mark.parametrize("shape", [(2, 28, 28, 1), (2, 32, 32, 3), (2, 40, 1, 1)])
def test_lenet_shapes(shape):
  model = get_model("lenet", 10)
  x = jax.random.normal(KEY, shape)
  variables = jax.jit(model.init)(INIT_KEY, x)
  out = model.apply(variables, x)
  chex.assert_shape(out, (2, 10))
  chex.assert_tree_all_finite(out)
  assert "batch_stats" not in variables


def test_mlp_flattens_and_is_the_stated_function():
  model = get_model("mlp", 3, hidden_sizes=(7,), activation="tanh")
  x = jax.random.normal(KEY, (4, 2, 5))
  variables = jax.jit(model.init)(INIT_KEY, x)
  out = model.apply(variables, x)
  chex.assert_shape(out, (4, 3))
  p = variables["params"]
  ref = np.tanh(np.asarray(x).reshape(4, 10) @ p["dense0"]["kernel"] + p["dense0"]["bias"])
  ref = ref @ p["head"]["kernel"] + p["head"]["bias"]
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name,kwargs", [
    ("preact_resnet18", {}),
    ("resnet34", {}),
    ("wrn28_10", dict(dropout_rate=0.3)),
])
def test_resnet_shapes_train_and_eval(name, kwargs):
  """Full-size networks, batch 2 of 32×32×3, traced with eval_shape (nothing compiled)."""
  model = get_model(name, 10, **kwargs)
  x = jnp.zeros((2, 32, 32, 3))

  def run(x):
    variables = jax.jit(model.init)(INIT_KEY, x)
    logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"],
                                  rngs={"dropout": jax.random.key(1)})
    out = model.apply({**variables, **updates}, x, train=False)
    return variables, logits, updates, out

  variables, logits, updates, out = jax.eval_shape(run, x)
  chex.assert_shape(logits, (2, 10))
  chex.assert_shape(out, (2, 10))
  assert logits.dtype == out.dtype == jnp.float32
  chex.assert_trees_all_equal_shapes(updates["batch_stats"], variables["batch_stats"])


def test_bfloat16_compute_keeps_float32_params_and_logits():
  model = get_model("preact_resnet18", 10, width=4, stage_sizes=(1, 1, 1, 1),
                    dtype=jnp.bfloat16)
  x = jax.random.normal(KEY, (2, 8, 8, 3))
  variables = jax.jit(model.init)(INIT_KEY, x)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
  out = jax.jit(model.apply)(variables, x)
  assert out.dtype == jnp.float32
  ref = jax.jit(get_model("preact_resnet18", 10, width=4, stage_sizes=(1, 1, 1, 1)).apply)(
      variables, x)
  # bfloat16 keeps 8 significant bits (relative rounding 2^-8 per op).
  np.testing.assert_allclose(out, ref, atol=0.05 * float(jnp.max(jnp.abs(ref))))


def test_batchnorm_axis_name_under_shard_map_matches_global_batch():
  """BN with axis_name='data' on 4 devices × 2 examples == one device on all 8."""
  assert jax.device_count() >= 4
  mesh = jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  x = jax.random.normal(KEY, (8, 8, 8, 3)) * 2.0 + 0.5
  kwargs = dict(width=4, stage_sizes=(1, 1, 1, 1))
  ref_model = get_model("preact_resnet18", 10, **kwargs)
  variables = jax.jit(ref_model.init)(INIT_KEY, x)
  ref_out, ref_upd = jax.jit(lambda v, x: ref_model.apply(v, x, train=True,
                                                          mutable=["batch_stats"]))(variables, x)

  def sharded(axis_name):
    model = get_model("preact_resnet18", 10, bn_axis_name=axis_name, **kwargs)

    def body(v, xs):
      out, upd = model.apply(v, xs, train=True, mutable=["batch_stats"])
      # One copy of the statistics per device, to compare them all.
      return out, jax.tree.map(lambda a: a[None], upd["batch_stats"])

    f = jax.shard_map(body, mesh=mesh, in_specs=(P(), P("data")),
                      out_specs=(P("data"), P("data")))
    return jax.jit(f)(variables, x)

  out, stats = sharded("data")
  np.testing.assert_allclose(out, ref_out, rtol=1e-4, atol=1e-4)
  for s, r in zip(jax.tree.leaves(stats), jax.tree.leaves(ref_upd["batch_stats"])):
    np.testing.assert_allclose(s, np.broadcast_to(r, s.shape), rtol=1e-4, atol=1e-5)
  # Control: without the axis name each device uses its own 2 examples.
  _, local = sharded(None)
  local_mean = local["final_bn"]["mean"]
  ref_mean = ref_upd["batch_stats"]["final_bn"]["mean"]
  assert np.max(np.abs(local_mean - ref_mean[None])) > 1e-3


def test_dropout_only_in_training():
  model = get_model("wrn28_10", 10, depth=10, widen_factor=1, dropout_rate=0.5)
  x = jax.random.normal(KEY, (2, 8, 8, 3))
  variables = jax.jit(model.init)(INIT_KEY, x)
  train = jax.jit(lambda k: model.apply(variables, x, train=True, mutable=["batch_stats"],
                                        rngs={"dropout": k})[0])
  a, b = train(jax.random.key(1)), train(jax.random.key(2))
  assert not np.allclose(a, b)
  np.testing.assert_array_equal(a, train(jax.random.key(1)))
  # Evaluation needs no dropout key and ignores dropout.
  chex.assert_shape(jax.jit(model.apply)(variables, x), (2, 10))


def test_registry_and_errors():
  assert set(models.MODELS.names()) == {"cnn", "mlp", "lenet", "preact_resnet18",
                                        "random_features", "resnet34", "wrn28_10"}
  with pytest.raises(ValueError, match="Known models: cnn, lenet, mlp, preact_resnet18"):
    get_model("resnet1000", 10)
  with pytest.raises(ValueError, match="unknown keyword.*widthh.*width"):
    get_model("preact_resnet18", 10, widthh=4)
  with pytest.raises(ValueError, match="Known activations"):
    get_model("mlp", 10, activation="relux")
  with pytest.raises(ValueError, match="6n \\+ 4"):
    get_model("wrn28_10", 10, depth=27)
  with pytest.raises(ValueError, match="dropout_rate"):
    get_model("wrn28_10", 10, dropout_rate=1.0)
  with pytest.raises(ValueError, match="bn_axis_name"):
    get_model("resnet34", 10, bn_axis_name=0)
  with pytest.raises(ValueError, match="num_classes"):
    get_model("mlp", 0)
  with pytest.raises(ValueError, match="at least 4 dimensions"):
    m = get_model("lenet", 10)
    m.init(KEY, jnp.zeros((2, 40)))


@pytest.mark.parametrize("stages,dense,expected", [
    # conv 3×3 kernels (no bias) + BatchNorm scale/shift per conv, then 7×7×C_last →
    # dense (+bias) → head (+bias), on 28×28×1 (two 2×2 pools: 28 → 14 → 7).
    (((32, 32), (64, 64)), (256,),
     (9 * 1 * 32 + 64) + (9 * 32 * 32 + 64) + (9 * 32 * 64 + 128) + (9 * 64 * 64 + 128)
     + (7 * 7 * 64 * 256 + 256) + (256 * 10 + 10)),  # 870,826
    (((32,), (64,)), (256,),
     (9 * 1 * 32 + 64) + (9 * 32 * 64 + 128) + (7 * 7 * 64 * 256 + 256) + (256 * 10 + 10)),
])
def test_cnn_parameter_count_and_shapes(stages, dense, expected):
  model = get_model("cnn", 10, stages=stages, dense_sizes=dense)
  assert _num_params(model, (2, 28, 28, 1)) == expected
  variables = model.init(KEY, jnp.zeros((2, 28, 28, 1)))
  chex.assert_shape(model.apply(variables, jnp.zeros((3, 28, 28, 1))), (3, 10))


def test_random_features_approximate_the_gaussian_kernel_and_only_the_head_trains():
  """φ(x)ᵀφ(y) → exp(−‖x − y‖²/(2ℓ²)) (Rahimi & Recht): for D = 16384 features each
  product is a mean of D bounded terms with sd ≤ √(2/D) ≈ 0.011; tolerance 5 sd. φ is read
  off as the gradient of the single logit with respect to the head's kernel. The feature
  map depends on `feature_seed` only, and the head is the only parameter."""
  d_feat, ell = 16384, 0.7
  model = get_model("random_features", 1, num_features=d_feat, bandwidth=ell)
  x = jax.random.normal(KEY, (6, 3)) * 0.6
  variables = model.init(INIT_KEY, x)
  assert set(variables) == {"params"} and set(variables["params"]) == {"head"}
  phi = jax.vmap(lambda xi: jax.grad(lambda p: model.apply({"params": p}, xi[None])[0, 0])(
      variables["params"])["head"]["kernel"][:, 0])(x)
  chex.assert_shape(phi, (6, d_feat))
  got = np.asarray(phi @ phi.T, np.float64)
  xd = np.asarray(x, np.float64)
  want = np.exp(-np.sum((xd[:, None] - xd[None]) ** 2, -1) / (2 * ell ** 2))
  np.testing.assert_allclose(got, want, atol=5 * np.sqrt(2 / d_feat))
  other = get_model("random_features", 1, num_features=d_feat, bandwidth=ell, feature_seed=1)
  assert not np.allclose(model.apply(variables, x), other.apply(variables, x))
  with pytest.raises(ValueError, match="bandwidth"):
    get_model("random_features", 2, bandwidth=0.0)
