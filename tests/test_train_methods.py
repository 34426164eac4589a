"""The Theorem-1/3 training methods (`approx`, `perturbed_erm`, `erm_transformed`) run
through the trainer (mixjax/train: the sharded step and `train_and_evaluate`), and the
trainer's `data_stats.npz` cache.

References: the library objectives (`mixjax.approx_mixup_risk`,
`mixjax.perturbed_erm_loss`, cross-entropy on `mixjax.transform(...)`) evaluated on the
same batch, the same parameters and the same PRNG keys, which the tests replay from the
documented key derivations (step.py / state.py for the trainer: data key
fold_in(root, KEY_DATA), step key fold_in(fold_in(root, KEY_STEP), s), method key
fold_in(step key, 1), device d's key fold_in(method key, d));
`mixjax.data_stats` computed directly for the cache.
"""
from __future__ import annotations

import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import mixjax
from mixjax import errors
from mixjax import data as data_lib
from mixjax import losses
from mixjax import models
from mixjax import samplers
from mixjax.theory import stats as stats_lib
from mixjax.train import config as config_lib
from mixjax.train import sweeps
from mixjax.train import groups
from mixjax.train import setup
from mixjax.train import methods
from helpers import method_context, read_summary  # pylint: disable=g-bad-import-order
from mixjax.train import state as state_lib
from mixjax.train import step as step_lib
from mixjax.train import writers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ("approx", "perturbed_erm", "erm_transformed")


def _ce(y, u):
  """Mean soft-label cross-entropy −Σ_k y_k log softmax(u)_k (written out here)."""
  return jnp.mean(-jnp.sum(y * jax.nn.log_softmax(u), axis=-1))


def library_loss(name, f, x, y, key, sampler, stats, *, estimator="stochastic",
                 num_probes=1, terms=("jacobian", "cross", "label"), num_draws=1):
  """The library objective that method `name` must equal on one (local) batch."""
  moments = mixjax.theta_moments(sampler)
  if name == "erm":
    return _ce(y, f(x))
  if name == "mixup":
    return mixjax.mixup_loss(key, f, x, y, sampler)
  if name == "label_smoothing_matched":  # ERM on ȳ + θ̄ (y − ȳ), written out here
    return _ce(stats.y_mean + moments.mean * (y - stats.y_mean), f(x))
  if name == "approx":
    return mixjax.approx_mixup_risk(key, f, x, y, stats, sampler, loss="cross_entropy",
                                    estimator=estimator, num_probes=num_probes,
                                    terms=terms, moments=moments)
  if name == "perturbed_erm":
    return mixjax.perturbed_erm_loss(key, f, x, y, sampler, stats, loss="cross_entropy",
                                     num_draws=num_draws)
  if name == "erm_transformed":
    x_t, y_t = mixjax.transform(x, y, stats, moments.mean)
    return _ce(y_t, f(x_t))
  raise ValueError(name)


_JITTED = {}


def _jitted_device_losses(name, model, sampler, kw):
  """jit(vmap over devices) of the library objective at given parameters: fn(params,
  xs (D, b, ...), ys (D, b, c), keys (D,), stats) -> (D,) losses (compiled once per set-up)."""
  cache_key = (name, id(model), id(sampler), tuple(sorted(kw.items())))
  if cache_key not in _JITTED:
    def one(params, x, y, key, stats):
      f = lambda z: model.apply({"params": params}, z, train=True)
      return library_loss(name, f, x, y, key, sampler, stats, **kw)
    _JITTED[cache_key] = (jax.jit(jax.vmap(one, in_axes=(None, 0, 0, 0, None))), model,
                          sampler)
  return _JITTED[cache_key][0]


