"""The data-parallel train step (mixjax/train/step.py, methods.py).

References: a plain single-device `jax.grad` of the full-batch loss (no shard_map) for
the first SGD update; a 1-device mesh for the 4-device run with global draws; the library
losses (`mixup_loss`, `regmixup_loss`) for the methods' per-device path.
"""
from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mixjax import data as data_lib
from mixjax import losses
from mixjax import models
from mixjax import samplers
from mixjax.models import base as model_base
from mixjax.train import methods
from helpers import method_context  # pylint: disable=g-bad-import-order
from mixjax.train import state as state_lib
from mixjax.train import step as step_lib


class TinyBNNet(nn.Module):
  """conv -> BatchNorm (over `bn_axis_name`) -> relu -> mean pool -> dense: the smallest
  model with cross-device batch statistics (a ResNet compiles for a minute on CPU)."""
  num_classes: int
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(4, (3, 3))(x)
    x = nn.relu(model_base.batch_norm(train, self.bn_axis_name, jnp.float32)(x))
    return nn.Dense(self.num_classes)(x.mean(axis=(1, 2)))


def _build(devices, *, model, method="mixup", global_draw=True, tx=None, batch_size=16,
           augment=False, max_traces=None, x=None, y=None, num_classes=3):
  mesh = step_lib.make_mesh(devices)
  tx = tx or optax.sgd(0.1, momentum=0.9)
  ctx = method_context(sampler=samplers.beta(1.0), mixing__global_draw=global_draw)
  init = jax.jit(lambda k: state_lib.create_state(model, tx, k, jnp.zeros((1,) + x.shape[1:])),
                 out_shardings=step_lib.replicated(mesh))
  state = init(jax.random.key_data(jax.random.key(0)))
  augment_fn = None
  if augment:
    augment_fn = lambda k, im: data_lib.augment(k, im, crop_padding=2, flip=True)
  fn = step_lib.make_train_step(
      model=model, tx=tx, method=methods.METHODS.get(method), ctx=ctx, mesh=mesh,
      num_classes=num_classes, batch_size=batch_size,
      num_train=x.shape[0], steps_per_epoch=x.shape[0] // batch_size,
      augment_fn=augment_fn, max_traces=max_traces)
  return fn, state, step_lib.put_replicated(mesh, x), step_lib.put_replicated(mesh, y)


def _host(tree):
  return jax.tree.map(np.asarray, tree)


def _data(n=48, shape=(8, 8, 3), c=3, seed=0):
  rng = np.random.RandomState(seed)
  x = rng.randn(n, *shape).astype(np.float32)
  y = rng.randint(0, c, n).astype(np.int32)
  return x, y


def test_four_devices_equal_one_device_with_global_draws():
  """BatchNorm over 'data', augmentation keyed by global position, global λ/partners:
  the 4-device run follows the 1-device run (same losses and parameters after 4 steps,
  with epoch boundaries crossed) up to float32 reduction-order rounding."""
  assert jax.device_count() == 4
  x, y = _data()
  model = TinyBNNet(3, bn_axis_name="data")
  runs = []
  for devices in (jax.devices(), jax.devices()[:1]):
    chex.clear_trace_counter()
    fn, state, xs, ys = _build(devices, model=model, augment=True, max_traces=1, x=x, y=y)
    losses_seen = []
    for _ in range(4):  # 3 steps per epoch: crosses into epoch 1
      state, m = fn(state, xs, ys, None)  # max_traces=1: the step never retraces
      losses_seen.append(float(m["loss"]))
    runs.append((np.array(losses_seen), _host((state.params, state.batch_stats))))
  (l4, p4), (l1, p1) = runs
  np.testing.assert_allclose(l4, l1, rtol=1e-5, atol=1e-6)
  for a, b in zip(jax.tree.leaves(p4), jax.tree.leaves(p1)):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
  assert all(np.all(np.isfinite(a)) for a in jax.tree.leaves(p4))


