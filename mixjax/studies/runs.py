"""Studies on the one trainer: a base config, a list of points, and the rows they give.

A study setting is a base config (`study_config`: the trainer's `base_config()` with the
study's dataset, model, length and the training every study shares, `STUDY_TRAINING`)
and a list of points, each a dict of config overrides ({"sampler.name": ..., "seed":
...}, `points` of `laws.law`s × seeds), exactly what a config file's `get_sweep()`
returns. `python -m mixjax.main --config=<study file>:<setting> --sweep --workdir=W`
trains them (`mixjax.train.train_sweep`) in W/<point folder> (`named_points`):

  * points that differ only in the seed, the λ-law's parameters (one sampler structure)
    and the optimizer's lr / weight decay train as one vmapped program on dense models
    and convolutions over 1-D signals (one per sampler structure: ERM, Beta(α),
    W-shaped, RegMixup, two-atom and three-atom laws), and one after another, sharing
    one compiled step, for convolutions over images on CPU
    (`mixjax.train.groups.group_mode`); the groups are a
    function of the sweep file, so a rerun or a resumed sweep gives the same numbers;
  * the same seed gives the same initialization and data order under every law and
    method, so comparisons between laws are paired (common random numbers).

`rows` turns each point's summary.json (and metrics.jsonl) into one flat row: the law's
label and θ-moments, the seed, the optimizer values, and the metrics the analyses use
(`METRICS`): test accuracy, NLL, ECE and Brier, plain ("test_*"), test-time rescaled
("test_rs_*", docs/THEORY.md §5), after temperature scaling fit on the validation split
("test_ts_*", "test_rs_ts_*", "temperature"), validation accuracy, the mean training
objective over the last epoch ("train_objective"), and the code revision the run was
trained at ("code", "code_dirty": summary.json's `code` entry).
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Sequence

import ml_collections
import numpy as np

from mixjax import samplers
from mixjax.train import config as config_lib
from mixjax.train import sweeps
from mixjax.train import workdir as workdir_lib

# How every study trains (set explicitly; the trainer's defaults are the CIFAR recipe's):
# Adam with a cosine schedule and no weight decay, folded λ (λ ↦ max(λ, 1 − λ) before
# mixing), the exact estimator of the approximate risk, no TensorBoard files (hundreds of
# runs; metrics.jsonl has the same records).
STUDY_TRAINING = {
    "optimizer.name": "adam", "optimizer.weight_decay": 0.0, "optimizer.schedule": "cosine",
    "optimizer.warmup_epochs": 0.0, "mixing.fold": True, "method.estimator": "exact",
    "tensorboard": False,
}

# Row key -> (summary column, metric). ERM-trained runs have no rescaled column: their
# rescaled metrics are the plain ones (θ̄ = 1).
METRICS = {
    "test_accuracy": ("test", "accuracy"), "test_nll": ("test", "nll"),
    "test_ece": ("test", "ece"), "test_brier": ("test", "brier"),
    "test_rs_accuracy": ("test_rescaled", "accuracy"),
    "test_rs_nll": ("test_rescaled", "nll"), "test_rs_ece": ("test_rescaled", "ece"),
    "test_rs_brier": ("test_rescaled", "brier"),
    "test_ts_nll": ("test", "nll_temp_scaled"), "test_ts_ece": ("test", "ece_temp_scaled"),
    "test_rs_ts_nll": ("test_rescaled", "nll_temp_scaled"),
    "test_rs_ts_ece": ("test_rescaled", "ece_temp_scaled"),
    "temperature": ("val", "temperature"),
    "rs_temperature": ("val_rescaled", "temperature"),
    "val_accuracy": ("val", "accuracy"),
    "val_rs_accuracy": ("val_rescaled", "accuracy"),
}


def study_config(*, dataset: str, model: str, num_epochs: int, batch_size: int, lr: float,
                 model_kwargs: dict | None = None, input_shape: tuple | None = None,
                 dataset_kwargs: dict | None = None, val_fraction: float = 0.1,
                 method: str = "mixup", num_evals: int = 1, log_every_steps: int = 8,
                 **overrides: Any) -> ml_collections.ConfigDict:
  """The trainer's `base_config()` for a study setting, with `STUDY_TRAINING`.

  Args:
    dataset, dataset_kwargs, val_fraction: config.dataset (name, kwargs, val_fraction).
    model, model_kwargs, input_shape: config.model (a `mixjax.models.MODELS` name).
    num_epochs, batch_size, lr: the run's length, batch and Adam's peak learning rate.
    method: config.method.name (points may override it).
    num_evals: quick test evaluations during training (every num_epochs / num_evals
      epochs; 1: the final evaluation only).
    log_every_steps: steps between training-loss records (`rows` averages those of the
      last epoch).
    **overrides: more config overrides, {"a.b": value} as keyword arguments with "__"
      for "." (e.g. method__terms=("jacobian",)).
  """
  c = config_lib.base_config()
  c.dataset.name = dataset
  c.dataset.kwargs = ml_collections.ConfigDict(dict(dataset_kwargs or {}))
  c.dataset.val_fraction = val_fraction
  c.model.name = model
  c.model.kwargs = ml_collections.ConfigDict(dict(model_kwargs or {}))
  if input_shape is not None:
    c.model.input_shape = tuple(input_shape)
  c.num_epochs = num_epochs
  c.batch_size = batch_size
  c.optimizer.lr = lr
  c.method.name = method
  c.eval.every_epochs = num_epochs // num_evals if num_evals > 1 else 0
  c.log_every_steps = log_every_steps
  c.checkpoint_every_steps = 10_000
  c.max_to_keep = 1
  more = {k.replace("__", "."): v for k, v in overrides.items()}
  return sweeps.sweep_config(c, {**STUDY_TRAINING, **more})


def points(law_list: Sequence[dict], seeds: Sequence[int], **extra: Any) -> list[dict]:
  """Law-major points: every law (`laws.law`) with every seed, plus `extra` overrides
  ({"a.b": value} as keyword arguments with "__" for ".")."""
  more = {k.replace("__", "."): v for k, v in extra.items()}
  return [{**l, **more, "seed": int(s)} for l in law_list for s in seeds]


def named_points(config: ml_collections.ConfigDict, pts: Sequence[dict]
                 ) -> list[tuple[str, ml_collections.ConfigDict]]:
  """(folder, config) per point: the folder names of `python -m mixjax.main --sweep`."""
  return [(sweeps.point_name(i, p), sweeps.sweep_config(config, p))
          for i, p in enumerate(pts)]


def _last_epoch_loss(run_dir: str, spe_steps: float) -> float:
  """Mean of the logged training losses of the last epoch (NaN if none)."""
  from mixjax.train import writers  # pylint: disable=g-import-not-at-top
  recs = [r for r in writers.read_metrics(run_dir) if "train/loss" in r]
  if not recs:
    return float("nan")
  last = recs[-1]["step"]
  vals = [r["train/loss"] for r in recs if r["step"] > last - spe_steps]
  vals = [np.nan if v is None else v for v in vals]
  return float(np.mean(vals))


def row(name: str, config: ml_collections.ConfigDict, runs_dir: str,
        **tags: Any) -> dict[str, Any]:
  """One point's row (see the module docstring); `tags` are added as columns."""
  from mixjax.train import setup  # pylint: disable=g-import-not-at-top
  from mixjax.train import writers  # pylint: disable=g-import-not-at-top
  run_dir = os.path.join(runs_dir, name)
  path = os.path.join(run_dir, writers.SUMMARY_FILE)
  summary = {"status": "failed"}  # a single run stopped by a NaN loss writes none
  if os.path.exists(path):
    with open(path) as f:
      summary = json.load(f)
  out: dict[str, Any] = {"point": name, "seed": int(config.seed),
                         "method": config.method.name, "lr": float(config.optimizer.lr),
                         "weight_decay": float(config.optimizer.weight_decay)}
  sampler = setup.training_sampler(config)
  shape = (tuple(setup.load_data_once(config).input_shape)  # a mask law's moments depend
           if samplers.is_mask_law(sampler) else None)    # on the image size
  m = setup.training_moments(config, sampler, shape)  # the law trained on; None outside mixup
  if m is not None:
    law_ = setup.trained_law(config, sampler)  # RegMixup's: its equivalent law
    out.update(law=law_.label, theta_bar=m.mean, sigma2=m.var, gamma2=m.gamma2,
               strength=m.strength, global_strength=m.global_strength)
  else:
    out.update(law="ERM", theta_bar=1.0, sigma2=0.0, gamma2=0.0, strength=0.0,
               global_strength=0.0)
  out["status"] = summary.get("status", "ok")
  for key, (col, metric) in METRICS.items():
    plain = col.replace("_rescaled", "")  # ERM-trained: rescaled = plain (θ̄ = 1)
    src = summary.get(col) or summary.get(plain) or {}
    v = src.get(metric)
    out[key] = float("nan") if v is None else float(v)
  spe = summary["step"] / summary["epochs"] if summary.get("epochs") else math.inf
  out["train_objective"] = _last_epoch_loss(run_dir, spe)
  out["train_time_s"] = summary.get("train_time_s")
  code = summary.get("code") or {}  # the revision the run was trained at
  out["code"], out["code_dirty"] = code.get("git_revision"), code.get("git_dirty")
  return {**out, **tags}