def replay_step_loss(name, model, params, rng, step, x_all, y_all, *, num_classes,
                     batch_size, ndev, sampler, stats, label_smoothing=0.0, **kw):
  """The trainer's step-`step` loss, recomputed on one device: the global batch of the
  data key, its labels smoothed towards uniform by ε = `label_smoothing`, device d's rows
  with the key fold_in(method key, d), averaged over d."""
  root = jax.random.wrap_key_data(jnp.asarray(rng))
  idx = np.asarray(data_lib.batch_indices(jax.random.fold_in(root, state_lib.KEY_DATA),
                                          step, num_examples=x_all.shape[0],
                                          batch_size=batch_size))
  step_key = jax.random.fold_in(jax.random.fold_in(root, state_lib.KEY_STEP), step)
  method_key = jax.random.fold_in(step_key, 1)
  b = batch_size // ndev
  rows = idx.reshape(ndev, b)  # device d: rows [d·b, (d+1)·b) of the global batch
  xs = jnp.asarray(x_all[rows], jnp.float32)
  ys = jax.nn.one_hot(jnp.asarray(y_all[rows]), num_classes, dtype=jnp.float32)
  ys = (1.0 - label_smoothing) * ys + label_smoothing / num_classes
  chex.assert_shape((xs, ys), [(ndev, b) + x_all.shape[1:], (ndev, b, num_classes)])
  keys = jnp.stack([jax.random.fold_in(method_key, d) for d in range(ndev)])
  fn = _jitted_device_losses(name, model, sampler, kw)
  return float(np.mean(np.asarray(fn(params, xs, ys, keys, stats))))


def _blobs(n, d=5, c=3, seed=0):
  rng = np.random.default_rng(seed)
  centers = 2.0 * rng.normal(size=(c, d))
  y = rng.integers(0, c, n).astype(np.int32)
  return (centers[y] + rng.normal(size=(n, d))).astype(np.float32), y


# ----------------------------------------------------------------------------------------
# The trainer's step.


@pytest.mark.parametrize("name,estimator,eps", [(m, "stochastic", 0.0) for m in METHODS]
                         + [("approx", "exact", 0.0), ("erm", "stochastic", 0.1),
                            ("mixup", "stochastic", 0.2),
                            ("label_smoothing_matched", "stochastic", 0.0)])
def test_step_loss_equals_library_objective_at_each_step(name, estimator, eps):
  """4 devices, per-device keys: for steps 0, 1, 2 (step 2 starts epoch 1) the step's
  reported loss is the mean over devices of the library objective on that device's rows
  with that device's key, at the parameters before the step, the labels smoothed by
  `config.method.label_smoothing` = ε first (then mixed). The exact estimator of the
  approximate risk (full input Jacobians and Hessians) runs under shard_map too."""
  assert jax.device_count() == 4
  x_all, y_all = _blobs(40)
  c, bsz = 3, 16
  model = models.get_model("mlp", c, hidden_sizes=(8,), activation="tanh")
  sampler = samplers.beta(0.7)
  stats = mixjax.data_stats(x_all, jax.nn.one_hot(y_all, c))
  ctx = method_context(sampler=sampler, moments=samplers.theta_moments(sampler),
                       method__estimator=estimator, method__num_probes=2,
                       method__num_draws=2, method__label_smoothing=eps)
  mesh = step_lib.make_mesh()
  tx = optax.adam(3e-2)
  rng = jax.random.key_data(jax.random.key(11))
  state = jax.jit(lambda k: state_lib.create_state(model, tx, k, jnp.zeros((1, 5))),
                  out_shardings=step_lib.replicated(mesh))(rng)
  fn = step_lib.make_train_step(model=model, tx=tx, method=methods.METHODS.get(name),
                                ctx=ctx, mesh=mesh, num_classes=c, batch_size=bsz,
                                num_train=40)
  xs, ys = step_lib.put_replicated(mesh, x_all), step_lib.put_replicated(mesh, y_all)
  stats_dev = jax.tree.map(lambda a: step_lib.put_replicated(mesh, np.asarray(a)), stats)
  seen = []
  for s in range(3):
    params = jax.tree.map(np.asarray, state.params)  # the state is donated
    state, m = fn(state, xs, ys, stats_dev)
    want = replay_step_loss(name, model, params, rng, s, x_all, y_all, num_classes=c,
                            batch_size=bsz, ndev=4, sampler=sampler, stats=stats,
                            num_probes=2, num_draws=2, estimator=estimator,
                            label_smoothing=eps)
    np.testing.assert_allclose(float(m["loss"]), want, rtol=2e-5, atol=1e-6)
    seen.append(want)
  assert int(state.step) == 3 and float(m["finite"]) == 1.0
  assert len(set(seen)) == 3  # parameters, batches and keys change between steps


# ----------------------------------------------------------------------------------------
# train_and_evaluate end to end.


