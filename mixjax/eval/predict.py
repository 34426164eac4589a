"""Evaluation of a trained model over a dataset: its logits (`Predictor`), their metrics
(`metrics_of`), the test metrics with temperature scaling (`evaluate`), and the metrics on
shifted test sets (`evaluate_shift`).

`metrics_of` reports the summable metrics of `metric_sums` / `finalize_metrics` (accuracy,
NLL, ECE, Brier, class-wise ECE) and the pooled ones of `mixjax.eval.pooled` (adaptive
ECE, SmoothECE, AURC), all from the same logits. `evaluate` reports them for the test
split, and, when the dataset has a validation split, the temperature T fitted on it
(`fit_temperature`) with the test ECE, NLL and Brier of softmax(u / T). With
`rescale=True` the logits are those of the test-time rescaled model
(`mixjax.theory.rescaled`, docs/THEORY.md §5).
"""
from __future__ import annotations

import copy
import math
from typing import Any, Mapping

import jax
import numpy as np

from mixjax.eval import calibration
from mixjax.eval import metrics
from mixjax.eval import pooled as pooled_lib
from mixjax.theory import rescaling

P = jax.sharding.PartitionSpec


def _local(tree):
  """Replicated global arrays -> single-device copies on this process's first device."""
  return jax.tree.map(lambda a: a.addressable_data(0) if isinstance(a, jax.Array) else a,
                      tree)


class Predictor:
  """Logits of the model in eval mode over a dataset, on this process's local devices.

  Every process computes the full evaluation (redundantly) so that no host transfer of
  sharded global arrays is needed; the batch is sharded over the local devices.

  Args:
    model: a Flax module, `model.apply(variables, x, train=False) -> (B, c)` logits.
    batch_size: examples per call (rounded up to a multiple of the number of devices).
    mesh: a 1-D mesh over this process's devices (its axis shards the batch).
    stats: the `DataStats` of the training split (needed for `rescale=True`).
    theta_bar: θ̄ of the training law, or a mask law's `samplers.MaskMoments` (N̄ and
      θ̄; `theory.rescaled`), needed for `rescale=True`.
  """

  def __init__(self, model, batch_size: int, mesh: jax.sharding.Mesh, stats=None,
               theta_bar: float | None = None):
    self.local_mesh = mesh
    ndev = self.local_mesh.devices.size
    self.batch_size = int(math.ceil(batch_size / ndev) * ndev)
    self.stats = stats
    self.theta_bar = theta_bar
    (axis,) = mesh.axis_names
    self._batch = jax.sharding.NamedSharding(self.local_mesh, P(axis))
    self._rep = jax.sharding.NamedSharding(self.local_mesh, P())

    def logits(variables, x, stats, theta_bar, rescale: bool, decode=None, aux=None):
      if decode is not None:  # `batches`' decode: the model's inputs from x
        x = decode(x, aux)
      fn = lambda z: model.apply(variables, z, train=False)
      if rescale:
        fn = rescaling.rescaled(fn, stats, theta_bar)
      return fn(x)

    self._fn = jax.jit(logits, static_argnums=(4, 5), out_shardings=self._batch)

  def with_theta_bar(self, theta_bar) -> "Predictor":
    """The same predictor (same compiled program) for a law with another θ̄ (or mask
    moments of the same shapes)."""
    other = copy.copy(self)
    other.theta_bar = theta_bar
    return other

  def _rescaling(self):
    """θ̄ as float32, or the mask moments' leaves as float32 arrays."""
    if self.theta_bar is None:
      return None
    if isinstance(self.theta_bar, (int, float, np.floating)):
      return np.float32(self.theta_bar)
    return jax.device_put(jax.tree.map(lambda a: np.asarray(a, np.float32),
                                       self.theta_bar), self._rep)

  def __call__(self, variables, x: np.ndarray, *, rescale: bool = False) -> np.ndarray:
    n = x.shape[0]
    chunks = ((x[i:i + self.batch_size], None) for i in range(0, n, self.batch_size))
    return self.batches(variables, chunks, rescale=rescale)

  def batches(self, variables, batches, *, rescale: bool = False, decode=None
              ) -> np.ndarray:
    """Logits (n, c) of the kept rows of `batches`, an iterable of (x (b, ...), keep
    (b,) bool or None for all) with b ≤ batch_size: e.g. a split streamed in padded
    batches (`mixjax.data.streaming.EvalStream`'s (x, y, mask)). The same numbers as
    `__call__` on the kept rows stacked.

    `decode`: None (x are the model's float32 inputs), or (f, aux) with f(x, aux) the
    inputs, computed on the device in the same compiled program (`EvalStream.decode`:
    uint8 images normalized by a lookup, so 4× fewer bytes travel and the host does
    no arithmetic); f must be hashable (a module-level function)."""
    # Everything is put on this process's devices explicitly (multi-process jit refuses
    # host arrays with non-trivial shardings).
    variables = jax.device_put(_local(variables), self._rep)
    stats = None if self.stats is None else jax.device_put(self.stats, self._rep)
    theta_bar = self._rescaling() if rescale else None
    f, aux = decode if decode is not None else (None, None)
    if aux is not None:
      aux = jax.device_put(aux, self._rep)
    out = []
    for xb, keep in batches:
      xb = np.asarray(xb) if decode is not None else np.asarray(xb, np.float32)
      b = xb.shape[0]
      if b > self.batch_size:
        raise ValueError(f"A batch of {b} rows is larger than the predictor's batch size "
                         f"{self.batch_size}.")
      if b < self.batch_size:
        xb = np.concatenate([xb, np.zeros((self.batch_size - b,) + xb.shape[1:], xb.dtype)])
      logits = np.asarray(self._fn(variables, jax.device_put(xb, self._batch), stats,
                                   theta_bar, rescale, f, aux))[:b]
      out.append(logits if keep is None else logits[np.asarray(keep, bool)])
    return np.concatenate(out) if out else np.zeros((0,), np.float32)


