"""Tests for mixjax.models: shapes, parameter counts, cross-device BatchNorm, errors."""
from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P
from scipy import stats

from mixjax import losses
from mixjax import models
from mixjax import samplers
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
                                        "random_features", "resnet34", "resnet50",
                                        "wrn28_10"}
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


# Each parameter's law under each `models.INITS` scheme, as scipy distributions built from
# the layer's shape alone: convolution kernels (k, k, C_in, C_out) have fan_in k²·C_in and
# fan_out k²·C_out; dense kernels (D_in, D_out) have fan_in D_in. "he": N(0, 2/fan_out)
# convolutions, LeCun normal dense kernels (a normal truncated at ±2σ, σ = √(1/fan_in) /
# 0.8796, the truncation's standard deviation), biases 0. "torch": PyTorch's
# `kaiming_uniform_(a=√5)` and bias default, U(±1/√fan_in) for every kernel and bias.
def _init_law(scheme, name, shape, fan_in):
  if name == "bias":
    if scheme == "he":
      return None  # exactly zero
    b = 1.0 / np.sqrt(fan_in)
    return stats.uniform(-b, 2 * b)
  if scheme == "torch":
    b = 1.0 / np.sqrt(fan_in)
    return stats.uniform(-b, 2 * b)
  if len(shape) == 4:
    return stats.norm(0.0, np.sqrt(2.0 / (shape[0] * shape[1] * shape[3])))
  return stats.truncnorm(-2.0, 2.0, scale=np.sqrt(1.0 / fan_in) / 0.87962566103423978)


@pytest.mark.parametrize("scheme", ["he", "torch"])
@pytest.mark.parametrize("name,kwargs,shape", [
    ("cnn", {"stages": ((32,), (64,)), "dense_sizes": (256,)}, (1, 28, 28, 1)),
    ("lenet", {"features": (16, 32), "dense_sizes": (64,)}, (1, 28, 28, 1)),
    ("mlp", {"hidden_sizes": (300, 100)}, (1, 784)),
])
def test_weight_init_schemes_draw_their_stated_laws(scheme, name, kwargs, shape):
  model = get_model(name, 10, weight_init=scheme, **kwargs)
  params = jax.jit(model.init)(jax.random.key(3), jnp.zeros(shape))["params"]
  checked = 0
  for layer, p in params.items():
    if "kernel" not in p:
      continue  # BatchNorm: scale 1, bias 0 under every scheme
    kernel = np.asarray(p["kernel"], np.float64)
    fan_in = int(np.prod(kernel.shape[:-1]))
    for pname, x in (("kernel", kernel), ("bias", p.get("bias"))):
      if x is None:
        continue
      law = _init_law(scheme, pname, kernel.shape, fan_in)
      x = np.asarray(x, np.float64).ravel()
      if law is None:
        np.testing.assert_array_equal(x, 0.0, err_msg=f"{layer}/{pname}")
        continue
      lo, hi = law.support()
      assert lo <= x.min() and x.max() <= hi, (layer, pname, x.min(), x.max(), lo, hi)
      # At most 40 arrays are tested in all: at α = 1e-4 each, a false alarm has
      # probability < 0.4%. A law off by √2 in scale is rejected for the kernels (≥ 2,560
      # entries); the biases have 10 to 300 entries, so their test is weaker, and the
      # support check above bounds them.
      assert stats.kstest(x, law.cdf).pvalue > 1e-4, (layer, pname, x.std(), law.std())
      checked += 1
  assert checked >= sum("kernel" in p for p in params.values()) >= 3


def test_weight_init_unknown_name_lists_the_schemes():
  assert models.INITS.names() == ["he", "torch"]
  with pytest.raises(ValueError, match="Unknown initialization 'pytorch'.*he, torch.*"
                     "Did you mean 'torch'"):
    get_model("cnn", 10, weight_init="pytorch")


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


# --- ResNet-50 ----------------------------------------------------------------------

def _bottleneck_count(stages, w, nc, cin=3):
  """ResNet-50-style count: stem 7×7 conv + BN; per block 1×1, 3×3, 1×1 convolutions
  (c_in→f, f→f, f→4f) with a BN (2 per channel) after each, a 1×1 projection + BN on
  the first block of each stage; dense head with bias."""
  total, c_prev = 49 * cin * w + 2 * w, w
  for s, n in enumerate(stages):
    f = w * 2**s
    for b in range(n):
      c_in = c_prev if b == 0 else 4 * f
      total += c_in * f + 2 * f + 9 * f * f + 2 * f + f * 4 * f + 2 * 4 * f
      total += c_in * 4 * f + 2 * 4 * f if b == 0 else 0
    c_prev = 4 * f
  return total + c_prev * nc + nc