def _two_moons_config(name, num_steps):
  module = sweeps.load_config_module(os.path.join(ROOT, "experiments", "two_moons.py"))
  return sweeps.sweep_config(module.get_config(), {
      "method.name": name, "num_steps": num_steps, "log_every_steps": 1,
      "checkpoint_every_steps": 1000, "eval.every_epochs": 0,
      "dataset.kwargs": {"num_features": 16, "feature_map": "relu", "noise": 0.01,
                         "n_samples": 300},
      "method.num_probes": 2, "optimizer.lr": 5e-2})


@pytest.mark.parametrize("name", METHODS)
def test_train_and_evaluate_trains_and_first_loss_is_the_library_objective(name, tmp_path):
  """Two moons on 16 random features, full batch on 4 devices, 25 Adam steps: the
  logged losses are finite and fall, test accuracy is well above chance (½), and the
  first logged loss equals the replayed library objective at the initial parameters."""
  config = _two_moons_config(name, 25)
  summary = groups.train_and_evaluate(config, str(tmp_path))
  records = [r for r in writers.read_metrics(str(tmp_path)) if "train/loss" in r]
  assert [r["step"] for r in records] == list(range(1, 26))
  lossv = np.asarray([r["train/loss"] for r in records])
  assert np.all(np.isfinite(lossv))
  assert lossv[-5:].mean() < 0.8 * lossv[0], lossv
  # 150 test points: chance is 0.5 ± 0.04 (one sd); 0.75 is > 6 sd above it.
  assert summary["test"]["accuracy"] >= 0.75, summary["test"]
  # Replay step 0: the same dataset, initialization (fold_in(root, KEY_INIT)) and keys.
  ds = data_lib.load_dataset("two_moons", val_fraction=config.dataset.val_fraction,
                             seed=config.seed, **dict(config.dataset.kwargs))
  model = setup.build_model(config, ds.num_classes, input_shape=ds.input_shape)
  rng = jax.random.key_data(jax.random.key(config.seed))
  init_key = jax.random.fold_in(jax.random.wrap_key_data(rng), state_lib.KEY_INIT)
  params = model.init(init_key, jnp.zeros((1,) + tuple(ds.input_shape)),
                      train=False)["params"]
  sampler = samplers.beta(1.0)
  stats = mixjax.data_stats(ds.train_x, jax.nn.one_hot(ds.train_y, ds.num_classes))
  want = replay_step_loss(name, model, params, rng, 0, ds.train_x, ds.train_y,
                          num_classes=ds.num_classes, batch_size=config.batch_size,
                          ndev=4, sampler=sampler, stats=stats, num_probes=2)
  np.testing.assert_allclose(lossv[0], want, rtol=2e-5)


# ----------------------------------------------------------------------------------------
# The data_stats.npz cache.


def _stats_config(**overrides):
  c = config_lib.base_config()
  c.method.name = "approx"  # needs the covariances: the full statistics are cached
  c.dataset.name = "two_moons"
  c.dataset.val_fraction = 0.2
  c.dataset.kwargs = {"num_features": 6, "n_samples": 200}
  c.batch_size = 16
  return sweeps.sweep_config(c, overrides)


def _load(config):
  """The training data as the trainer loads it (the split from dataset.split_seed)."""
  return setup.load_data(config)


def _assert_stats_equal_direct(stats, ds, rank):
  ref = mixjax.data_stats(ds.train_x, np.eye(ds.num_classes)[ds.train_y], rank=rank)
  assert stats.n == ref.n == ds.train_x.shape[0]
  assert tuple(stats.input_shape) == tuple(ds.input_shape)
  for f in ("x_mean", "y_mean", "sxx", "sxy", "syy", "eigvals"):
    a, b = getattr(stats, f), getattr(ref, f)
    assert (a is None) == (b is None), f
    if a is not None:
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7,
                                 err_msg=f)
  if rank:  # eigenvectors up to sign
    va, vb = np.asarray(stats.eigvecs), np.asarray(ref.eigvecs)
    np.testing.assert_allclose(np.abs(np.sum(va * vb, axis=0)), 1.0, atol=1e-4)


class _CountingAccumulator(mixjax.StatsAccumulator):
  finalized = 0

  def finalize(self, *a, **kw):
    type(self).finalized += 1
    return super().finalize(*a, **kw)