def rows(named: Sequence[tuple[str, ml_collections.ConfigDict]], runs_dir: str,
         **tags: Any) -> list[dict[str, Any]]:
  """`row` of every point."""
  return [row(n, c, runs_dir, **tags) for n, c in named]


SWEPT = "per point (see arms, seeds)"  # a base config value the sweep's points replace


def config_record(config: ml_collections.ConfigDict, pts: Sequence[dict] = ()
                  ) -> dict[str, Any]:
  """The base config as JSON (what the study records as its training setup), each key
  that every point of the sweep `pts` sets shown as `SWEPT` instead of its base value
  (e.g. the recipe's default law, which no point trains: `arms` lists what they train);
  a key that only some points set keeps the base value the others train with."""
  record = json.loads(workdir_lib.config_to_json(config))
  for key in dict.fromkeys(k for p in pts for k in p if all(k in q for q in pts)):
    node, (*parents, leaf) = record, key.split(".")
    for q in parents:
      node = node[q]
    node[leaf] = SWEPT
  return record


def arms(pts: Sequence[dict]) -> list[dict[str, Any]]:
  """The distinct arms of a sweep: each point's overrides but its seed, in first-point
  order, with the law's label where the arm names a sampler (and its method where it
  names one: "Beta(1), method label_smoothing_matched"); JSON-able (tuples as lists)."""
  out = {}
  for p in pts:
    arm = json.loads(json.dumps({k: v for k, v in p.items() if k != "seed"}, default=list))
    key = json.dumps(arm, sort_keys=True)
    if key not in out:
      label = {}
      if "sampler.name" in p:
        label = {"label": samplers.make_sampler(
            p["sampler.name"], **dict(p.get("sampler.params", {}))).label
                 + (f", method {p['method.name']}" if "method.name" in p else "")}
      out[key] = {**label, "overrides": arm}
  return list(out.values())


def predictions(named: Sequence[tuple[str, ml_collections.ConfigDict]], runs_dir: str,
                key: str = "test_logits") -> np.ndarray:
  """Each point's `key` array of its predictions.npz (`writers.save_predictions`:
  test_logits, test_logits_rescaled, val_logits, …), stacked: (R, N, c) float32. A run
  without the rescaled logits (trained by ERM: θ̄ = 1) gives its plain ones."""
  from mixjax.train import writers  # pylint: disable=g-import-not-at-top
  out = []
  for name, _ in named:
    with np.load(os.path.join(runs_dir, name, writers.PREDICTIONS_FILE)) as z:
      out.append(np.asarray(z[key] if key in z else z[key.replace("_rescaled", "")],
                            np.float32))
  return np.stack(out)