def test_resnet50_param_count_is_torchvisions():
  """25,557,032 trainable parameters for 1000 classes: torchvision's published count for
  `resnet50` (its model card: 25,557,032), and the closed form above."""
  n = _num_params(get_model("resnet50", 1000), (1, 224, 224, 3))
  assert n == _bottleneck_count((3, 4, 6, 3), 64, 1000) == 25_557_032
  assert _num_params(get_model("resnet50", 10, width=8, stage_sizes=(1, 2, 1, 1)),
                     (1, 32, 32, 3)) == _bottleneck_count((1, 2, 1, 1), 8, 10)


def test_resnet50_feature_maps_at_224():
  """He et al. (2015), Table 1: 224 → 112 (stem) → 56 (pool, conv2_x) → 28 → 14 → 7,
  with 256, 512, 1024, 2048 channels; read from the traced intermediates (nothing run)."""
  model = get_model("resnet50", 1000)
  x = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)

  def run(x):
    variables = model.init(KEY, x)
    return model.apply(variables, x, capture_intermediates=True, mutable=["intermediates"])

  logits, inter = jax.eval_shape(run, x)
  chex.assert_shape(logits, (2, 1000))
  inter = inter["intermediates"]
  chex.assert_shape(inter["stem"]["__call__"][0], (2, 112, 112, 64))
  for s, (n, hw) in enumerate(zip((3, 4, 6, 3), (56, 28, 14, 7))):
    for b in range(n):
      chex.assert_shape(inter[f"stage{s + 1}_block{b + 1}"]["__call__"][0],
                        (2, hw, hw, 256 * 2**s))


def test_resnet50_equals_a_pytorch_resnet50_with_the_same_weights():
  """The hand-written torchvision-layout ResNet-50 of `benchmarks/torch_reference.py`,
  given the same (randomized) weights and running statistics, computes the same logits in
  evaluation and in training mode (batch statistics) on an odd input size (35×35, so the
  stem, the pool and the strided convolutions all pad at the border). Tolerance: 2^-12
  of the largest logit. Measured: 7e-7 in evaluation, 9e-6 in training mode, where BN
  divides by standard deviations over as few as 3 values per channel (the last stage is
  1×1) and so amplifies the libraries' float32 rounding differences; plausible bugs are
  10^4 times larger: the stride in the first 1×1 convolution (ResNet v1) 0.59, a
  ceil-mode stem pool 0.11–0.43."""
  torch = pytest.importorskip("torch")
  from benchmarks import torch_reference  # pylint: disable=g-import-not-at-top
  kwargs = dict(width=8, stage_sizes=(1, 2, 1, 1))
  model = get_model("resnet50", 7, **kwargs)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(3, 35, 35, 3)).astype(np.float32)
  variables = jax.jit(model.init)(INIT_KEY, x)
  variables = {
      "params": jax.tree.map(lambda a: a + 0.1 * rng.normal(size=a.shape).astype(np.float32),
                             variables["params"]),
      "batch_stats": jax.tree.map(
          lambda a: np.abs(a + 0.1 * rng.normal(size=a.shape)).astype(np.float32),
          variables["batch_stats"])}
  ref_model = torch_reference.load_flax_resnet50(torch_reference.resnet50(7, **kwargs),
                                                 variables)
  xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
  for train in (False, True):
    ref_model.train(train)
    with torch.no_grad():
      want = ref_model(xt).numpy()
    got = jax.jit(lambda v, x, train=train: model.apply(v, x, train=train,
                                                        mutable=["batch_stats"])[0])(
                                                            variables, x)
    np.testing.assert_allclose(got, want, rtol=0, atol=2.0**-12 * np.abs(want).max())


def test_resnet50_zero_init_residual_makes_each_block_its_shortcut():
  """With γ = 0 on each block's last BN, the residual branch outputs its BN bias, 0, so
  at initialization every block is relu(shortcut): the identity blocks pass their
  (non-negative) input through unchanged. Default: γ = 1 (the official code's)."""
  x = jax.random.normal(KEY, (2, 16, 16, 3))
  model = get_model("resnet50", 5, width=4, stage_sizes=(1, 2, 1, 1), zero_init_residual=True)
  variables = jax.jit(model.init)(INIT_KEY, x)
  assert not np.any(variables["params"]["stage2_block2"]["bn3"]["scale"])
  default = jax.jit(get_model("resnet50", 5, width=4, stage_sizes=(1, 2, 1, 1)).init)(
      INIT_KEY, x)
  np.testing.assert_array_equal(default["params"]["stage2_block2"]["bn3"]["scale"], 1.0)
  _, inter = jax.jit(lambda v, x: model.apply(v, x, capture_intermediates=True,
                                               mutable=["intermediates"]))(variables, x)
  inter = inter["intermediates"]
  np.testing.assert_array_equal(inter["stage2_block2"]["__call__"][0],
                                inter["stage2_block1"]["__call__"][0])