_metric_sums = jax.jit(metrics.metric_sums, static_argnames=("num_bins",))


def metrics_of(logits: np.ndarray, labels: np.ndarray, num_bins: int, *,
               pooled: bool = True) -> dict[str, float]:
  """Every metric of logits (n, c) against integer labels (n,): `metrics.METRIC_NAMES`
  (accuracy, nll, ece, brier, classwise_ece; `num_bins` equal-width bins) and, if
  `pooled`, `pooled.POOLED_METRIC_NAMES` (adaptive_ece with `num_bins` equal-mass bins,
  smooth_ece, aurc). Non-finite logits give NaN pooled metrics (the summable ones
  propagate NaN)."""
  logits = np.asarray(logits, np.float32)
  labels = np.asarray(labels, np.int32)
  sums = _metric_sums(logits, labels, num_bins=num_bins)
  out = {k: float(v) for k, v in metrics.finalize_metrics(sums).items()}
  if not pooled:
    return out
  if np.all(np.isfinite(logits)):
    out.update(pooled_lib.pooled_metrics(logits, labels, num_bins=num_bins))
  else:
    out.update(dict.fromkeys(pooled_lib.POOLED_METRIC_NAMES, float("nan")))
  return out


def split_logits(predict: Predictor, variables, ds, split: str, *, rescale: bool
                 ) -> tuple[np.ndarray, np.ndarray]:
  """(logits (n, c), labels (n,)) of `ds`'s split "test" or "val": from host arrays
  (`<split>_x`, `<split>_y`), or streamed when `ds` has `eval_batches(split, batch_size)`
  (an iterable of (x, y, mask) batches, e.g. `mixjax.data.streaming.StreamedDataset`'s:
  the split is never held whole; `stream_logits`)."""
  if not hasattr(ds, "eval_batches"):
    return (predict(variables, getattr(ds, f"{split}_x"), rescale=rescale),
            getattr(ds, f"{split}_y"))
  return stream_logits(predict, variables, ds.eval_batches(split, predict.batch_size),
                       rescale=rescale)


def stream_logits(predict: Predictor, variables, stream, *, rescale: bool
                  ) -> tuple[np.ndarray, np.ndarray]:
  """(logits (n, c), labels (n,)) of the kept rows of `stream`, an iterable of
  (x, y, mask) batches (`mixjax.data.streaming.EvalStream`), with its `decode`, if any,
  applied on the device (`Predictor.batches`)."""
  labels = []

  def kept():
    for x, y, mask in stream:
      mask = np.asarray(mask, bool)
      labels.append(np.asarray(y, np.int32)[mask])
      yield x, mask

  out = predict.batches(variables, kept(), rescale=rescale,
                        decode=getattr(stream, "decode", None))
  return out, np.concatenate(labels) if labels else np.zeros((0,), np.int32)


