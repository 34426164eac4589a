"""mixjax.eval.pooled (adaptive ECE, SmoothECE, AURC) against independent references.

  * SmoothECE and the smooth reliability curve: `relplot` (Apple's reference
    implementation, a dev extra), on random predictions and on the predictions of a
    trained model (scikit-learn's logistic regression on the digits it ships);
  * adaptive ECE: a NumPy loop written here from the definition (equal-mass bins of the
    sorted confidences), and netcal's ECE with quantile bins where the conventions agree
    (N a multiple of the bins, distinct confidences; netcal imports torch, so that
    cross-check runs only where netcal is installed, not in CI);
  * AURC: brute force over coverages, exact enumeration of the tie orders, and the closed
    form of a perfect ranking.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import relplot
from relplot import estimators as relplot_estimators
from relplot import kernels as relplot_kernels
import scipy.special

from mixjax import eval as mj_eval
from mixjax.eval import pooled


def calibrated_logits(seed, n, c, scale, temperature):
  """Labels ~ softmax(z) (Gumbel-max); the logits are z / temperature."""
  rng = np.random.default_rng(seed)
  z = scale * rng.normal(size=(n, c))
  labels = np.argmax(z + rng.gumbel(size=(n, c)), axis=1).astype(np.int32)
  return (z / temperature).astype(np.float32), labels


@pytest.fixture(scope="module")
def trained():
  """Held-out logits (n, 10) and labels of a logistic regression trained on digits."""
  from sklearn import datasets, linear_model  # pylint: disable=g-import-not-at-top
  x, y = datasets.load_digits(return_X_y=True)
  perm = np.random.default_rng(0).permutation(len(y))
  train, test = perm[:1000], perm[1000:]
  model = linear_model.LogisticRegression(C=0.05, max_iter=2000).fit(x[train] / 16,
                                                                     y[train])
  logits = model.decision_function(x[test] / 16).astype(np.float32)
  return logits, y[test].astype(np.int32)


def relplot_smece(logits, labels):
  f, y = relplot.multiclass_logits_to_confidences(np.asarray(logits, np.float64), labels)
  return relplot.smECE(f, y, return_width=True)


# ------------------------------------------------------------------------- SmoothECE


@pytest.mark.parametrize("seed,n,c,scale,temperature", [
    (0, 2000, 10, 2.0, 1.0),    # calibrated
    (1, 5000, 10, 2.0, 0.4),    # over-confident
    (2, 3000, 5, 1.0, 3.0),     # under-confident
    (3, 257, 3, 4.0, 1.0),      # small N
])
def test_smooth_ece_matches_relplot_on_random_predictions(seed, n, c, scale, temperature):
  logits, labels = calibrated_logits(seed, n, c, scale, temperature)
  want, want_sigma = relplot_smece(logits, labels)
  got, sigma = pooled.smooth_ece_binary(*pooled.top_label(logits, labels))
  assert sigma == want_sigma
  assert abs(got - want) < 1e-6
  assert mj_eval.smooth_ece(logits, labels) == got


@pytest.mark.parametrize("scale", [1.0, 4.0])
def test_smooth_ece_matches_relplot_on_trained_model_predictions(trained, scale):
  logits, labels = trained
  logits = logits * np.float32(scale)  # ×4: the over-confident model
  conf, correct = pooled.top_label(logits, labels)
  assert 0.9 < correct.mean() < 1.0 and np.median(conf) > 0.5  # a real, good model
  want, want_sigma = relplot_smece(logits, labels)
  got, sigma = pooled.smooth_ece_binary(conf, correct)
  assert sigma == want_sigma and abs(got - want) < 1e-6
  assert want > 0.01


def test_smooth_ece_at_fixed_bandwidths_matches_relplot():
  logits, labels = calibrated_logits(4, 3000, 10, 2.0, 0.7)
  f, y = pooled.top_label(logits, labels)
  for sigma in (0.003, 0.02, 0.1, 0.5, 1.0):
    assert abs(pooled.smooth_ece_at(f, y, sigma) - relplot.smECE_sigma(f, y, sigma)) < 1e-9


def test_smooth_ece_is_small_for_calibrated_and_large_for_miscalibrated_forecasts():
  """Binary forecasts f ~ U(0, 1): y ~ Bernoulli(f) is calibrated; y ~ Bernoulli(f²) is
  off by E|f − f²| = 1/6 (smECE is within a constant factor of the distance to
  calibration, Błasiok & Nakkiran, and close to it for a smooth miscalibration)."""
  rng = np.random.default_rng(5)
  f = rng.uniform(size=20000)
  calibrated, _ = pooled.smooth_ece_binary(f, rng.uniform(size=f.size) < f)
  off, _ = pooled.smooth_ece_binary(f, rng.uniform(size=f.size) < f ** 2)
  assert calibrated < 0.02
  assert abs(off - 1 / 6) < 0.02


def test_smooth_reliability_matches_relplot_kernel_smoother(trained):
  logits, labels = trained
  conf, correct = pooled.top_label(logits, labels)
  curve = pooled.smooth_reliability(conf, correct)
  _, sigma = relplot_smece(logits, labels)
  kernel = relplot_kernels.ReflectedGaussianKernel(sigma)
  smoother = relplot_estimators.KernelSmoother(kernel).fit(conf[:, None], correct)
  t = np.linspace(0, 1, 200)
  np.testing.assert_allclose(curve.mesh, t)
  np.testing.assert_allclose(curve.accuracy, smoother.predict(t[:, None]), atol=1e-9)
  np.testing.assert_allclose(curve.density, kernel.kde(conf, t), rtol=1e-9, atol=1e-12)
  assert curve.sigma == sigma
  assert curve.smooth_ece == pytest.approx(relplot_smece(logits, labels)[0], abs=1e-6)


# ---------------------------------------------------------------------- adaptive ECE


def adaptive_reference(conf, correct, num_bins):
  """Equal-mass bins from the definition: the first N mod B bins of the ascending order
  hold ⌊N/B⌋ + 1 examples, the others ⌊N/B⌋; Σ_b (n_b/N)|acc_b − conf_b|."""
  n = len(conf)
  order = np.argsort(conf)
  total, start = 0.0, 0
  for b in range(num_bins):
    size = n // num_bins + (1 if b < n % num_bins else 0)
    idx = order[start:start + size]
    start += size
    if size:
      total += size / n * abs(correct[idx].mean() - conf[idx].mean())
  assert start == n
  return total


@pytest.mark.parametrize("n,num_bins", [(3000, 15), (1001, 15), (999, 10), (7, 15)])
def test_adaptive_ece_matches_the_definition(n, num_bins):
  rng = np.random.default_rng(n)
  logits = (rng.normal(size=(n, 6)) * rng.choice([0.5, 3.0], size=(n, 1))).astype(
      np.float32)
  labels = rng.integers(0, 6, n).astype(np.int32)
  p = scipy.special.softmax(logits.astype(np.float64), axis=1)
  conf, correct = p.max(1), (p.argmax(1) == labels).astype(float)
  want = adaptive_reference(conf, correct, num_bins)
  assert mj_eval.adaptive_ece(logits, labels, num_bins=num_bins) == pytest.approx(
      want, abs=1e-12)


def test_adaptive_ece_ties_use_the_tie_group_mean_and_ignore_input_order():
  """Confidences quantized to 5 values (big tie groups straddle the bin edges): the value
  is the definition applied to correctness replaced by its tie-group mean, whatever the
  order of the inputs."""
  rng = np.random.default_rng(11)
  n = 200
  conf = rng.choice([0.3, 0.5, 0.6, 0.8, 0.95], size=n)
  correct = (rng.uniform(size=n) < conf).astype(float)
  group_mean = {v: correct[conf == v].mean() for v in np.unique(conf)}
  smoothed = np.array([group_mean[v] for v in conf])
  want = adaptive_reference(conf, smoothed, 7)
  for seed in range(3):
    perm = np.random.default_rng(seed).permutation(n)
    got = pooled.adaptive_ece_binary(conf[perm], correct[perm], num_bins=7)
    assert got == pytest.approx(want, abs=1e-12)


def test_adaptive_and_classwise_ece_match_netcal_where_conventions_agree():
  """netcal's ECE with quantile bins (`equal_intervals=False`) cuts the sorted confidences
  at the same places as equal-mass bins when N is a multiple of the bins and the
  confidences are distinct; its binary (detection-mode) ECE per class, averaged over the
  classes, is Nixon et al.'s SCE."""
  netcal_metrics = pytest.importorskip("netcal.metrics",
                                       reason="netcal (imports torch) not installed")
  rng = np.random.default_rng(12)
  n, c = 3000, 10
  z = 2 * rng.normal(size=(n, c))
  labels = np.argmax(z + rng.gumbel(size=(n, c)), 1)
  logits = (z * rng.choice([0.5, 2.0], size=(n, 1))).astype(np.float32)
  p = scipy.special.softmax(logits.astype(np.float64), 1)
  want = netcal_metrics.ECE(bins=15, equal_intervals=False).measure(p, labels)
  assert mj_eval.adaptive_ece(logits, labels, num_bins=15) == pytest.approx(want, abs=1e-9)
  want = np.mean([netcal_metrics.ECE(bins=15, detection=True).measure(
      p[:, k], (labels == k).astype(int)) for k in range(c)])
  assert mj_eval.classwise_ece(logits, labels) == pytest.approx(want, abs=1e-6)


