"""The end of a program: each run's final evaluation and its `summary.json`.

For each run (`finish_runs`), the evaluations of `mixjax.eval.evaluate`, under one name
each in summary.json, metrics.jsonl (the final record, `"final": true`, at the last
step, keys `<column>/<metric>`) and the printed table:
  test           accuracy, NLL, ECE (15 bins), Brier, classwise / adaptive / smooth
                 ECE, AURC, and ece / nll / brier after temperature scaling
                 (`*_temp_scaled`, T fitted on the validation split);
  val            the validation split: its accuracy and the fitted temperature;
  test_rescaled, val_rescaled   the same with test-time rescaling, for the methods
                 whose entry is `rescalable` (the mixup family: mixup, regmixup,
                 erm_transformed, perturbed_erm, approx; docs/THEORY.md §5,
                 `theory.rescaled` with θ̄ of the law the run trained on,
                 `samplers.regmixup_equivalent` for RegMixup).
The summary also says what the run was (dataset, model, method, the sampler's name,
parameters and label, θ̄ and the strengths, θ̄'s Monte-Carlo standard error
`theta_bar_stderr` where θ̄ is estimated, the seed) and how it was trained
("checkpoint": alone, or vmapped in a group, and where its states are). The logits go to
`predictions.npz` (`writers.write_summary`). A run of a group whose loss turned
non-finite gets a summary marked failed, with the step.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections
import numpy as np

from mixjax import data as data_lib
from mixjax import eval as eval_lib
from mixjax import provenance
from mixjax.sharding import to_host
from mixjax.train import loop
from mixjax.train import methods as methods_lib
from mixjax.train import setup
from mixjax.train import validate
from mixjax.train import state as state_lib
from mixjax.train import writers


def run_summary(program, r: int, state, *, train_time: float,
                resumed_from_step: int | None) -> dict[str, Any]:
  """What run r of `program` was (summary.json without the evaluations); `state` is
  the run's own."""
  config, ds, ctx = program.configs[r], program.ds, program.contexts[r]
  moments, schedule = ctx.moments, program.schedule
  noise = None
  if "clean_train_y" in ds.extras:
    noise = {"rate": float(config.dataset.label_noise),
             "seed": int(config.dataset.split_seed),
             "flipped": int(np.sum(ds.train_y != ds.extras["clean_train_y"])),
             "num_train": int(ds.train_y.shape[0])}
  summary = {
      "dataset": config.dataset.name, "model": config.model.name,
      "method": config.method.name,
      "sampler": {"name": config.sampler.name, "params": dict(config.sampler.params),
                  "label": ctx.sampler.label},
      "seed": int(config.seed),
      "step": schedule.total_steps,
      "epochs": schedule.total_steps / schedule.steps_per_epoch,
      "num_devices": len(program.devices),
      "theta_bar": None if moments is None else float(moments.mean),
      "strength": None if moments is None else float(moments.strength),
      "global_strength": None if moments is None else float(moments.global_strength),
      "label_noise": noise,
      "train_time_s": train_time,
      "resumed_from_step": resumed_from_step,
      "process_index": jax.process_index(), "process_count": jax.process_count(),
      "code": provenance.code_revision(),
      # Σ |w| over all parameters: a cheap fingerprint to compare runs and processes.
      "param_l1": float(sum(np.abs(to_host(p)).astype(np.float64).sum()
                            for p in jax.tree.leaves(state.params))),
  }
  stderr = getattr(moments, "stderr", None)
  if stderr is not None:
    # θ̄ estimated by Monte Carlo (a `from_fn` law without given moments, a mask law
    # without closed forms): its standard error; absent where θ̄ is exact.
    summary["theta_bar_stderr"] = float(stderr.mean)
  return summary


COLUMNS = ("test", "val", "test_rescaled", "val_rescaled")
SHIFT_COLUMNS = ("shift", "shift_rescaled")
# `eval.evaluate`'s keys that describe the validation split, not the test split.
_VAL_KEYS = {"val_accuracy": "accuracy", "temperature": "temperature"}


def final_records(summary: dict[str, Any]) -> dict[str, Any]:
  """The final metrics.jsonl record: `<column>/<metric>` as in summary.json."""
  return ({"final": True}
          | {f"{col}/{k}": v for col in COLUMNS for k, v in (summary.get(col) or {}).items()}
          | {f"{col}_mean/{k}": v for col in SHIFT_COLUMNS
             for k, v in ((summary.get(col) or {}).get("mean") or {}).items()})


