"""mixjax.eval.metrics against plain-NumPy/SciPy reimplementations."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest
import scipy.special

from mixjax.eval import finalize_metrics
from mixjax.eval import metric_sums
from mixjax.eval import MetricSums
from mixjax.eval import reliability_curve

NUM_BINS = 15


def _classwise_reference(p, labels, num_bins):
  """Nixon et al.'s SCE from its definition: for every class k, the equal-width ECE of
  the forecasts p[:, k] of the events y = k, averaged over the classes."""
  n, c = p.shape
  edges = np.linspace(0.0, 1.0, num_bins + 1)
  total = 0.0
  for k in range(c):
    for b, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
      inside = (p[:, k] <= hi) & ((p[:, k] > lo) if b else True)
      if inside.any():
        hits = (labels[inside] == k).mean()
        total += inside.sum() / n * abs(hits - p[inside, k].mean())
  return total / c


def _reference(logits, labels, num_bins=NUM_BINS):
  """Independent NumPy metrics: accuracy, NLL, Brier, ECE and class-wise ECE by loops
  over bins."""
  logits = np.asarray(logits, np.float64)
  labels = np.asarray(labels)
  n, c = logits.shape
  log_p = scipy.special.log_softmax(logits, axis=-1)
  p = np.exp(log_p)
  onehot = np.eye(c)[labels]
  conf = p.max(-1)
  correct = (p.argmax(-1) == labels).astype(np.float64)
  edges = np.linspace(0.0, 1.0, num_bins + 1)
  ece = 0.0
  bin_conf, bin_acc, bin_count = [], [], []
  for lo, hi in zip(edges[:-1], edges[1:]):
    in_bin = (conf > lo) & (conf <= hi)
    bin_count.append(in_bin.sum())
    if in_bin.any():
      bin_conf.append(conf[in_bin].mean())
      bin_acc.append(correct[in_bin].mean())
      ece += in_bin.mean() * abs(bin_acc[-1] - bin_conf[-1])
    else:
      bin_conf.append(np.nan)
      bin_acc.append(np.nan)
  metrics = {
      "accuracy": correct.mean(),
      "nll": -log_p[np.arange(n), labels].mean(),
      "brier": ((p - onehot) ** 2).sum(-1).mean(),
      "ece": ece,
      "classwise_ece": _classwise_reference(p, labels, num_bins),
  }
  return metrics, (np.array(bin_conf), np.array(bin_acc), np.array(bin_count, float))


def _data(seed, n=300, c=7, scale=2.0):
  rng = np.random.default_rng(seed)
  logits = (scale * rng.normal(size=(n, c))).astype(np.float32)
  labels = rng.integers(0, c, size=n).astype(np.int32)
  # Give the logits some signal so that many confidence bins are populated.
  logits[np.arange(n), labels] += rng.uniform(0, 3, size=n).astype(np.float32)
  return logits, labels


def _assert_metrics_close(got, want, tol=2e-5):
  assert set(got) == {"accuracy", "nll", "ece", "brier", "classwise_ece"}
  for k in want:
    assert isinstance(got[k], float)
    np.testing.assert_allclose(got[k], want[k], rtol=tol, atol=tol, err_msg=k)


def test_matches_numpy_reference():
  logits, labels = _data(0)
  got = finalize_metrics(metric_sums(logits, labels))
  want, _ = _reference(logits, labels)
  _assert_metrics_close(got, want)
  assert 0.2 < want["accuracy"] < 0.9 and want["ece"] > 0  # a non-degenerate case
  assert want["classwise_ece"] > 0.01


def test_jit_and_reliability_curve():
  logits, labels = _data(1)
  sums = jax.jit(metric_sums)(logits, labels)
  assert sums.bin_count.shape == (NUM_BINS,)
  curve = reliability_curve(sums)
  _, (conf, acc, count) = _reference(logits, labels)
  np.testing.assert_array_equal(curve.count, count)
  np.testing.assert_allclose(curve.confidence, conf, rtol=1e-5, equal_nan=True)
  np.testing.assert_allclose(curve.accuracy, acc, rtol=1e-6, equal_nan=True)
  np.testing.assert_allclose(curve.bin_edges, np.linspace(0, 1, NUM_BINS + 1))


def test_other_num_bins():
  logits, labels = _data(2)
  got = finalize_metrics(metric_sums(logits, labels, num_bins=10))
  want, _ = _reference(logits, labels, num_bins=10)
  _assert_metrics_close(got, want)


def test_half_batches_add_to_whole():
  logits, labels = _data(3, n=301)
  whole = metric_sums(logits, labels)
  a = metric_sums(logits[:150], labels[:150])
  b = metric_sums(logits[150:], labels[150:])
  for total in (a + b, jax.tree.map(jnp.add, a, b), sum([a, b]),
                MetricSums.zeros(NUM_BINS, num_classes=7) + a + b):
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-4),
                 total, whole)
    _assert_metrics_close(finalize_metrics(total), finalize_metrics(whole), tol=1e-6)


def test_psum_over_devices_equals_single_device():
  assert jax.device_count() >= 4, "tests/conftest.py should force 4 CPU devices"
  mesh = jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  logits, labels = _data(4, n=4 * 64)

  def per_device(lg, lb):
    return jax.lax.psum(metric_sums(lg, lb), "data")

  fn = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P("data"), P("data")),
                             out_specs=P()))
  reduced = fn(logits, labels)
  single = metric_sums(logits, labels)
  jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-4),
               reduced, single)
  want, _ = _reference(logits, labels)
  _assert_metrics_close(finalize_metrics(reduced), want)


def test_mask_ignores_padding_even_nan():
  logits, labels = _data(5, n=200)
  keep = np.zeros(256, bool)
  keep[:200] = True
  padded_logits = np.full((256, logits.shape[1]), np.nan, np.float32)
  padded_logits[:200] = logits
  padded_labels = np.zeros(256, np.int32)
  padded_labels[:200] = labels
  sums = metric_sums(padded_logits, padded_labels, mask=keep)
  assert float(sums.count) == 200
  want, _ = _reference(logits, labels)
  _assert_metrics_close(finalize_metrics(sums), want)
  # A mask that drops real rows equals computing on the kept rows.
  rng = np.random.default_rng(0)
  sub = rng.random(200) < 0.5
  got = finalize_metrics(metric_sums(logits, labels, mask=sub))
  want_sub, _ = _reference(logits[sub], labels[sub])
  _assert_metrics_close(got, want_sub)


def _ece_tolerance(conf):
  """Mean + 5 SD bound on ECE for calibrated predictions with confidences `conf`.

  Given the predictions, S_b = Σ_{i∈b} (Z_i − c_i) with Z_i ~ Bernoulli(c_i) independent
  has mean 0 and variance v_b = Σ_{i∈b} c_i (1 − c_i). ECE = Σ_b |S_b| / N with
  E|S_b| ≤ √v_b and Var ECE ≤ Σ_b v_b / N².
  """
  edges = np.linspace(0, 1, NUM_BINS + 1)
  v = np.array([np.sum((c := conf[(conf > lo) & (conf <= hi)]) * (1 - c))
                for lo, hi in zip(edges[:-1], edges[1:])])
  return (np.sum(np.sqrt(v)) + 5 * np.sqrt(np.sum(v))) / len(conf)


def test_ece_of_calibrated_predictions_is_small():
  rng = np.random.default_rng(6)
  n, c = 20000, 5
  z = (1.5 * rng.normal(size=(n, c))).astype(np.float32)
  # Labels drawn from softmax(z) (Gumbel-max): the predictions are calibrated.
  labels = np.argmax(z + rng.gumbel(size=(n, c)), axis=-1).astype(np.int32)
  conf = scipy.special.softmax(z.astype(np.float64), axis=-1).max(-1)
  ece = finalize_metrics(metric_sums(z, labels))["ece"]
  assert ece < _ece_tolerance(conf)
  # The test has power: over-confident predictions (logits doubled) exceed their bound.
  conf2 = scipy.special.softmax(2.0 * z.astype(np.float64), axis=-1).max(-1)
  ece2 = finalize_metrics(metric_sums(2.0 * z, labels))["ece"]
  assert ece2 > _ece_tolerance(conf2)


def test_bad_inputs_raise():
  logits, labels = _data(7, n=10)
  with pytest.raises(ValueError, match="integer"):
    metric_sums(logits, labels.astype(np.float32))
  with pytest.raises(ValueError, match="argmax"):
    metric_sums(logits, np.eye(7, dtype=np.int32)[labels])
  with pytest.raises(ValueError, match="num_classes"):
    metric_sums(logits[None], labels)
  with pytest.raises(ValueError, match=r"\[0, 7\)"):
    metric_sums(logits, labels + 7)
  with pytest.raises(ValueError, match="mask"):
    metric_sums(logits, labels, mask=np.ones(11, bool))
  with pytest.raises(ValueError, match="num_bins"):
    metric_sums(logits, labels, num_bins=0)
  with pytest.raises(ValueError, match="no .*examples"):
    finalize_metrics(metric_sums(logits, labels, mask=np.zeros(10, bool)))
  stacked = jax.tree.map(lambda *a: jnp.stack(a), metric_sums(logits, labels),
                         metric_sums(logits, labels))
  with pytest.raises(ValueError, match="leading axis"):
    finalize_metrics(stacked)
  with pytest.raises(ValueError, match="bins"):
    _ = metric_sums(logits, labels) + metric_sums(logits, labels, num_bins=10)
  with pytest.raises(ValueError, match="classes"):
    _ = metric_sums(logits, labels) + metric_sums(logits[:, :6], labels % 6)


def test_classwise_ece_over_uneven_batches_and_four_devices_equals_one_batch():
  """Summability: uneven, masked batches added on the host, and 4 devices reduced with
  psum inside shard_map, give the one-batch class-wise tables and value."""
  assert jax.device_count() >= 4
  logits, labels = _data(9, n=4 * 50, c=5)
  whole = metric_sums(logits, labels)
  want = _classwise_reference(scipy.special.softmax(logits.astype(np.float64), -1),
                              labels, NUM_BINS)
  # Uneven batches (37, 100, 63), the last one padded to 100 rows with a mask.
  parts = []
  for lo, hi in ((0, 37), (37, 137), (137, 200)):
    lg, lb = logits[lo:hi], labels[lo:hi]
    pad = 100 - (hi - lo) if hi == 200 else 0
    mask = np.r_[np.ones(hi - lo, bool), np.zeros(pad, bool)]
    lg = np.concatenate([lg, np.full((pad, 5), np.nan, np.float32)])
    lb = np.concatenate([lb, np.zeros(pad, np.int32)])
    parts.append(metric_sums(lg, lb, mask=mask))
  total = sum(parts)
  mesh = jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  fn = jax.jit(jax.shard_map(lambda lg, lb: jax.lax.psum(metric_sums(lg, lb), "data"),
                             mesh=mesh, in_specs=(P("data"), P("data")), out_specs=P()))
  for got in (total, fn(logits, labels)):
    for field in ("class_bin_probability", "class_bin_hits"):
      np.testing.assert_allclose(getattr(got, field), getattr(whole, field), rtol=1e-5,
                                 atol=1e-5, err_msg=field)
    np.testing.assert_allclose(finalize_metrics(got)["classwise_ece"], want, rtol=1e-5)
  assert total.class_bin_hits.shape == (5, NUM_BINS)
  np.testing.assert_array_equal(np.asarray(total.class_bin_hits).sum(1),
                                np.bincount(labels, minlength=5))
