"""Classification metrics as sums that add across batches and devices.

`metric_sums(logits, labels)` returns a `MetricSums` pytree of plain sums over a batch:

  count           Σ_i w_i                                   (w_i = mask, 1 by default)
  correct         Σ_i w_i 1[argmax_k u_ik = y_i]
  nll             Σ_i w_i (−log softmax(u_i)_{y_i})        (stable log-softmax)
  brier           Σ_i w_i Σ_k (p_ik − 1[k = y_i])²          (multi-class Brier score)
  bin_count       Σ_i w_i 1[c_i ∈ B_b]                      (b = 1..num_bins)
  bin_confidence  Σ_i w_i c_i 1[c_i ∈ B_b]
  bin_correct     Σ_i w_i 1[argmax_k u_ik = y_i] 1[c_i ∈ B_b]
  class_bin_probability  [k, b]  Σ_i w_i p_ik 1[p_ik ∈ B_b]           (k = 1..c)
  class_bin_hits         [k, b]  Σ_i w_i 1[y_i = k] 1[p_ik ∈ B_b]

with p_i = softmax(u_i), top-label confidence c_i = max_k p_ik, and equal-width bins
B_b = ((b−1)/num_bins, b/num_bins] on [0, 1] (the convention of Guo et al. 2017 and of
the 15-bin ECE reported in uncertainty-baselines; c_i ≥ 1/c > 0 so bin 1 is closed in
practice; for the class-wise sums B_1 = [0, 1/num_bins], since p_ik can be 0).

Because every field is a sum, sums of disjoint batches add (`a + b`, or
`jax.tree.map(jnp.add, a, b)`) and per-device sums reduce with `lax.psum(sums, "data")`
inside `jax.shard_map`. `finalize_metrics` turns the totals into

  accuracy = correct / count,  nll = nll / count,  brier = brier / count,
  ece = Σ_b (n_b / N) |acc_b − conf_b| = Σ_b |bin_confidence_b − bin_correct_b| / N,
  classwise_ece = (1/c) Σ_k Σ_b (n_kb / N) |acc_kb − conf_kb|
                = (1/c) Σ_k Σ_b |class_bin_probability_kb − class_bin_hits_kb| / N.

classwise_ece is the static calibration error (SCE) of Nixon et al., "Measuring
Calibration in Deep Learning" (CVPRW 2019): for every class k, the equal-width reliability
of the one-vs-rest forecast p_ik of the event y_i = k (acc_kb = the frequency of class k
among the examples whose p_ik falls in bin b, conf_kb = their mean p_ik), averaged over
the c classes with equal weight. Every class's forecast counts, not only the top label.
The metrics that need every prediction at once (adaptive ECE, SmoothECE, AURC) are in
`mixjax.eval.pooled`.

Everything is exact given the logits; the fields are float32, so counts are exact up to
2^24 ≈ 1.7e7 examples per sum.
"""
from __future__ import annotations

from typing import NamedTuple

import chex
import flax
import jax
import jax.numpy as jnp
import numpy as np

METRIC_NAMES = ("accuracy", "nll", "ece", "brier", "classwise_ece")


@flax.struct.dataclass
class MetricSums:
  """Sums over examples (see the module docstring); all fields float32.

  Attributes:
    count: () Σ w_i.
    correct: () number of top-1 correct predictions.
    nll: () summed negative log-likelihood.
    brier: () summed multi-class Brier score.
    bin_count: (num_bins,) examples per confidence bin.
    bin_confidence: (num_bins,) summed top-label confidence per bin.
    bin_correct: (num_bins,) summed top-1 correctness per bin.
    class_bin_probability: (num_classes, num_bins) summed p_ik per class and bin.
    class_bin_hits: (num_classes, num_bins) examples of class k per class and bin.
  """
  count: jax.Array
  correct: jax.Array
  nll: jax.Array
  brier: jax.Array
  bin_count: jax.Array
  bin_confidence: jax.Array
  bin_correct: jax.Array
  class_bin_probability: jax.Array
  class_bin_hits: jax.Array

  @property
  def num_bins(self) -> int:
    return self.bin_count.shape[-1]

  @property
  def num_classes(self) -> int:
    return self.class_bin_hits.shape[-2]

  @classmethod
  def zeros(cls, num_bins: int = 15, *, num_classes: int) -> MetricSums:
    """The additive identity, to start an accumulation over batches."""
    _check_num_bins(num_bins)
    z = jnp.zeros((), jnp.float32)
    zb = jnp.zeros((num_bins,), jnp.float32)
    zc = jnp.zeros((num_classes, num_bins), jnp.float32)
    return cls(count=z, correct=z, nll=z, brier=z,
               bin_count=zb, bin_confidence=zb, bin_correct=zb,
               class_bin_probability=zc, class_bin_hits=zc)

  def __add__(self, other):
    if not isinstance(other, MetricSums):
      return NotImplemented
    if self.num_bins != other.num_bins:
      raise ValueError(
          f"Cannot add MetricSums with {self.num_bins} and {other.num_bins} ECE bins; "
          "compute both with the same num_bins.")
    if self.num_classes != other.num_classes:
      raise ValueError(
          f"Cannot add MetricSums of {self.num_classes} and {other.num_classes} classes.")
    return jax.tree.map(jnp.add, self, other)

  def __radd__(self, other):
    # Lets the builtin `sum(list_of_sums)` start from 0.
    if isinstance(other, (int, float)) and other == 0:
      return self
    return NotImplemented