# --- mixed precision ----------------------------------------------------------------

# Every registered model, small, with an input it accepts (the test below checks that no
# model is left out).
SMALL_MODELS = {
    "mlp": (dict(hidden_sizes=(16,)), (2, 6, 6, 1)),
    "lenet": (dict(features=(4, 8), dense_sizes=(8,)), (2, 12, 12, 1)),
    "cnn": (dict(stages=((4,), (8,)), dense_sizes=(8,)), (2, 8, 8, 1)),
    "random_features": (dict(num_features=32), (2, 5)),
    "preact_resnet18": (dict(width=4, stage_sizes=(1, 1, 1, 1)), (2, 8, 8, 3)),
    "resnet34": (dict(width=4, stage_sizes=(1, 1, 1, 1)), (2, 8, 8, 3)),
    "wrn28_10": (dict(depth=10, widen_factor=1, dropout_rate=0.1), (2, 8, 8, 3)),
    "resnet50": (dict(width=4, stage_sizes=(1, 1, 1, 1)), (2, 16, 16, 3)),
}
COMPUTE_OPS = ("dot_general", "conv_general_dilated")


def _equations(jaxpr):
  """Every equation of a jaxpr and of the jaxprs nested in its equations (custom JVPs,
  scans, pjit), depth first."""
  for eqn in jaxpr.eqns:
    yield eqn
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        sub = getattr(sub, "jaxpr", sub)
        if hasattr(sub, "eqns"):
          yield from _equations(sub)


def _train_grad(model, x):
  """variables -> (gradient of a loss of the logits with respect to the parameters,
  (logits, BatchNorm updates)): one training-mode forward pass and its backward pass."""
  def loss(params, rest):
    out, upd = model.apply({**rest, "params": params}, x, train=True,
                           mutable=["batch_stats"], rngs={"dropout": jax.random.key(1)})
    return jnp.sum(out ** 2), (out, upd)
  return lambda v: jax.grad(loss, has_aux=True)(
      v["params"], {k: a for k, a in v.items() if k != "params"})


def test_every_model_is_covered_by_the_mixed_precision_tests():
  assert set(SMALL_MODELS) == set(models.MODELS.names())


@pytest.mark.parametrize("name", sorted(SMALL_MODELS))
def test_bfloat16_computes_in_bfloat16_and_keeps_float32_state(name):
  """dtype="bfloat16" (`build_model`'s name, as the trainer passes it): every matrix
  product and convolution of the forward and backward pass takes bfloat16 operands, while
  the parameters, their gradients, the BatchNorm statistics and the logits are float32.
  The default float32 model has no bfloat16 value anywhere in the same program."""
  kwargs, shape = SMALL_MODELS[name]
  x = jax.random.normal(KEY, shape)
  model = models.build_model(name, 3, kwargs, dtype="bfloat16")
  variables = jax.eval_shape(model.init, INIT_KEY, x)  # dtypes and shapes: nothing is run
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(variables))
  grad = _train_grad(model, x)
  ops = [e for e in _equations(jax.make_jaxpr(grad)(variables).jaxpr)
         if e.primitive.name in COMPUTE_OPS]
  assert ops, f"{name}: no matrix product or convolution traced"
  for e in ops:
    assert all(v.aval.dtype == jnp.bfloat16 for v in e.invars), (name, e)
  grads, (logits, updates) = jax.eval_shape(grad, variables)
  assert logits.dtype == jnp.float32
  chex.assert_shape(logits, (shape[0], 3))
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves((grads, updates)))
  # The default (float32) program: no bfloat16 anywhere; and naming float32 (what a
  # config's default dtype passes) traces exactly the same program as not naming it.
  default = models.build_model(name, 3, kwargs)
  jaxpr = jax.make_jaxpr(_train_grad(default, x))(variables).jaxpr
  for e in _equations(jaxpr):
    assert all(getattr(v.aval, "dtype", None) != jnp.bfloat16
               for v in (*e.invars, *e.outvars)), (name, e)
  named = models.build_model(name, 3, kwargs, dtype="float32")
  assert str(jax.make_jaxpr(_train_grad(named, x))(variables).jaxpr) == str(jaxpr)