def test_stats_cache_reused_and_invalidated(tmp_path, monkeypatch):
  """Computed once (= `mixjax.data_stats`), loaded unchanged on a second call (no
  recomputation, file untouched), and recomputed when the dataset, its kwargs,
  val_fraction, the split seed (same n, different split), n or stats.rank change."""
  monkeypatch.setattr(_CountingAccumulator, "finalized", 0)
  wd = str(tmp_path)

  def load_or_compute(cfg, ds):  # counts the cache's computations only (not the references)
    with monkeypatch.context() as m:
      m.setattr(stats_lib, "StatsAccumulator", _CountingAccumulator)
      return setup.load_or_compute_stats(cfg, ds, wd)

  path = os.path.join(wd, setup.STATS_FILE)
  config = _stats_config()
  ds = _load(config)
  first = load_or_compute(config, ds)
  assert _CountingAccumulator.finalized == 1 and os.path.exists(path)
  _assert_stats_equal_direct(first, ds, None)
  mtime = os.stat(path).st_mtime_ns
  again = load_or_compute(config, ds)
  assert _CountingAccumulator.finalized == 1 and os.stat(path).st_mtime_ns == mtime
  for f in ("x_mean", "y_mean", "sxx", "sxy", "syy"):
    np.testing.assert_array_equal(np.asarray(getattr(again, f)), np.asarray(getattr(first, f)))
  assert again.eigvecs is None and (again.n, again.input_shape) == (first.n, first.input_shape)

  changes = [
      {"dataset.split_seed": 1},  # same n, another validation split
      {"dataset.val_fraction": 0.3},
      {"dataset.kwargs": {"num_features": 7, "n_samples": 200}},
      {"dataset.kwargs": {"num_features": 6, "n_samples": 240}},  # n changes
      {"stats.rank": 2},
      {"dataset.name": "digits", "dataset.kwargs": {}},
  ]
  for i, change in enumerate(changes, start=2):
    cfg = _stats_config(**change)
    ds_new = _load(cfg)
    stats = load_or_compute(cfg, ds_new)
    assert _CountingAccumulator.finalized == i, change
    _assert_stats_equal_direct(stats, ds_new, cfg.stats.rank)
    # ... and the new statistics are what the cache now holds.
    cached = load_or_compute(cfg, ds_new)
    assert _CountingAccumulator.finalized == i, change
    np.testing.assert_array_equal(np.asarray(cached.sxy), np.asarray(stats.sxy))
    if cfg.stats.rank:
      np.testing.assert_array_equal(np.asarray(cached.eigvecs), np.asarray(stats.eigvecs))
  # The split_seed change kept n but gave other statistics (the test above is not
  # vacuous); the run seed alone changes neither the split nor the statistics.
  assert _load(_stats_config(seed=1)).train_x.tobytes() == ds.train_x.tobytes()
  ds_seed1 = _load(_stats_config(**{"dataset.split_seed": 1}))
  assert ds_seed1.train_x.shape == ds.train_x.shape
  assert not np.allclose(ds_seed1.train_x.mean(0), ds.train_x.mean(0))


@pytest.mark.parametrize("method", ["mixup", "erm_transformed", "label_smoothing_matched"])
def test_methods_without_covariances_cache_the_means_alone(tmp_path, monkeypatch, method):
  """A method that does not need Σ (and the rescaled evaluation) gets x̄ and ȳ only: the
  same bits as the full statistics' means, equal to NumPy's means of the training split,
  Σ None, and a cache file that an `approx` run (which needs Σ) does not take for its own."""
  wd = str(tmp_path)
  path = os.path.join(wd, setup.STATS_FILE)
  config = _stats_config(**{"method.name": method})
  ds = _load(config)
  means = setup.load_or_compute_stats(config, ds, wd)
  assert means.sxx is None and means.sxy is None and means.syy is None
  assert means.eigvecs is None and means.n == ds.train_x.shape[0]
  with np.load(path) as z:
    assert "sxx" not in z.files and "x_mean" in z.files
  onehot = np.eye(ds.num_classes)[ds.train_y]
  np.testing.assert_allclose(np.asarray(means.x_mean), ds.train_x.astype(np.float64).mean(0),
                             rtol=1e-6, atol=1e-7)  # float32 (x64 off)
  np.testing.assert_allclose(np.asarray(means.y_mean), onehot.mean(0), rtol=1e-6)
  full = setup.load_or_compute_stats(_stats_config(), ds, wd)  # approx: recomputed in full
  assert full.sxx is not None and full.sxy is not None
  for f in ("x_mean", "y_mean"):
    np.testing.assert_array_equal(np.asarray(getattr(means, f)), np.asarray(getattr(full, f)))
  _assert_stats_equal_direct(full, ds, None)


