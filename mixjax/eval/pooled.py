"""Metrics that need every prediction at once: adaptive ECE, SmoothECE and AURC.

None of them is a sum over examples, so none adds across batches or devices:

  * `adaptive_ece`: equal-mass bins are quantiles of the confidences of *all* examples;
  * `smooth_ece`: the kernel bandwidth is a fixed point that depends on all examples;
  * `aurc`: the risk–coverage curve orders all examples by confidence.

They take the gathered logits and labels of a whole split (the evaluation gathers them
anyway: `Predictor` returns host arrays, `predictions.npz` stores them) and compute on the
host in float64. Multi-class predictions are reduced to the top label:

  c_i = max_k softmax(u_i)_k   (confidence),    z_i = 1[argmax_k u_ik = y_i]   (correct).

Ties. Examples with equal confidence are exchangeable for a selective or binned
predictor, yet a sort puts them in some order. Where the order matters (adaptive ECE,
AURC), each z_i is replaced by the mean correctness z̄_i of the examples sharing c_i: the
result is then independent of the input order, and it equals the expectation over a
uniformly random order of the tied examples for AURC (linear in the z's) and the bins'
expected accuracies for adaptive ECE. With distinct confidences nothing changes.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

POOLED_METRIC_NAMES = ("adaptive_ece", "smooth_ece", "aurc")


# ------------------------------------------------------------------------ top label


def top_label(logits, labels) -> tuple[np.ndarray, np.ndarray]:
  """(confidence c (N,) float64, correct z (N,) float64) of logits (N, c), labels (N,).

  c_i = max_k softmax(u_i)_k computed in float64 (1 / Σ_k exp(u_ik − max_j u_ij));
  z_i = 1 if the first arg-max of u_i is y_i (NumPy's and JAX's arg-max convention).
  """
  logits = np.asarray(logits)
  labels = np.asarray(labels)
  if logits.ndim != 2 or logits.shape[0] < 1 or logits.shape[1] < 2:
    raise ValueError(f"logits must be (N, num_classes) with N >= 1 and num_classes >= 2, "
                     f"got shape {logits.shape}.")
  if labels.shape != logits.shape[:1] or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"labels must be (N,) = {logits.shape[:1]} integer class indices, got "
                     f"shape {labels.shape} and dtype {labels.dtype}; for one-hot labels "
                     "pass argmax(y, -1).")
  if labels.min() < 0 or labels.max() >= logits.shape[1]:
    raise ValueError(f"labels must lie in [0, {logits.shape[1]}), got range "
                     f"[{labels.min()}, {labels.max()}].")
  if not np.all(np.isfinite(logits)):
    raise ValueError("logits contain NaN or inf; the pooled metrics need finite logits.")
  u = logits.astype(np.float64)
  confidence = 1.0 / np.sum(np.exp(u - u.max(axis=1, keepdims=True)), axis=1)
  correct = (np.argmax(logits, axis=1) == labels).astype(np.float64)
  return confidence, correct


def _check_binary(confidence, outcome) -> tuple[np.ndarray, np.ndarray]:
  f = np.asarray(confidence, np.float64).reshape(-1)
  y = np.asarray(outcome, np.float64).reshape(-1)
  if f.shape != y.shape or f.size == 0:
    raise ValueError(f"confidence and outcome must be two non-empty (N,) arrays, got "
                     f"{np.shape(confidence)} and {np.shape(outcome)}.")
  if not (np.all(f >= 0) and np.all(f <= 1)):
    raise ValueError("confidences must lie in [0, 1].")
  return f, y


def _tie_mean(sorted_conf: np.ndarray, sorted_values: np.ndarray) -> np.ndarray:
  """Each value replaced by the mean over its run of equal (sorted) confidences."""
  starts = np.flatnonzero(np.r_[True, sorted_conf[1:] != sorted_conf[:-1]])
  sums = np.add.reduceat(sorted_values, starts)
  sizes = np.diff(np.r_[starts, sorted_conf.size])
  return np.repeat(sums / sizes, sizes)


# --------------------------------------------------------------------- adaptive ECE


def adaptive_ece_binary(confidence, correct, *, num_bins: int = 15) -> float:
  """Adaptive (equal-mass) top-label ECE of (confidence, correct) pairs; see `adaptive_ece`."""
  f, z = _check_binary(confidence, correct)
  if not isinstance(num_bins, (int, np.integer)) or num_bins < 1:
    raise ValueError(f"num_bins must be a positive int (e.g. 15), got {num_bins!r}.")
  order = np.argsort(f, kind="stable")
  f, z = f[order], _tie_mean(f[order], z[order])
  total = 0.0
  for conf_b, acc_b in zip(np.array_split(f, num_bins), np.array_split(z, num_bins)):
    if conf_b.size:  # fewer examples than bins: the empty bins weigh 0
      total += conf_b.size * abs(acc_b.mean() - conf_b.mean())
  return float(total / f.size)


def adaptive_ece(logits, labels, *, num_bins: int = 15) -> float:
  """Top-label ECE with equal-mass bins (torch-uncertainty's `AdaptiveCalibrationError`).

  Sort the N examples by top-label confidence c (ascending) and cut the sorted list into
  `num_bins` consecutive bins of ⌈N/B⌉ or ⌊N/B⌋ examples (the first N mod B bins get one
  more: `np.array_split`, like `torch.tensor_split`). Then

    adaptive_ece = Σ_b (n_b / N) |acc_b − conf_b|,

  acc_b and conf_b the mean correctness and confidence in bin b (empty bins, when
  N < B, weigh 0). Ties in c: the module docstring (z replaced by tie means).

  Where it differs from Nixon et al.'s ACE ("Measuring Calibration in Deep Learning",
  CVPRW 2019): their ACE is *class-wise*: for every class k, the forecasts p_ik of all N
  examples are sorted and cut into R equal-mass ranges, and ACE = 1/(K R) Σ_k Σ_r
  |acc(r, k) − conf(r, k)| averages over classes and ranges with equal weight. This metric
  uses one forecast per example (the top label's), weighs bins by their mass n_b / N (all
  ≈ 1/B), and does not average over classes: it is ECE with quantile bin edges.

  Not summable: the bin edges are quantiles of all confidences, so it is computed from
  all predictions at once (host, float64).

  Args:
    logits: (N, c) logits; labels: (N,) integer labels.
    num_bins: B (the trainer passes its ECE's `eval.num_bins`, 15).
  """
  return adaptive_ece_binary(*top_label(logits, labels), num_bins=num_bins)


# ------------------------------------------------------------------------- SmoothECE


def _smooth(f: np.ndarray, values: np.ndarray, sigma: float, t: np.ndarray) -> np.ndarray:
  """Σ_i values_i K_σ(t, f_i) at the points t, with relplot's discretization.

  K_σ is the Gaussian density of scale σ reflected at 0 and 1 (mass leaving [0, 1] is
  folded back). Discretized as relplot does: the point masses are split linearly between
  the two nearest of M = ⌊G/2⌋ + 1 equispaced grid points on [0, 1] (G = max(2000,
  round(20/σ))), the grid is extended by mirror images at both ends (`np.pad` 'reflect'),
  convolved with the Gaussian density sampled on the grid spacing (M samples centred at
  0.5), and read at t by linear interpolation.
  """
  m = max(2000, round(20 / sigma)) // 2 + 1
  grid_t = np.linspace(0.0, 1.0, m)
  pos = f * (m - 1)
  lo = np.clip(pos.astype(np.int64), 0, m - 2)
  frac = pos - lo
  grid = (np.bincount(lo, (1.0 - frac) * values, minlength=m)
          + np.bincount(lo + 1, frac * values, minlength=m))
  kernel = (np.exp(-np.square(grid_t - 0.5) / (2.0 * sigma * sigma))
            / (math.sqrt(2.0 * math.pi) * sigma))
  extended = np.pad(grid, m - 1, mode="reflect")
  # A direct convolution (not FFT): non-negative masses stay non-negative.
  smoothed = np.convolve(extended, kernel, mode="valid")[m // 2:m // 2 + m]
  return np.interp(t, grid_t, smoothed)


def _smooth_ratio(f, values, sigma, t, eps=1e-4) -> tuple[np.ndarray, np.ndarray]:
  """Nadaraya–Watson estimate E_σ[values | f = t] and the kernel density (+ eps) at t."""
  density = _smooth(f, np.ones_like(f), sigma, t) + eps
  return _smooth(f, values, sigma, t) / density, density


def smooth_ece_at(confidence, outcome, sigma: float) -> float:
  """SmoothECE at a fixed bandwidth σ (relplot's `smECE_sigma`).

  With residuals r_i = f_i − y_i, the kernel regression r̂(t) = Σ_i r_i K_σ(t, f_i) /
  (Σ_i K_σ(t, f_i) + 10⁻⁴) and density δ̂(t) = Σ_i K_σ(t, f_i) + 10⁻⁴ on the mesh
  t_j = j/(E − 1), E = max(round(10/σ), 200):

    smECE_σ = Σ_j |r̂(t_j)| δ̂(t_j) / Σ_j δ̂(t_j).
  """
  f, y = _check_binary(confidence, outcome)
  if not 0 < sigma <= 1:
    raise ValueError(f"sigma must be in (0, 1], got {sigma}.")
  t = np.linspace(0.0, 1.0, max(round(10 / sigma), 200))
  r, density = _smooth_ratio(f, f - y, sigma, t)
  return float(np.sum(np.abs(r) * density) / np.sum(density))


def smooth_ece_binary(confidence, outcome, *, eps: float = 0.001
                      ) -> tuple[float, float]:
  """(smECE, σ*) of forecasts f ∈ [0, 1] of binary outcomes y (relplot's `smECE`).

  σ* is the fixed point σ = smECE_σ (smECE_σ decreases in σ), found as relplot finds it:
  if σ = 1 already has σ < smECE_σ it is taken; otherwise 10 bisection steps on [0, 1]
  keep the upper end, where σ ≥ smECE_σ (σ < eps counts as below), so σ* is the smallest
  j/1024 found on the upper side. Returns (smECE_{σ*}, σ*).
  """
  f, y = _check_binary(confidence, outcome)

  def below(sigma):
    return sigma < eps or sigma < smooth_ece_at(f, y, sigma)

  if below(1.0):
    sigma = 1.0
  else:
    upper, lower = 1.0, 0.0
    for _ in range(10):
      mid = (upper + lower) / 2
      if below(mid):
        lower = mid
      else:
        upper = mid
    sigma = upper
  return smooth_ece_at(f, y, sigma), sigma


def smooth_ece(logits, labels) -> float:
  """SmoothECE of Błasiok & Nakkiran ("Smooth ECE: Principled Reliability Diagrams via
  Kernel Smoothing", ICLR 2024), top label, exactly as `relplot.smECE` computes it.

  The multi-class prediction is reduced to (confidence c_i, correct z_i) (relplot's
  `multiclass_logits_to_confidences`); the residuals c_i − z_i are smoothed with a Gaussian
  kernel reflected at 0 and 1 (`smooth_ece_at`), at the bandwidth σ* that solves
  σ = smECE_σ (`smooth_ece_binary`).

  Not summable: σ* (and the grid the masses are binned on) depend on all predictions, so
  it is computed from all of them at once (host, float64).
  """
  return smooth_ece_binary(*top_label(logits, labels))[0]


class SmoothReliability(NamedTuple):
  """A smooth reliability diagram (relplot's `prepare_rel_diagram` main line).

  Attributes:
    mesh: (M,) points t in [0, 1].
    accuracy: (M,) kernel-smoothed E[correct | confidence = t] (Σ_i z_i K_σ(t, c_i) /
      (Σ_i K_σ(t, c_i) + 10⁻⁴)).
    density: (M,) kernel density of the confidences at t, (1/N) Σ_i K_σ(t, c_i).
    sigma: the bandwidth σ* of `smooth_ece_binary`.
    smooth_ece: smECE_{σ*}.
  """
  mesh: np.ndarray
  accuracy: np.ndarray
  density: np.ndarray
  sigma: float
  smooth_ece: float


def smooth_reliability(confidence, correct, *, num_points: int = 200
                       ) -> SmoothReliability:
  """The smooth reliability curve of (confidence, correct) pairs at the SmoothECE
  bandwidth σ*, on `num_points` equispaced points (relplot plots 200)."""
  f, z = _check_binary(confidence, correct)
  value, sigma = smooth_ece_binary(f, z)
  t = np.linspace(0.0, 1.0, num_points)
  accuracy, _ = _smooth_ratio(f, z, sigma, t)
  density = _smooth(f, np.full_like(f, 1.0 / f.size), sigma, t)
  return SmoothReliability(mesh=t, accuracy=accuracy, density=density, sigma=sigma,
                           smooth_ece=value)


# ------------------------------------------------------------------------------ AURC


class RiskCoverage(NamedTuple):
  """The risk–coverage curve of selective prediction, (N,) float64 each.

  coverage[k−1] = k/N and risk[k−1] = the (tie-averaged) error rate of the k most
  confident predictions, k = 1..N.
  """
  coverage: np.ndarray
  risk: np.ndarray


def risk_coverage(confidence, correct) -> RiskCoverage:
  """The risk–coverage curve of (confidence, correct) pairs; see `aurc`."""
  f, z = _check_binary(confidence, correct)
  order = np.argsort(-f, kind="stable")
  errors = _tie_mean(f[order], 1.0 - z[order])
  k = np.arange(1, f.size + 1, dtype=np.float64)
  return RiskCoverage(coverage=k / f.size, risk=np.cumsum(errors) / k)


def aurc(logits, labels) -> float:
  """Area under the risk–coverage curve of selective prediction with max-softmax
  confidence (Geifman & El-Yaniv 2017; the AURC of Geifman et al. 2019).

  Rank the N examples by top-label confidence, most confident first. Accepting the k
  first (coverage k/N) incurs the selective risk R_k = (1/k) Σ_{j ≤ k} e_(j), with
  e = 1 − z the 0-1 error. The curve is the step function equal to R_k on
  ((k−1)/N, k/N], and

    aurc = ∫_0^1 R(κ) dκ = (1/N) Σ_{k=1}^N R_k       (right Riemann sum, no trapezoid).

  Ties in confidence: each e_(j) is replaced by the mean error of its tie group, which
  makes R_k the expected risk when tied examples are accepted in a uniformly random order
  (the value is independent of the input order). It lies in [0, 1]; a perfect ranking of
  a model with error rate ε gives ε + (1 − ε) ln(1 − ε) (the oracle AURC), random
  confidences give ε in expectation. Not summable (a global ranking); computed from all
  predictions at once (host, float64).
  """
  curve = risk_coverage(*top_label(logits, labels))
  return float(np.mean(curve.risk))


# ---------------------------------------------------------------------------- all three


def pooled_metrics(logits, labels, *, num_bins: int = 15) -> dict[str, float]:
  """{'adaptive_ece', 'smooth_ece', 'aurc'} of one split's logits (N, c) and labels (N,)."""
  confidence, correct = top_label(logits, labels)
  risk = risk_coverage(confidence, correct).risk
  return {
      "adaptive_ece": adaptive_ece_binary(confidence, correct, num_bins=num_bins),
      "smooth_ece": smooth_ece_binary(confidence, correct)[0],
      "aurc": float(np.mean(risk)),
  }


__all__ = [
    "POOLED_METRIC_NAMES", "RiskCoverage", "SmoothReliability", "adaptive_ece",
    "adaptive_ece_binary", "aurc", "pooled_metrics", "risk_coverage", "smooth_ece",
    "smooth_ece_at", "smooth_ece_binary", "smooth_reliability", "top_label",
]