# ------------------------------------------------------------------------------ AURC


def aurc_brute_force(conf, correct):
  """(1/N) Σ_k risk of the k most confident, by an explicit loop (distinct confidences)."""
  order = sorted(range(len(conf)), key=lambda i: -conf[i])
  risks = [np.mean([1 - correct[i] for i in order[:k]]) for k in range(1, len(conf) + 1)]
  return float(np.mean(risks))


def test_aurc_matches_brute_force_without_ties():
  logits, labels = calibrated_logits(13, 500, 10, 2.0, 0.8)
  conf, correct = pooled.top_label(logits, labels)
  assert len(np.unique(conf)) == len(conf)
  assert mj_eval.aurc(logits, labels) == pytest.approx(aurc_brute_force(conf, correct),
                                                       abs=1e-12)


def test_aurc_with_ties_is_the_mean_over_all_tie_orders():
  """Exact enumeration: every order of the tied examples (3! · 3! · 2! = 72 orders)."""
  conf = np.array([0.9, 0.9, 0.9, 0.7, 0.5, 0.5, 0.5, 0.4, 0.4, 0.2])
  correct = np.array([1, 0, 1, 1, 0, 1, 0, 1, 0, 0], float)
  groups = [np.flatnonzero(conf == v) for v in sorted(set(conf), reverse=True)]
  values = []
  for orders in itertools.product(*[itertools.permutations(g) for g in groups]):
    seq = [i for o in orders for i in o]
    errors = 1 - correct[seq]
    values.append(np.mean(np.cumsum(errors) / np.arange(1, 11)))
  assert len(values) == 72
  got = pooled.risk_coverage(conf, correct)
  assert float(np.mean(got.risk)) == pytest.approx(np.mean(values), abs=1e-12)
  np.testing.assert_allclose(got.coverage, np.arange(1, 11) / 10)
  rng = np.random.default_rng(0)
  perm = rng.permutation(10)
  assert np.mean(pooled.risk_coverage(conf[perm], correct[perm]).risk) == pytest.approx(
      np.mean(values), abs=1e-12)