def test_means_only_accumulator_matches_the_full_one_bit_for_bit():
  """Over uneven chunks the means-only accumulator does the full one's mean arithmetic:
  identical bits; it refuses eigenpairs (it has no Σ) and merging with a full one."""
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(1000, 5, 3)), np.eye(4)[rng.integers(0, 4, 1000)]
  full, means = stats_lib.StatsAccumulator(), stats_lib.StatsAccumulator(means_only=True)
  for lo, hi in ((0, 7), (7, 400), (400, 401), (401, 1000)):
    full.update(x[lo:hi], y[lo:hi])
    means.update(x[lo:hi], y[lo:hi])
  a, b = full.finalize(), means.finalize()
  chex.assert_shape((b.x_mean, b.y_mean), ((15,), (4,)))
  np.testing.assert_array_equal(np.asarray(a.x_mean), np.asarray(b.x_mean))
  np.testing.assert_array_equal(np.asarray(a.y_mean), np.asarray(b.y_mean))
  assert b.sxx is None and b.sxy is None and b.syy is None and b.n == 1000
  with pytest.raises(ValueError, match="means-only accumulator has no covariance"):
    means.finalize(rank=2)
  with pytest.raises(ValueError, match="means-only accumulator with a full one"):
    full.merge(means)


# ----------------------------------------------------------------------------------------
# Mask laws in the trainer.


def _digits_images(**overrides):
  c = config_lib.base_config()
  c.dataset.name = "digits"
  c.dataset.kwargs = {"as_image": True}
  c.model.name = "mlp"
  c.model.kwargs = {"hidden_sizes": (16,)}
  c.sampler.name, c.sampler.params = "cutmix", {"alpha": 1.0}
  c.optimizer.name, c.optimizer.lr, c.optimizer.schedule = "adam", 3e-3, "constant"
  c.num_steps, c.batch_size, c.log_every_steps = 6, 32, 3
  c.eval.every_epochs, c.tensorboard = 0, False
  return sweeps.sweep_config(c, overrides)


@pytest.mark.parametrize("method", ["mixup", "regmixup", "erm_transformed",
                                    "perturbed_erm", "approx"])
def test_mask_law_trains_with_every_method(method, tmp_path):
  """CutMix by name (`--config.sampler.name=cutmix`) with every method of the mixup
  family, on 8×8 digit images: the run finishes with finite losses; the summary records
  the law and its mask moments (θ̄, σ²/θ̄², γ²/θ̄² of `samplers.mask_moments`, RegMixup's
  equivalent law for regmixup), and the rescaled evaluation (N̄ on the inputs) differs
  from the plain one."""
  config = _digits_images(**{"method.name": method})
  summary = groups.train_and_evaluate(config, str(tmp_path))
  law = samplers.cutmix(1.0)
  if method == "regmixup":
    law = samplers.regmixup_equivalent(law, 1.0)
  m = samplers.mask_moments(law, (8, 8))
  assert summary["sampler"]["label"] == "CutMix(1)"
  for key, want in (("theta_bar", m.mean), ("strength", m.strength),
                    ("global_strength", m.global_strength)):
    assert summary[key] == pytest.approx(float(want), rel=1e-5 if m.stderr is None
                                         else 0.05), key
  losses = [r["train/loss"] for r in writers.read_metrics(str(tmp_path))
            if "train/loss" in r]
  assert len(losses) == 2 and np.all(np.isfinite(losses))
  assert summary["test_rescaled"]["nll"] != summary["test"]["nll"]


def test_mask_law_on_data_without_an_image_shape_is_refused(tmp_path):
  config = _digits_images(**{"dataset.kwargs": {}})
  with pytest.raises(errors.ConfigError, match="mask law, which needs image inputs"):
    groups.train_and_evaluate(config, str(tmp_path))