class ReliabilityCurve(NamedTuple):
  """Per-bin statistics for a reliability diagram, each (num_bins,) float64.

  `confidence` and `accuracy` are bin means (NaN for empty bins); `count` is the
  (weighted) number of examples in the bin. Bin b covers ((b−1)/nb, b/nb].
  """
  confidence: np.ndarray
  accuracy: np.ndarray
  count: np.ndarray

  @property
  def bin_edges(self) -> np.ndarray:
    """(num_bins + 1,) equal-width edges on [0, 1]."""
    return np.linspace(0.0, 1.0, len(self.count) + 1)


def _check_num_bins(num_bins) -> None:
  if not isinstance(num_bins, (int, np.integer)) or num_bins < 1:
    raise ValueError(f"num_bins must be a positive int (e.g. 15), got {num_bins!r}.")


def _is_concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


def metric_sums(logits, labels, *, mask=None, num_bins: int = 15) -> MetricSums:
  """Summable classification metrics of one batch (see the module docstring).

  Args:
    logits: (B, c) unnormalized log-probabilities (any float dtype; computed in float32).
    labels: (B,) integer class indices in [0, c). For one-hot or soft labels pass
      `jnp.argmax(y, -1)`.
    mask: optional (B,) bool or 0/1 (or non-negative weights): 0 marks padding rows of a
      padded batch. Padded rows may hold any values, NaN included; they contribute 0.
    num_bins: number of equal-width confidence bins on [0, 1] for ECE (15 is standard).

  Returns:
    `MetricSums` of float32 scalars, (num_bins,) vectors and (c, num_bins) class-wise
    tables. jit/vmap-compatible; the
    label-range check runs only on concrete (non-traced) labels and mask; under jit an
    out-of-range label gets an all-zero one-hot (counted wrong, meaningless NLL).
  """
  _check_num_bins(num_bins)
  logits = jnp.asarray(logits)
  labels = jnp.asarray(labels)
  if logits.ndim != 2:
    raise ValueError(
        f"logits must be (B, num_classes), got shape {logits.shape}; flatten any extra "
        "axes first.")
  if labels.shape != logits.shape[:1]:
    raise ValueError(
        f"labels must be (B,) = {logits.shape[:1]} integer class indices, got shape "
        f"{labels.shape}; for one-hot labels pass jnp.argmax(y, -1).")
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(
        f"labels must be integer class indices, got dtype {labels.dtype}; for one-hot or "
        "soft labels pass jnp.argmax(y, -1).")
  if not jnp.issubdtype(logits.dtype, jnp.floating):
    raise ValueError(f"logits must be floating point, got dtype {logits.dtype}.")
  batch, num_classes = logits.shape
  if mask is None:
    weights = jnp.ones((batch,), jnp.float32)
  else:
    mask = jnp.asarray(mask)
    if mask.shape != (batch,):
      raise ValueError(f"mask must have shape ({batch},), got {mask.shape}.")
    weights = mask.astype(jnp.float32)
  valid = weights > 0
  if _is_concrete(labels) and _is_concrete(weights) and batch:
    lab = np.asarray(labels)[np.asarray(valid)]
    if lab.size and (lab.min() < 0 or lab.max() >= num_classes):
      raise ValueError(
          f"labels must lie in [0, {num_classes}), got range [{lab.min()}, {lab.max()}].")

  # Padded rows may hold garbage (NaN); replace them before any arithmetic.
  logits = jnp.where(valid[:, None], logits.astype(jnp.float32), 0.0)
  log_p = jax.nn.log_softmax(logits, axis=-1)
  p = jnp.exp(log_p)
  onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  nll = -jnp.sum(onehot * log_p, axis=-1)
  brier = jnp.sum(jnp.square(p - onehot), axis=-1)
  confidence = jnp.max(p, axis=-1)
  correct = (jnp.argmax(log_p, axis=-1) == labels).astype(jnp.float32)
  chex.assert_shape([nll, brier, confidence, correct], (batch,))

  # Bin b (0-based) holds confidences in (b/nb, (b+1)/nb] (bin 0 also holds 0).
  bin_index = _bin_index(confidence, num_bins)
  in_bin = jax.nn.one_hot(bin_index, num_bins, dtype=jnp.float32)
  in_bin = in_bin * weights[:, None]

  # Class-wise tables: entry (i, k) goes to segment k·nb + bin(p_ik), O(B·c) memory.
  segment = (jnp.arange(num_classes)[None, :] * num_bins
             + _bin_index(p, num_bins)).reshape(-1)
  num_segments = num_classes * num_bins

  def class_table(values):
    table = jax.ops.segment_sum((values * weights[:, None]).reshape(-1), segment,
                                num_segments=num_segments)
    return table.reshape(num_classes, num_bins)
  return MetricSums(
      count=jnp.sum(weights),
      correct=jnp.sum(weights * correct),
      nll=jnp.sum(weights * nll),
      brier=jnp.sum(weights * brier),
      bin_count=jnp.sum(in_bin, axis=0),
      bin_confidence=jnp.sum(in_bin * confidence[:, None], axis=0),
      bin_correct=jnp.sum(in_bin * correct[:, None], axis=0),
      class_bin_probability=class_table(p),
      class_bin_hits=class_table(onehot),
  )


