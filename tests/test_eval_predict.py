"""mixjax.eval.predict: a model's metrics on shifted test sets (`evaluate_shift`).

The reference logits are the model applied directly (`model.apply`, one call, no
batching or sharding); the reference metrics are `metrics_of` of those logits (itself
checked against NumPy in test_eval_metrics.py and test_eval_pooled.py).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np
import pytest

from mixjax import eval as mj_eval


class Linear(nn.Module):

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    return nn.Dense(4)(x.reshape(x.shape[0], -1))


@pytest.fixture(scope="module")
def setup():
  model = Linear()
  variables = model.init(jax.random.key(0), np.zeros((1, 3, 3, 1), np.float32))
  mesh = jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  predict = mj_eval.Predictor(model, batch_size=16, mesh=mesh)
  rng = np.random.default_rng(0)
  sets = {name: (rng.normal(size=(n, 3, 3, 1)).astype(np.float32) * scale,
                 rng.integers(0, 4, n).astype(np.int32))
          for name, n, scale in (("noise", 50, 1.0), ("bright", 37, 3.0))}
  return model, variables, predict, sets


def test_evaluate_shift_reports_each_set_and_the_mean(setup):
  model, variables, predict, sets = setup
  logits = {}
  got = mj_eval.evaluate_shift(predict, variables, sets, num_bins=15, rescale=False,
                               temperature=2.0, logits=logits)
  assert list(got) == ["noise", "bright", "mean"]
  for name, (x, y) in sets.items():
    direct = np.asarray(model.apply(variables, x))
    np.testing.assert_allclose(logits[name], direct, rtol=1e-5, atol=1e-5)
    want = mj_eval.metrics_of(direct, y, 15)
    scaled = mj_eval.metrics_of(direct / 2.0, y, 15)
    want.update(ece_temp_scaled=scaled["ece"], nll_temp_scaled=scaled["nll"],
                brier_temp_scaled=scaled["brier"])
    assert set(got[name]) == set(want)
    for k, v in want.items():
      assert got[name][k] == pytest.approx(v, rel=1e-4, abs=1e-5), (name, k)
  for k in got["mean"]:
    assert got["mean"][k] == pytest.approx((got["noise"][k] + got["bright"][k]) / 2)
  assert {"smooth_ece", "adaptive_ece", "classwise_ece", "aurc"} <= set(got["mean"])


def test_evaluate_shift_without_temperature_and_bad_sets(setup):
  _, variables, predict, sets = setup
  got = mj_eval.evaluate_shift(predict, variables, sets, num_bins=10, rescale=False)
  assert "ece_temp_scaled" not in got["noise"]
  with pytest.raises(ValueError, match="at least one"):
    mj_eval.evaluate_shift(predict, variables, {}, num_bins=10, rescale=False)
  with pytest.raises(ValueError, match='"mean"'):
    mj_eval.evaluate_shift(predict, variables, {"mean": sets["noise"]}, num_bins=10,
                           rescale=False)


def test_streamed_batches_give_the_logits_of_the_kept_rows(setup):
  """`Predictor.batches` over padded batches with masks (a streamed split) against the
  model applied directly to the kept rows."""
  model, variables, predict, sets = setup
  x, _ = sets["bright"]  # 37 rows: batches of 16, 16, 5 padded to 16
  batches = []
  for i in range(0, 48, 16):
    xb = np.zeros((16, 3, 3, 1), np.float32)
    rows = x[i:i + 16]
    xb[:len(rows)] = rows
    batches.append((xb, np.arange(16) < len(rows)))
  got = predict.batches(variables, batches)
  ref = np.asarray(model.apply(variables, x))
  assert got.shape == (37, 4)
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(got, predict(variables, x))
  with pytest.raises(ValueError, match="larger than the predictor's batch size"):
    predict.batches(variables, [(np.zeros((17, 3, 3, 1), np.float32), None)])


def test_evaluate_without_pooled_metrics_keeps_the_summable_ones(setup):
  """`pooled=False` (the quick evaluations during training): the summable metrics, the
  same floats as with the pooled ones; no adaptive ECE, SmoothECE or AURC."""
  _, variables, predict, sets = setup
  (x, y), (vx, vy) = sets["noise"], sets["bright"]
  ds = type("DS", (), dict(test_x=x, test_y=y, val_x=vx, val_y=vy))
  full = mj_eval.evaluate(predict, variables, ds, num_bins=15, rescale=False)
  quick = mj_eval.evaluate(predict, variables, ds, num_bins=15, rescale=False,
                           calibrate=False, pooled=False)
  assert set(quick) == set(mj_eval.METRIC_NAMES)
  assert set(full) >= set(mj_eval.POOLED_METRIC_NAMES) | {"temperature", "val_accuracy"}
  for k in mj_eval.METRIC_NAMES:
    assert quick[k] == full[k], k