def test_mask_laws_of_one_structure_are_one_vmapped_program(tmp_path):
  """CutMix(α) for two α and label smoothing ε per point (a dense model): one vmapped
  program, each run equal to the same run trained alone."""
  points = [(f"p{i}", _digits_images(**{"sampler.params": {"alpha": a},
                                        "method.label_smoothing": e, "seed": i}))
            for i, (a, e) in enumerate(((0.5, 0.0), (2.0, 0.1)))]
  assert sweeps.law_groups(points) == [[0, 1]]
  sweeps.train_sweep(points, str(tmp_path / "sweep"))
  for name, c in points:
    got = writers.read_metrics(str(tmp_path / "sweep" / name))
    assert read_summary(tmp_path / "sweep" / name)["checkpoint"]["mode"] == "vmapped"
    alone = str(tmp_path / f"alone_{name}")
    groups.train_and_evaluate(c, alone)
    want = writers.read_metrics(alone)
    np.testing.assert_allclose([r["train/loss"] for r in got if "train/loss" in r],
                               [r["train/loss"] for r in want if "train/loss" in r],
                               rtol=2e-5)


# ----------------------------------------------------------------------------------------
# What each METHODS entry declares.


@pytest.mark.parametrize("name", methods.METHODS.names())
def test_method_entry_declares_what_its_loss_uses(name):
  """Each entry's declarations hold for its loss on one batch: a method that does not
  `need_stats` runs without statistics (one that does fails without them), and a
  method that does not `use_law` gives the same loss under two different laws (one
  that does gives different losses); `labels_only` is label_smoothing_matched alone,
  `allows_batchnorm` is False for approx alone (its JVPs, docs/THEORY.md §3)."""
  x, y_int = _blobs(16)
  y = jax.nn.one_hot(y_int, 3, dtype=jnp.float32)
  stats = stats_lib.data_stats(x, y)
  w = jax.random.normal(jax.random.key(1), (5, 3))
  f = lambda z: z.reshape(z.shape[0], -1) @ w
  key = jax.random.key(2)
  entry = methods.METHODS.get(name)
  config = sweeps.sweep_config(config_lib.base_config(), {"method.name": name})

  def loss(law, with_stats=True):
    ctx = methods.MethodContext.from_config(
        config, sampler=law, moments=mixjax.theta_moments(law),
        stats=stats if with_stats else None, axis_name=None)
    return float(entry(ctx, f, jnp.asarray(x), y, key))

  beta1, beta02 = samplers.beta(1.0), samplers.beta(0.2)
  assert (loss(beta1) != loss(beta02)) == entry.uses_law, name
  if entry.needs_stats:
    with pytest.raises(Exception):  # pylint: disable=broad-exception-caught
      loss(beta1, with_stats=False)
  else:
    assert loss(beta1, with_stats=False) == loss(beta1)
  assert entry.labels_only == (name == "label_smoothing_matched")
  assert entry.allows_batchnorm == (name != "approx")


# ----------------------------------------------------------------------------------------
# mixing.prob: the share of the batch that is mixed.


def _prob_context(prob, **overrides):
  config = sweeps.sweep_config(config_lib.base_config(),
                               {"mixing.prob": prob, "mixing.pairing": "reverse",
                                **overrides})
  return config, methods.MethodContext.from_config(config, sampler=samplers.constant(0.3),
                                                   axis_name=None)