def test_gradient_is_global_batch_mean_gradient_not_divided_again():
  """One SGD step on 4 devices equals params − lr ∇[(1/n) Σ ℓ] computed by plain
  jax.grad on one device (batch = whole set, so the order does not matter). A second
  pmean of the gradients would show as a factor 1/4, a missing reduction as a factor 4."""
  x, y = _data(n=32, shape=(5,), c=4)
  model = models.get_model("mlp", 4, hidden_sizes=(7,))
  lr = 0.5
  fn, state, xs, ys = _build(jax.devices(), model=model, method="erm", tx=optax.sgd(lr),
                             batch_size=32, x=x, y=y, num_classes=4)
  params0 = _host(state.params)
  state, m = fn(state, xs, ys, None)

  def ref_loss(p):
    logits = model.apply({"params": p}, jnp.asarray(x))
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))

  ref_value, ref_grad = jax.value_and_grad(ref_loss)(params0)
  np.testing.assert_allclose(float(m["loss"]), float(ref_value), rtol=1e-5)
  expected = jax.tree.map(lambda p, g: p - lr * g, params0, ref_grad)
  for a, b in zip(jax.tree.leaves(_host(state.params)), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_nonfinite_update_is_skipped_and_step_recorded():
  x, y = _data(n=32, shape=(5,), c=4)
  model = models.get_model("mlp", 4, hidden_sizes=(7,))
  fn, state, xs, ys = _build(jax.devices(), model=model, method="erm", tx=optax.sgd(1e38),
                             batch_size=16, x=x, y=y, num_classes=4)
  history = [_host(state.params)]
  for _ in range(4):
    state, _ = fn(state, xs, ys, None)
    history.append(_host(state.params))
  # An update overflows float32 within two steps: it is rejected, its step recorded,
  # and every later step leaves the last good parameters untouched.
  bad = int(state.first_nonfinite)
  assert 1 <= bad <= 2, bad
  assert int(state.step) == 4
  for later in history[bad:]:
    for a, b in zip(jax.tree.leaves(later), jax.tree.leaves(history[bad - 1])):
      np.testing.assert_array_equal(a, b)
  assert all(np.all(np.isfinite(a)) for a in jax.tree.leaves(history[-1]))


@pytest.mark.parametrize("name", ["mixup", "regmixup"])
def test_per_device_methods_match_library_losses(name):
  """Outside shard_map (axis_name=None) the methods are the library objectives at the
  same key: mixup_loss and regmixup_loss (= ERM + η · mixup)."""
  x, y = _data(n=12, shape=(6,), c=3)
  y1h = jax.nn.one_hot(y, 3)
  w = jax.random.normal(jax.random.key(1), (6, 3))
  f = lambda z: z @ w
  key = jax.random.key(3)
  sampler = samplers.beta(0.7)
  ctx = method_context(sampler=sampler, method__eta=0.6, axis_name=None)
  got = methods.METHODS.get(name)(ctx, f, jnp.asarray(x), y1h, key)
  if name == "mixup":
    want = losses.mixup_loss(key, f, x, y1h, sampler)
  else:
    want = losses.regmixup_loss(key, f, x, y1h, sampler, eta=0.6)
  np.testing.assert_allclose(float(got), float(want), rtol=1e-6)


def test_global_draw_rows_match_one_mix_of_the_global_batch():
  """With global_draw each device's rows are its slice of `mix` on the whole batch with
  the shared key (reference: one unsharded `mix` call)."""
  x, y = _data(n=8, shape=(3,), c=2)
  y1h = jax.nn.one_hot(y, 2)
  ctx = method_context(sampler=samplers.beta(1.0), mixing__global_draw=True)
  key = jax.random.key(5)
  mesh = step_lib.make_mesh()
  P = step_lib.P
  body = lambda xx, yy: methods.draw_mix(ctx, key, xx, yy)
  out = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(P("data"), P("data")),
                              out_specs=P("data")))(jnp.asarray(x), y1h)
  ref = jax.jit(lambda xx, yy: methods.draw_mix(
      ctx.replace(global_draw=False, axis_name=None), key, xx, yy)
  )(jnp.asarray(x), y1h)
  for a, b in zip(out, ref):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)
  assert sorted(np.asarray(out[3]).tolist()) == list(range(8))  # a permutation of 0..7