def has_val(ds) -> bool:
  """Whether `ds` has a non-empty validation split."""
  return ds.has_val if hasattr(ds, "has_val") else ds.val_x.shape[0] > 0


def evaluate(predict: Predictor, variables, ds, *, num_bins: int, rescale: bool,
             calibrate: bool = True, pooled: bool = True,
             logits: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
  """Test metrics (the pooled ones if `pooled`, see `metrics_of`); + temperature-scaled
  metrics (T fitted on the validation split) if `calibrate`.

  `ds` has host arrays `test_x`, `test_y`, `val_x`, `val_y` (labels int), or streams its
  splits (`split_logits`). If `logits` is a dict, the test (and validation) logits are
  stored in it under "test" (and "val")."""
  test_logits, test_y = split_logits(predict, variables, ds, "test", rescale=rescale)
  if logits is not None:
    logits["test"] = test_logits
  out = metrics_of(test_logits, test_y, num_bins, pooled=pooled)
  if calibrate and has_val(ds):
    val_logits, val_y = split_logits(predict, variables, ds, "val", rescale=rescale)
    if logits is not None:
      logits["val"] = val_logits
    out["val_accuracy"] = metrics_of(val_logits, val_y, num_bins)["accuracy"]
    if np.all(np.isfinite(val_logits)) and np.all(np.isfinite(test_logits)):
      t = calibration.fit_temperature(val_logits, val_y)
      cal = metrics_of(test_logits / np.float32(t), test_y, num_bins)
      out.update(temperature=t, ece_temp_scaled=cal["ece"], nll_temp_scaled=cal["nll"],
                 brier_temp_scaled=cal["brier"])
  return out


def evaluate_shift(predict: Predictor, variables,
                   test_sets: Mapping[str, Any], *, num_bins: int,
                   rescale: bool, temperature: float | None = None,
                   logits: dict[str, np.ndarray] | None = None,
                   labels: dict[str, np.ndarray] | None = None
                   ) -> dict[str, dict[str, float]]:
  """The model's metrics on each shifted test set, and their mean over the sets.

  Args:
    predict: as for `evaluate`.
    variables: as for `evaluate`.
    test_sets: name -> (x, y), inputs preprocessed like the clean test split, or a set
      read by streaming (with `eval_batches(batch_size)`, `mixjax.data.streaming.EvalSet`:
      ImageNet-C, ImageNetV2); e.g. `mixjax.data.shift_test_sets`, one entry per
      corruption.
    num_bins: ECE bins (`config.eval.num_bins`).
    rescale: the test-time rescaled model's logits (as `evaluate`).
    temperature: if given (the T that `evaluate` fitted on the clean validation split),
      also ece/nll/brier of softmax(u / T) as `*_temp_scaled`: calibration fitted
      in-distribution, measured under shift.
    logits: if a dict, each set's logits (n, c) are stored in it under its name.
    labels: if a dict, each streamed set's labels (n,) are stored in it under its name
      (an in-memory set's are its y).

  Returns:
    {name: metrics_of(...) [+ temperature-scaled], ..., "mean": the mean over the sets
    of each metric}. Raises ValueError when `test_sets` is empty or a name is "mean".
  """
  if not test_sets:
    raise ValueError("evaluate_shift needs at least one shifted test set.")
  if "mean" in test_sets:
    raise ValueError('A shifted test set cannot be named "mean" (the key of the average).')
  out = {}
  for name, test_set in test_sets.items():
    if hasattr(test_set, "eval_batches"):  # streamed
      set_logits, y = stream_logits(predict, variables,
                                    test_set.eval_batches(predict.batch_size),
                                    rescale=rescale)
      if labels is not None:
        labels[name] = y
    else:
      x, y = test_set
      set_logits = predict(variables, x, rescale=rescale)
    if logits is not None:
      logits[name] = set_logits
    res = metrics_of(set_logits, y, num_bins)
    if temperature is not None:
      cal = metrics_of(set_logits / np.float32(temperature), y, num_bins)
      res.update(ece_temp_scaled=cal["ece"], nll_temp_scaled=cal["nll"],
                 brier_temp_scaled=cal["brier"])
    out[name] = res
  keys = list(next(iter(out.values())))
  out["mean"] = {k: float(np.mean([out[n][k] for n in test_sets])) for k in keys}
  return out