def test_build_model_dtype_names():
  model = models.build_model("mlp", 3, {}, dtype="float32")
  assert model.dtype is jnp.float32
  with pytest.raises(ValueError, match="unknown computation dtype 'float16'.*bfloat16"):
    models.build_model("mlp", 3, {}, dtype="float16")
  with pytest.raises(ValueError, match="set twice"):
    models.build_model("mlp", 3, {"dtype": "bfloat16"}, dtype="bfloat16")


def test_bfloat16_training_tracks_float32_within_the_seed_spread():
  """K = 8 seeds (initializations) each train the BatchNorm CNN for 30 steps with the
  ImageNet recipe's step (SGD Nesterov, coupled weight decay, mixup with per-example
  folded λ and reversed-batch partners; λ ~ U[0, 1] drawn directly rather than the
  recipe's Beta(0.2, 0.2), whose rejection sampler triples XLA's compile time here), in
  float32 and in bfloat16, on the same batches and draws; then the test loss on 128
  held-out examples.

  Tolerance, derived from the seed-to-seed spread measured here: if bfloat16 changes the
  outcome by no more than a change of seed does, the K bfloat16 and K float32 outcomes
  are two samples of one distribution, and the difference of their means lies within
  t · s · √(2/K) (s the pooled standard deviation, t Student's quantile with 2K − 2
  degrees of freedom) with probability 1 − p. p = 0.001 for each of the two checked
  quantities (the final test loss and the mean training loss of the last 10 steps)."""
  rng = np.random.default_rng(0)
  n, c, hw, k, steps, batch = 512, 4, 8, 8, 30, 32
  labels = rng.integers(0, c, n)
  colours = rng.normal(size=(c, 3))
  x = jnp.asarray(colours[labels][:, None, None, :] + 1.5 * rng.normal(size=(n, hw, hw, 3)),
                  jnp.float32)
  y = jax.nn.one_hot(labels, c)
  x_test, y_test, x, y = x[384:], y[384:], x[:384], y[:384]
  order = jnp.asarray(np.random.default_rng(1).integers(0, 384, (steps, batch)))
  law = lambda key, shape: jax.random.uniform(key, shape)
  tx = optax.chain(optax.add_decayed_weights(1e-4),
                   optax.sgd(0.05, momentum=0.9, nesterov=True))

  kwargs = dict(stages=((8,), (16,)), dense_sizes=(32,))

  def train(dtype, v):
    model = models.build_model("cnn", c, kwargs, dtype=dtype)

    def step(carry, t):
      params, batch_stats, opt = carry

      def loss_fn(p):
        out = {}

        def f(xm):
          logits, out["upd"] = model.apply({"params": p, "batch_stats": batch_stats}, xm,
                                           train=True, mutable=["batch_stats"])
          return logits
        loss = losses.mixup_loss(jax.random.fold_in(KEY, t), f, x[order[t]], y[order[t]],
                                 law, pairing="reverse", fold=True)
        return loss, out["upd"]["batch_stats"]

      (loss, batch_stats), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
      updates, opt = tx.update(g, opt, params)
      return (optax.apply_updates(params, updates), batch_stats, opt), loss

    init = (v["params"], v["batch_stats"], tx.init(v["params"]))
    (params, batch_stats, opt), train_losses = jax.lax.scan(step, init, jnp.arange(steps))
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves((params, batch_stats, opt)))
    logits = model.apply({"params": params, "batch_stats": batch_stats}, x_test)
    return losses.erm_loss(lambda _: logits, x_test, y_test), jnp.mean(train_losses[-10:])

  # The same float32 initial variables for both dtypes (seed s: key s); one compiled
  # program per dtype, run for each seed (vmapping the seeds makes the convolutions
  # grouped ones, which XLA:CPU compiles ~10x slower; "rbg" keys compile faster).
  init = jax.jit(models.build_model("cnn", c, kwargs).init)
  inits = [init(jax.random.key(s, impl="rbg"), x[:1]) for s in range(k)]
  runs = {dtype: jax.jit(functools.partial(train, dtype)) for dtype in ("float32", "bfloat16")}
  f32, bf16 = (np.asarray([run(v) for v in inits], np.float64).T for run in runs.values())
  assert np.all(np.isfinite(bf16))
  t = stats.t.ppf(1 - 0.001 / 2, 2 * k - 2)
  for name, a, b in zip(("test loss", "train loss"), f32, bf16):
    pooled = np.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2)
    assert abs(b.mean() - a.mean()) <= t * pooled * np.sqrt(2 / k), (name, a, b)
  # The runs learned (the check above is not vacuous): chance is ln 4 = 1.386.
  assert f32[0].mean() < 0.5 * np.log(c)