def test_per_device_draws_equal_a_one_device_replay_of_each_devices_key():
  """The default per-device λ/partner draw (global_draw=False) on 4 devices: one SGD +
  momentum step equals, on one device, the mean over the 4 shards of `mixup_loss` with
  the key step.py gives device d (fold_in(fold_in(step key, 1), d)), differentiated with
  jax.grad and fed to an optax.sgd built here: same loss, same parameters and momentum.
  Replaying with one key for all shards (no fold_in of d) gives another loss."""
  assert jax.device_count() == 4
  n, c, bsz, lr, mu = 32, 3, 16, 0.3, 0.9
  x, y = _data(n=n, shape=(6,), c=c, seed=4)
  model = models.get_model("mlp", c, hidden_sizes=(7,), activation="tanh")
  fn, state, xs, ys = _build(jax.devices(), model=model, method="mixup", global_draw=False,
                             tx=optax.sgd(lr, momentum=mu), batch_size=bsz, x=x, y=y,
                             num_classes=c)
  sampler = samplers.beta(1.0)  # what _build configures
  rng = np.asarray(state.rng)
  # The loop's path: epoch 0's permutation computed once and passed in (`order`); the
  # replay below draws the batch with `batch_indices` instead.
  mesh = step_lib.make_mesh(jax.devices())
  data_key = jax.random.fold_in(jax.random.wrap_key_data(jnp.asarray(rng)),
                                state_lib.KEY_DATA)
  order = (step_lib.put_replicated(mesh, np.int32(0)), step_lib.put_replicated(
      mesh, np.asarray(data_lib.epoch_permutations(data_key, 0, 1, n))))
  # Step 1 first (from step 0's state), so that the replayed step is not the first one.
  state, _ = fn(state, xs, ys, None, None, order)
  params = _host(state.params)
  trace = _host(state.opt_state[0].trace)
  state, m = fn(state, xs, ys, None, None, order)
  step = 1

  root = jax.random.wrap_key_data(jnp.asarray(rng))
  idx = np.asarray(data_lib.batch_indices(jax.random.fold_in(root, state_lib.KEY_DATA),
                                          step, num_examples=n, batch_size=bsz))
  method_key = jax.random.fold_in(
      jax.random.fold_in(jax.random.fold_in(root, state_lib.KEY_STEP), step), 1)
  shards = idx.reshape(4, bsz // 4)

  def replay_loss(p, fold_device=True):
    f = lambda z: model.apply({"params": p}, z)
    per = [losses.mixup_loss(
        jax.random.fold_in(method_key, d) if fold_device else method_key,
        f, jnp.asarray(x[rows]), jax.nn.one_hot(y[rows], c), sampler)
           for d, rows in enumerate(shards)]
    return jnp.mean(jnp.stack(per))  # pmean over the devices

  ref_loss, grads = jax.value_and_grad(replay_loss)(params)
  np.testing.assert_allclose(float(m["loss"]), float(ref_loss), rtol=1e-5)
  tx = optax.sgd(lr, momentum=mu)
  opt = tx.init(params)
  opt = (opt[0]._replace(trace=trace),) + tuple(opt[1:])
  upd, opt = tx.update(grads, opt, params)
  want = optax.apply_updates(params, upd)
  for a, b in zip(jax.tree.leaves(_host(state.params)), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  for a, b in zip(jax.tree.leaves(_host(state.opt_state[0].trace)),
                  jax.tree.leaves(opt[0].trace)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert abs(float(replay_loss(params, fold_device=False)) - float(ref_loss)) > 1e-3