@pytest.mark.parametrize("prob", [0.0, 0.4, 1.0])
def test_prob_mixes_the_examples_its_draw_names(prob):
  """mixing.prob = p: example i is mixed iff u_i < p, u = uniform(fold_in(key, 2), (B,))
  (the documented stream, apart from λ's and the partners'). Written out with λ = 0.3
  and reversed partners: mixed rows are 0.3 x_i + 0.7 x_{B−1−i} (labels likewise,
  λ_i = 0.3, partner B−1−i), kept rows x_i, y_i, λ_i = 1, partner i; the mixup loss is
  the cross-entropy on those rows. p = 1 is `mixing.mix` bit for bit, p = 0 the batch."""
  b = 12
  x = np.random.default_rng(0).normal(size=(b, 5)).astype(np.float32)
  y = np.eye(3, dtype=np.float32)[np.arange(b) % 3]
  key = jax.random.key(7)
  _, ctx = _prob_context(prob)
  got = methods.draw_mix(ctx, key, jnp.asarray(x), jnp.asarray(y))
  mixed = np.asarray(jax.random.uniform(jax.random.fold_in(key, 2), (b,))) < prob
  if prob == 0.4:
    assert 0 < mixed.sum() < b, mixed  # both kinds of rows are checked
  rev = np.arange(b)[::-1]
  want_x = np.where(mixed[:, None], 0.3 * x + 0.7 * x[rev], x)
  want_y = np.where(mixed[:, None], 0.3 * y + 0.7 * y[rev], y)
  chex.assert_shape([got.x, got.y, got.lam, got.partner], [(b, 5), (b, 3), (b,), (b,)])
  np.testing.assert_allclose(got.x, want_x, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(got.y, want_y, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(got.lam, np.where(mixed, 0.3, 1.0), rtol=1e-7)
  np.testing.assert_array_equal(got.partner, np.where(mixed, rev, np.arange(b)))
  w = np.random.default_rng(1).normal(size=(5, 3)).astype(np.float32)
  loss = methods.METHODS.get("mixup")(ctx, lambda z: z @ jnp.asarray(w), jnp.asarray(x),
                                      jnp.asarray(y), key)
  u = want_x @ w
  want_loss = np.mean(-np.sum(want_y * (u - np.log(np.sum(np.exp(u), 1, keepdims=True))), 1))
  assert float(loss) == pytest.approx(want_loss, rel=1e-5)
  plain = mixjax.mix(key, x, y, samplers.constant(0.3), pairing="reverse")
  if prob == 1.0:
    for a, c in zip(got, plain):
      np.testing.assert_array_equal(a, c)
  if prob == 0.0:
    np.testing.assert_array_equal(got.x, x)
    np.testing.assert_array_equal(got.y, y)


def test_prob_is_the_share_mixed():
  """Over 200 keys × 64 examples at p = 0.3, the share of mixed examples is within four
  binomial standard deviations of p (sd = √(p(1−p)/n), n = 12,800)."""
  p, b, n_keys = 0.3, 64, 200
  _, ctx = _prob_context(p)
  x, y = jnp.zeros((b, 2)), jnp.eye(2)[jnp.arange(b) % 2]
  lam = jax.vmap(lambda k: methods.draw_mix(ctx, k, x, y).lam)(
      jax.random.split(jax.random.key(3), n_keys))
  share = float(np.mean(np.asarray(lam) != 1.0))
  assert abs(share - p) <= 4 * np.sqrt(p * (1 - p) / (b * n_keys)), share


def test_prob_is_structure_and_one_leaves_the_program_as_it_was():
  """mixing.prob is static structure (runs that differ in it are separate programs:
  another sweep group key), and p = 1 traces exactly the program of `mixing.mix` alone
  (the same jaxpr), so every run trained before the knob existed trains bit for bit."""
  assert "mixing.prob" not in setup.per_run_keys()
  configs = [sweeps.sweep_config(config_lib.base_config(), {"mixing.prob": p})
             for p in (1.0, 0.5, 0.5)]
  keys = [setup.group_key(c) for c in configs]
  assert keys[0] != keys[1] == keys[2]
  b = 8
  x = jnp.asarray(np.random.default_rng(2).normal(size=(b, 4)), jnp.float32)
  y = jnp.eye(2)[jnp.arange(b) % 2]
  _, ctx = _prob_context(1.0)
  traced = lambda f: str(jax.make_jaxpr(f)(jax.random.key(5), x, y))
  assert traced(lambda k, x, y: methods.draw_mix(ctx, k, x, y)) == traced(
      lambda k, x, y: mixjax.mix(k, x, y, samplers.constant(0.3), pairing="reverse"))


@pytest.mark.parametrize("method", ["mixup", "regmixup"])
def test_prob_gives_the_law_trained_on(method):
  """With a share p mixed, the law trained on puts mass 1 − p at θ = 1: Beta(1, 1)
  (θ̄ = 3/4) gives θ̄ = 1 − p + 3p/4 for mixup and (1 + η θ̄)/(1 + η) for RegMixup
  (docs/THEORY.md §6); p = 1 is the law itself."""
  p, eta = 0.6, 0.5
  config = sweeps.sweep_config(config_lib.base_config(),
                               {"method.name": method, "method.eta": eta,
                                "mixing.prob": p})
  theta = 1 - p + 0.75 * p
  want = theta if method == "mixup" else (1 + eta * theta) / (1 + eta)
  assert float(setup.training_moments(config).mean) == pytest.approx(want, rel=1e-6)
  config.mixing.prob = 1.0
  assert setup.trained_law(config, samplers.beta(1.0)).label == (
      "Beta(1)" if method == "mixup"
      else samplers.regmixup_equivalent(samplers.beta(1.0), eta).label)