def _split(metrics: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
  """`eval.evaluate`'s output as (test metrics, validation entries)."""
  test = {k: v for k, v in metrics.items() if k not in _VAL_KEYS}
  val = {_VAL_KEYS[k]: v for k, v in metrics.items() if k in _VAL_KEYS}
  return test, val


# The shifted sets last loaded in this process: (key, ds, sets), see `load_shift_sets`.
_SHIFT_SETS: list = []


def load_shift_sets(config: ml_collections.ConfigDict, ds) -> dict[str, tuple]:
  """The shifted test sets of config.eval.shift ({set name: (x, y)}; a corruption of
  `fashion_mnist_corrupted` is named by its config, e.g. "stripe"), preprocessed like
  `ds`'s test split (`data.shift_test_sets`); {} when none is configured.

  The last sets loaded are kept for the next call with the same `ds` object and the
  same shift configuration (the runs of a sequential group and a sweep's groups share
  one dataset: `setup.load_data_once`), so they are read once."""
  key = repr((validate.shift_sets(config), config.dataset.data_dir,
              config.dataset.cache_dir))
  if _SHIFT_SETS and _SHIFT_SETS[0] == key and _SHIFT_SETS[1] is ds:
    return _SHIFT_SETS[2]
  sets = {}
  for name, configs in validate.shift_sets(config).items():
    sets.update(data_lib.shift_test_sets(
        name, data_dir=config.dataset.data_dir, ds=ds, configs=configs,
        cache_dir=os.path.expanduser(config.dataset.cache_dir) or None))
  _SHIFT_SETS[:] = [key, ds, sets]
  return sets


def final_evaluation(config: ml_collections.ConfigDict, predict, state, ds,
                     shift_sets=None):
  """{"test", "val"} and, where the method is rescalable (`Method.rescalable`, the mixup
  family) and config.eval.rescale, {"test_rescaled", "val_rescaled"} (module
  docstring); with `shift_sets` ({name: (x, y) or a streamed set}, `load_shift_sets`),
  "shift" (and "shift_rescaled"): {name: metrics, "mean": their mean over the sets}
  (`eval.evaluate_shift`, temperature-scaled with the T fitted on the clean validation
  split). Also the logits they were computed from (plain, rescaled; the shifted sets'
  as "shift_<name>") and the labels of the streamed shifted sets ("shift_<name>": their
  examples are not the clean test split's, ImageNetV2's not even in number)."""
  logits, logits_rescaled, labels = {}, {}, {}
  results = {}
  rescale = [False]
  if config.eval.rescale and methods_lib.get(config).rescalable:
    rescale.append(True)
  for r in rescale:
    suffix, out = ("_rescaled", logits_rescaled) if r else ("", logits)
    results["test" + suffix], results["val" + suffix] = _split(eval_lib.evaluate(
        predict, state.variables, ds, num_bins=config.eval.num_bins, rescale=r,
        logits=out))
    if shift_sets:
      shifted, shifted_labels = {}, {}
      results["shift" + suffix] = eval_lib.evaluate_shift(
          predict, state.variables, shift_sets, num_bins=config.eval.num_bins, rescale=r,
          temperature=results["val" + suffix].get("temperature"), logits=shifted,
          labels=shifted_labels)
      out.update({f"shift_{k}": v for k, v in shifted.items()})
      labels.update({f"shift_{k}": v for k, v in shifted_labels.items()})
  return results, logits, logits_rescaled, labels


def finish_runs(program, dirs, state, *, writer, train_time: float, resumed_from_step,
                training: list[dict[str, Any]], changes=None) -> dict[str, dict[str, Any]]:
  """Each run's summary.json after training (module docstring); {folder name: summary}.

  Args:
    program: the `program.Program` that trained the runs.
    dirs: the runs' folders.
    state: the program's final state (a leading run axis when it has several runs).
    writer: the runs' `writers.RunWriters`.
    train_time: the training time (seconds).
    resumed_from_step: the step training resumed from, or None.
    training: each run's "checkpoint" entry: how it trained ("mode": "alone" or
      "vmapped" with "group": the folders of the program's runs) and where its states
      are ("workdir", and its index "run" among "num_runs" stacked runs).
    changes: each run's config changes accepted on this rerun ({key: (old, new)},
      `workdir.check_workdir_config`), recorded as "config_changes".
  """
  ds, total = program.ds, program.schedule.total_steps
  shift_sets = load_shift_sets(program.config, ds)  # loaded once for all runs
  summaries = {}
  for r, (c, d) in enumerate(zip(program.configs, dirs)):
    moments = program.contexts[r].moments
    run_state = loop.run_slice(state, r) if program.num_runs else state
    summary = run_summary(program, r, run_state, train_time=train_time,
                          resumed_from_step=resumed_from_step)
    summary["checkpoint"] = training[r]
    if changes and changes[r]:
      summary["config_changes"] = {k: list(v) for k, v in changes[r].items()}
    bad = int(to_host(run_state.first_nonfinite))
    if bad != state_lib.NO_NONFINITE:
      summary.update(status="failed", failed_at_step=bad,
                     error=f"non-finite loss or gradient at step {bad}; the run stopped "
                           "updating there (the other runs of the group continued).")
      if jax.process_index() == 0:
        writers.write_json(os.path.join(d, writers.SUMMARY_FILE), summary)
    else:
      summary["status"] = "ok"
      run_predict = program.predict if moments is None else program.predict.with_theta_bar(
          setup.rescaling(moments))
      results, logits, logits_rescaled, labels = final_evaluation(
          c, run_predict, run_state, ds, shift_sets)
      summary.update(results)
      writer.write_run(r, total, final_records(summary))
      writers.write_summary(d, summary, ds, logits, logits_rescaled, labels)
    summaries[os.path.basename(d)] = summary
  return summaries