def _bin_index(prob, num_bins: int):
  """0-based equal-width bin of probabilities in [0, 1]: b with prob ∈ (b/nb, (b+1)/nb]."""
  return jnp.clip(jnp.ceil(prob * num_bins) - 1, 0, num_bins - 1).astype(jnp.int32)


def _to_host(sums: MetricSums) -> MetricSums:
  if not isinstance(sums, MetricSums):
    raise ValueError(f"Expected MetricSums (from metric_sums), got {type(sums).__name__}.")
  sums = jax.tree.map(lambda a: np.asarray(jax.device_get(a), np.float64), sums)
  if sums.count.ndim:
    raise ValueError(
        f"MetricSums has a leading axis of shape {sums.count.shape} (per device or per "
        "step); reduce it first: lax.psum(sums, 'data') inside shard_map, or "
        "jax.tree.map(lambda a: a.sum(0), sums).")
  if not sums.count > 0:
    raise ValueError(
        f"MetricSums.count is {float(sums.count)}: no (unmasked) examples were summed.")
  return sums


def finalize_metrics(sums: MetricSums) -> dict[str, float]:
  """Turns summed metrics into {'accuracy', 'nll', 'ece', 'brier', 'classwise_ece'}
  Python floats.

  ECE is the top-label expected calibration error with the bins of `sums`:
  Σ_b (n_b/N) |acc_b − conf_b|. NLL is the mean negative log-likelihood in nats and
  brier the mean multi-class Brier score Σ_k (p_k − 1[k = y])² (in [0, 2]).
  classwise_ece is Nixon et al.'s SCE (module docstring), with the same bins.
  """
  s = _to_host(sums)
  n = s.count
  return {
      "accuracy": float(s.correct / n),
      "nll": float(s.nll / n),
      "ece": float(np.sum(np.abs(s.bin_confidence - s.bin_correct)) / n),
      "brier": float(s.brier / n),
      "classwise_ece": float(
          np.sum(np.abs(s.class_bin_probability - s.class_bin_hits)) / (n * s.num_classes)),
  }


def classwise_ece(logits, labels, *, num_bins: int = 15) -> float:
  """Nixon et al.'s static calibration error (SCE) of one set of predictions.

  (1/c) Σ_k Σ_b (n_kb/N) |acc_kb − conf_kb| with `num_bins` equal-width bins per class
  (module docstring). Summable: over batches or devices, add the `metric_sums` and read
  `finalize_metrics(total)["classwise_ece"]`; this is that for one batch.

  Args:
    logits: (N, c) logits; labels: (N,) integer labels.
  """
  return finalize_metrics(metric_sums(logits, labels, num_bins=num_bins))["classwise_ece"]


def reliability_curve(sums: MetricSums) -> ReliabilityCurve:
  """Per-bin mean confidence, accuracy and count (NaN means in empty bins)."""
  s = _to_host(sums)
  with np.errstate(invalid="ignore", divide="ignore"):
    nonempty = s.bin_count > 0
    denom = np.where(nonempty, s.bin_count, 1.0)
    confidence = np.where(nonempty, s.bin_confidence / denom, np.nan)
    accuracy = np.where(nonempty, s.bin_correct / denom, np.nan)
  return ReliabilityCurve(confidence=confidence, accuracy=accuracy, count=s.bin_count)
