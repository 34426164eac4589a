"""The optimizer and its learning-rate schedule (mixjax/train/optim.py).

References: the documented schedules in closed form (NumPy), optax's own composite
schedules (`optax.warmup_cosine_decay_schedule`, `optax.warmup_constant_schedule`), and
hand-written NumPy updates of SGD with coupled L2 (plain and Nesterov momentum) and of
AdamW (decoupled decay), plus the optax chains built independently in the test.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mixjax.train import config as config_lib
from mixjax.train import optim


def _cfg(**kw):
  c = config_lib.base_config().optimizer
  for k, v in kw.items():
    c[k] = v
  return c


def _values(schedule, steps):
  return np.asarray([float(schedule(jnp.asarray(s, jnp.int32))) for s in steps])


def _around(*points):
  """Each point p as p − 1, p, p + 1 (negative steps dropped), sorted and unique."""
  return sorted({q for p in points for q in (p - 1, p, p + 1) if q >= 0})


# ----------------------------------------------------------------------------------------
# Schedules.


def test_piecewise_with_warmup_at_every_boundary():
  """lr·s/w during the w warm-up steps, then lr × decay^(number of boundaries passed),
  a boundary at epoch b taking effect at step b·steps_per_epoch exactly."""
  spe, total, lr = 10, 80, 0.4
  cfg = _cfg(schedule="piecewise", lr=lr, boundaries=(2, 5), decay_factor=0.1,
             warmup_epochs=0.5)
  sched = optim.make_schedule(cfg, spe, total)
  w = 5
  steps = _around(0, w, 20, 50, total - 1, total)

  def ref(s):
    if s < w:
      return lr * s / w
    return lr * 0.1 ** sum(s >= b * spe for b in (2, 5))

  np.testing.assert_allclose(_values(sched, steps), [ref(s) for s in steps], rtol=1e-6,
                             atol=1e-9)
  # The warm-up ends where optax's own warm-up schedule ends (before the first boundary).
  optax_warm = optax.warmup_constant_schedule(0.0, lr, w)
  early = list(range(0, 20))
  np.testing.assert_allclose(_values(sched, early), _values(optax_warm, early), rtol=1e-6)


def test_piecewise_without_warmup_and_fractional_boundaries():
  """No warm-up: lr until the first boundary. Fractional epochs: boundary 0.29 epochs of
  100 steps is step 29 (float 0.29·100 = 28.999…), and two boundaries that land on the
  same step both apply (decay²)."""
  spe = 100
  cfg = _cfg(schedule="piecewise", lr=1.0, boundaries=(0.29, 1.0, 1.001), decay_factor=0.5,
             warmup_epochs=0.0)
  sched = optim.make_schedule(cfg, spe, 300)
  steps = _around(0, 29, 100)
  ref = [0.5 ** ((s >= 29) + 2 * (s >= 100)) for s in steps]
  np.testing.assert_allclose(_values(sched, steps), ref, rtol=1e-6)


@pytest.mark.parametrize("warmup_epochs", [0.0, 1.5])
def test_cosine_matches_optax_and_ends_at_zero_at_the_last_step(warmup_epochs):
  """Cosine: linear warm-up 0 → lr over w steps, then lr·½(1 + cos(π (s − w)/(T − w))),
  which reaches its end value 0 exactly at s = T = total_steps (the step count after
  the last update) and is positive at every step that updates (s < T)."""
  spe, total, lr = 8, 50, 0.3
  cfg = _cfg(schedule="cosine", lr=lr, warmup_epochs=warmup_epochs)
  sched = optim.make_schedule(cfg, spe, total)
  w = int(round(warmup_epochs * spe))
  steps = _around(0, w, total // 2, total - 1, total) + [total + 7]

  def ref(s):
    if s < w:
      return lr * s / w
    return lr * 0.5 * (1 + math.cos(math.pi * min(s - w, total - w) / (total - w)))

  got = _values(sched, steps)
  np.testing.assert_allclose(got, [ref(s) for s in steps], rtol=1e-5, atol=1e-7)
  if w:
    theirs = optax.warmup_cosine_decay_schedule(0.0, lr, w, total, end_value=0.0)
  else:
    theirs = optax.cosine_decay_schedule(lr, total)
  np.testing.assert_allclose(got, _values(theirs, steps), rtol=1e-6, atol=1e-8)
  assert float(sched(total)) == pytest.approx(0.0, abs=1e-8)
  assert float(sched(total - 1)) > 1e-4 * lr
  assert float(sched(w)) == pytest.approx(lr, rel=1e-6)


def test_constant_and_unknown_names():
  sched = optim.make_schedule(_cfg(schedule="constant", lr=0.05, warmup_epochs=0.0), 10, 100)
  np.testing.assert_allclose(_values(sched, [0, 50, 99]), 0.05, rtol=1e-7)
  with pytest.raises(ValueError, match="cosine"):
    optim.make_schedule(_cfg(schedule="linear"), 10, 100)
  with pytest.raises(ValueError, match="sgd or adam"):
    optim.make_optimizer(_cfg(name="lamb"), 10, 100)


# ----------------------------------------------------------------------------------------
# Updates.


def _problem(seed=0):
  rng = np.random.default_rng(seed)
  params = {"w": rng.normal(size=(3, 2)), "b": rng.normal(size=(2,))}
  grads = [{k: rng.normal(size=v.shape) for k, v in params.items()} for _ in range(4)]
  return params, grads


def _run_tx(tx, params, grads):
  """Applies `tx` to the gradient sequence (float32); returns the parameter history."""
  p = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)
  state = tx.init(p)
  out = []
  for g in grads:
    g = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), g)
    upd, state = tx.update(g, state, p)
    p = optax.apply_updates(p, upd)
    out.append(jax.tree.map(np.asarray, p))
  return out


def _sgd_numpy(params, grads, lrs, mu, wd, nesterov):
  """Coupled L2 with heavy-ball / Nesterov momentum (PyTorch convention, optax.trace):
  g' = g + wd·p; m = μ m + g'; p −= lr · (m, or g' + μ m for Nesterov)."""
  p = {k: v.copy() for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in params.items()}
  out = []
  for lr, g in zip(lrs, grads):
    for k in p:
      gk = g[k] + wd * p[k]
      m[k] = mu * m[k] + gk
      p[k] = p[k] - lr * (gk + mu * m[k] if nesterov else m[k])
    out.append({k: v.copy() for k, v in p.items()})
  return out


def _adamw_numpy(params, grads, lrs, wd, b1=0.9, b2=0.999, eps=1e-8):
  """AdamW: bias-corrected Adam direction plus the decoupled term wd·p, times lr."""
  p = {k: v.copy() for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in params.items()}
  v = {k: np.zeros_like(a) for k, a in params.items()}
  out = []
  for t, (lr, g) in enumerate(zip(lrs, grads), start=1):
    for k in p:
      m[k] = b1 * m[k] + (1 - b1) * g[k]
      v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
      mh, vh = m[k] / (1 - b1 ** t), v[k] / (1 - b2 ** t)
      p[k] = p[k] - lr * (mh / (np.sqrt(vh) + eps) + wd * p[k])
    out.append({k: a.copy() for k, a in p.items()})
  return out


def _assert_history(got, want, rtol=1e-5, atol=1e-6):
  for a, b in zip(got, want):
    for k in b:
      np.testing.assert_allclose(a[k], b[k], rtol=rtol, atol=atol)


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_couples_weight_decay_before_momentum(nesterov):
  """`sgd` adds wd·p to the gradient before momentum (L2), Nesterov or not: equal to the
  NumPy update and to optax.add_decayed_weights → optax.sgd; different from decoupled
  decay (the order is visible), and the schedule's lr of step t scales update t."""
  params, grads = _problem()
  spe, total, lr, mu, wd = 2, 4, 0.2, 0.9, 0.05
  cfg = _cfg(name="sgd", lr=lr, momentum=mu, nesterov=nesterov, weight_decay=wd,
             schedule="cosine", warmup_epochs=0.0)
  tx = optim.make_optimizer(cfg, spe, total)
  sched = optim.make_schedule(cfg, spe, total)
  got = _run_tx(tx, params, grads)
  lrs = [lr * 0.5 * (1 + math.cos(math.pi * t / total)) for t in range(4)]
  _assert_history(got, _sgd_numpy(params, grads, lrs, mu, wd, nesterov))
  theirs = optax.chain(optax.add_decayed_weights(wd),
                       optax.sgd(optax.cosine_decay_schedule(lr, total), momentum=mu,
                                 nesterov=nesterov))
  _assert_history(got, _run_tx(theirs, params, grads))
  decoupled = optax.chain(optax.sgd(optax.cosine_decay_schedule(lr, total), momentum=mu,
                                    nesterov=nesterov),
                          optax.add_decayed_weights(wd * lr))
  diff = np.abs(got[-1]["w"] - _run_tx(decoupled, params, grads)[-1]["w"]).max()
  assert diff > 1e-3
  assert np.allclose([float(sched(t)) for t in range(4)], lrs, rtol=1e-6)


def test_sgd_one_step_by_hand():
  """First step from zero momentum: p − lr (g + wd p) (Nesterov: p − lr (1 + μ)(g + wd p))."""
  params, grads = _problem(1)
  for nesterov in (False, True):
    tx = optim.make_optimizer(
        _cfg(name="sgd", lr=0.1, momentum=0.9, nesterov=nesterov, weight_decay=0.01,
             schedule="constant", warmup_epochs=0.0), 10, 100)
    got = _run_tx(tx, params, grads[:1])[0]
    scale = 1.9 if nesterov else 1.0
    for k in params:
      np.testing.assert_allclose(
          got[k], params[k] - 0.1 * scale * (grads[0][k] + 0.01 * params[k]), rtol=1e-5,
          atol=1e-7)


def test_sgd_without_momentum_or_decay_is_plain_gradient_descent():
  params, grads = _problem(2)
  tx = optim.make_optimizer(_cfg(name="sgd", lr=0.3, momentum=0.0, weight_decay=0.0,
                                    schedule="constant"), 10, 100)
  _assert_history(_run_tx(tx, params, grads),
                  _sgd_numpy(params, grads, [0.3] * 4, 0.0, 0.0, False))


def test_adam_is_adamw_with_decoupled_decay():
  """`adam` is AdamW: equal to a NumPy AdamW and to optax.adamw built here, with the
  piecewise schedule's lr at each step; and not Adam on the L2-coupled gradient."""
  params, grads = _problem(3)
  spe, total, lr, wd = 1, 4, 0.05, 0.1
  cfg = _cfg(name="adam", lr=lr, weight_decay=wd, schedule="piecewise", boundaries=(2,),
             decay_factor=0.5, warmup_epochs=0.0)
  tx = optim.make_optimizer(cfg, spe, total)
  got = _run_tx(tx, params, grads)
  lrs = [lr, lr, lr / 2, lr / 2]
  _assert_history(got, _adamw_numpy(params, grads, lrs, wd))
  theirs = optax.adamw(optax.piecewise_constant_schedule(lr, {2: 0.5}), b1=0.9, b2=0.999,
                       eps=1e-8, weight_decay=wd)
  _assert_history(got, _run_tx(theirs, params, grads))
  coupled = optax.chain(optax.add_decayed_weights(wd),
                        optax.adam(optax.piecewise_constant_schedule(lr, {2: 0.5})))
  assert np.abs(got[-1]["w"] - _run_tx(coupled, params, grads)[-1]["w"]).max() > 1e-4
  # One step by hand: Adam's first direction is g/(|g| + eps') = sign(g) (bias-corrected).
  first = got[0]
  for k in params:
    g = grads[0][k]
    step = g / (np.abs(g) + 1e-8) + wd * params[k]
    np.testing.assert_allclose(first[k], params[k] - lr * step, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_learning_rate_and_weight_decay_are_state_leaves(name):
  """The peak lr and the weight decay live in the optimizer state
  (`optax.inject_hyperparams`): replacing them in a state built with other values gives
  the updates of an optimizer built with them (NumPy references for SGD and AdamW), the
  state's structure does not change, and `learning_rate` reads the schedule at the
  state's peak rate."""
  params, grads = _problem(4)
  spe, total = 2, 4
  kw = dict(schedule="cosine", warmup_epochs=0.0)
  built = optim.make_optimizer(_cfg(name=name, lr=0.3, weight_decay=0.2, **kw), spe, total)
  state = built.init(params)
  moved = optim.with_hyperparams(state, lr=0.05, weight_decay=0.01)
  assert jax.tree.structure(moved) == jax.tree.structure(state)
  got, p, st = [], params, moved
  for g in grads:
    u, st = built.update(g, st, p)
    p = optax.apply_updates(p, u)
    got.append(p)
  lrs = [0.05 * 0.5 * (1 + math.cos(math.pi * t / total)) for t in range(4)]
  want = (_sgd_numpy(params, grads, lrs, 0.9, 0.01, False) if name == "sgd"
          else _adamw_numpy(params, grads, lrs, 0.01))
  _assert_history(got, want)
  for t in range(4):
    np.testing.assert_allclose(
        float(optim.learning_rate(moved, _cfg(name=name, **kw), spe, total, t)), lrs[t],
        rtol=1e-6)