def test_aurc_of_a_perfect_ranking_has_the_closed_form():
  """All m correct examples ranked first: AURC = (1/N) Σ_{k>m} (k − m)/k
  = ((N − m) − m (H_N − H_m)) / N, H the harmonic numbers; ≈ ε + (1 − ε) ln(1 − ε)."""
  n, m = 1000, 870
  conf = np.r_[np.linspace(0.99, 0.6, m), np.linspace(0.59, 0.2, n - m)]
  correct = np.r_[np.ones(m), np.zeros(n - m)]
  h = lambda k: sum(1.0 / j for j in range(1, k + 1))
  want = ((n - m) - m * (h(n) - h(m))) / n
  got = float(np.mean(pooled.risk_coverage(conf, correct).risk))
  assert got == pytest.approx(want, abs=1e-12)
  eps = 1 - m / n
  assert got == pytest.approx(eps + (1 - eps) * math.log(1 - eps), abs=1e-3)
  # Reversed ranking (errors first) is the worst; random confidences give ≈ ε.
  worst = float(np.mean(pooled.risk_coverage(1 - conf, correct).risk))
  assert worst > eps > got


# --------------------------------------------------------------------------- plumbing


def test_metrics_of_reports_every_metric_and_nan_for_non_finite_logits():
  logits, labels = calibrated_logits(14, 800, 10, 2.0, 0.5)
  got = mj_eval.metrics_of(logits, labels, 15)
  assert set(got) == set(mj_eval.METRIC_NAMES) | set(mj_eval.POOLED_METRIC_NAMES)
  assert got["adaptive_ece"] == mj_eval.adaptive_ece(logits, labels, num_bins=15)
  assert got["smooth_ece"] == mj_eval.smooth_ece(logits, labels)
  assert got["aurc"] == mj_eval.aurc(logits, labels)
  assert got["classwise_ece"] == pytest.approx(mj_eval.classwise_ece(logits, labels),
                                               rel=1e-6)
  bad = logits.copy()
  bad[3, 2] = np.nan
  nan = mj_eval.metrics_of(bad, labels, 15)
  assert all(math.isnan(nan[k]) for k in mj_eval.POOLED_METRIC_NAMES)


def test_bad_inputs_are_refused_with_the_fix():
  logits, labels = calibrated_logits(15, 20, 4, 1.0, 1.0)
  with pytest.raises(ValueError, match="argmax"):
    mj_eval.aurc(logits, np.eye(4, dtype=np.int32)[labels])
  with pytest.raises(ValueError, match=r"\[0, 4\)"):
    mj_eval.smooth_ece(logits, labels + 4)
  with pytest.raises(ValueError, match="num_bins"):
    mj_eval.adaptive_ece(logits, labels, num_bins=0)
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    pooled.smooth_ece_binary(np.array([0.5, 1.5]), np.array([1, 0]))
