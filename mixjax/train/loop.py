"""`train_and_evaluate(config, workdir)`: the whole run, from data to `summary.json`.

  1. Validate the config (before anything is loaded or compiled), check it against the
     workdir's config.json (a changed config does not resume silently:
     `config.check_workdir_config`), load the dataset, build the sampler, the model
     (BatchNorm over the mesh axis "data") and the method.
  2. DataStats of the training split (x̄, ȳ, Σ; `mixjax.theory.data_stats`) when the
     method or the test-time rescaling needs them, cached in `WORKDIR/data_stats.npz`.
  3. Create the state replicated on the mesh, restore the latest checkpoint if any (same
     command = resume; an unreadable one falls back to the previous one, see
     `checkpoint`), record the step resumed from (`resumed_from_step` in metrics.jsonl
     and summary.json), put the training set on device (replicated) when it fits.
  4. Train: `step.make_train_step`; a log line with step rate and ETA every
     `log_every_steps`; checkpoints every `checkpoint_every_steps` (never of a
     non-finite state: a NaN/inf loss stops the run with the step named, and the last
     checkpoint is the last good state); a quick test evaluation every
     `eval.every_epochs`.
  5. Final evaluation: test accuracy, NLL, ECE (15 bins), Brier; the same after
     temperature scaling fitted on the validation split; for the mixup family
     (mixup, regmixup, erm_transformed, perturbed_erm, approx) the same again with
     test-time rescaling (THEORY.md §5, `theory.rescaled` with θ̄ of the training law),
     side by side. Printed and written to `WORKDIR/summary.json`; the logits and labels
     it was computed from go to `WORKDIR/predictions.npz` (`PREDICTIONS_FILE`).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mixjax import data as data_lib
from mixjax import eval as eval_lib
from mixjax import losses as losses_lib
from mixjax import models as models_lib
from mixjax import samplers as samplers_lib
from mixjax import theory
from mixjax.train import checkpoint as checkpoint_lib
from mixjax.train import config as config_lib
from mixjax.train import methods as methods_lib
from mixjax.train import optim
from mixjax.train import state as state_lib
from mixjax.train import step as step_lib
from mixjax.train import writers

SUMMARY_FILE = "summary.json"
PREDICTIONS_FILE = "predictions.npz"
STATS_FILE = "data_stats.npz"
# Hold the training set on device when it takes at most this many bytes per device.
MAX_ON_DEVICE_BYTES = 4 << 30


class NonFiniteLossError(FloatingPointError):
  """The loss or a gradient became NaN/inf; the message names the step."""


class _Interrupted(Exception):
  """Raised by `interrupt_at_step` (tests): an abrupt stop, nothing saved."""


# ----------------------------------------------------------------------------- pieces


class Reshaped(nn.Module):
  """Applies `module` to the batch reshaped to (B, *input_shape) (`config.model.input_shape`).

  The data, the DataStats, mixing and the theory all stay in the dataset's input shape;
  only the network sees the reshaped view (e.g. MNIST-1D's (40,) as (40, 1, 1) for LeNet).
  """
  module: nn.Module
  input_shape: tuple[int, ...]

  @nn.compact
  def __call__(self, x, train: bool = False):
    return self.module(x.reshape((x.shape[0],) + tuple(self.input_shape)), train=train)


def build_model(config: ml_collections.ConfigDict, num_classes: int, *,
                input_shape: tuple[int, ...] | None = None,
                bn_axis_name: str | None = step_lib.AXIS):
  """`get_model(config.model.name, num_classes, **kwargs)`, BatchNorm over `bn_axis_name`
  for the models that have BatchNorm, wrapped in `Reshaped` if config.model.input_shape."""
  kwargs = dict(config.model.kwargs)
  factory = models_lib.MODELS.get(config.model.name)
  cls = factory if isinstance(factory, type) else getattr(factory, "module_class", None)
  fields = {f.name for f in dataclasses.fields(cls)} if cls is not None else set()
  if "bn_axis_name" in fields:
    kwargs.setdefault("bn_axis_name", bn_axis_name)
  model = models_lib.get_model(config.model.name, num_classes, **kwargs)
  target = config.model.input_shape
  if target is None:
    return model
  target = tuple(int(s) for s in target)
  if input_shape is not None and math.prod(target) != math.prod(input_shape):
    raise ValueError(
        f"config.model.input_shape={target} has {math.prod(target)} entries but the "
        f"dataset's examples have shape {tuple(input_shape)} ({math.prod(input_shape)}).")
  return Reshaped(model, target)


def training_sampler(config: ml_collections.ConfigDict):
  """The λ-law of the mixup part (config.sampler)."""
  return samplers_lib.make_sampler(config.sampler.name, **dict(config.sampler.params))


def effective_sampler(config: ml_collections.ConfigDict, sampler):
  """The λ-law the trained model has effectively seen, for θ̄ (test-time rescaling).

  RegMixup is, in expectation, mixup whose θ-law puts mass 1/(1+η) at θ = 1
  (THEORY.md §6): a mixture of the constant λ = 1 and the configured law.
  """
  if config.method.name == "regmixup":
    eta = float(config.method.eta)
    return samplers_lib.mixture([samplers_lib.constant(1.0), sampler],
                                [1.0 / (1.0 + eta), eta / (1.0 + eta)])
  return sampler


def needs_stats(config: ml_collections.ConfigDict) -> bool:
  name = config.method.name
  return name in methods_lib.NEEDS_STATS or (
      name in methods_lib.MIXUP_FAMILY and config.eval.rescale)


def _stats_fingerprint(config, ds) -> dict[str, Any]:
  return {"dataset": config.dataset.name, "kwargs": json.dumps(dict(config.dataset.kwargs)),
          "val_fraction": float(config.dataset.val_fraction),
          "seed": int(config.seed), "n": int(ds.train_x.shape[0]),
          "rank": -1 if config.stats.rank is None else int(config.stats.rank)}


def load_or_compute_stats(config, ds, workdir: str) -> theory.DataStats:
  """DataStats of the training split (one-hot labels), cached in WORKDIR/data_stats.npz.

  The cache is used only when it was computed for the same dataset, split, seed and
  rank; it is written by process 0 (atomically) and the others compute their own.
  """
  path = os.path.join(workdir, STATS_FILE)
  fp = _stats_fingerprint(config, ds)
  if os.path.exists(path):
    with np.load(path, allow_pickle=False) as z:
      if json.loads(str(z["fingerprint"])) == fp:
        get = lambda k: jnp.asarray(z[k]) if k in z.files else None
        logging.info("Loaded data statistics from %s.", path)
        return theory.DataStats(
            x_mean=get("x_mean"), y_mean=get("y_mean"), sxx=get("sxx"), sxy=get("sxy"),
            syy=get("syy"), eigvecs=get("eigvecs"), eigvals=get("eigvals"), n=int(z["n"]),
            input_shape=tuple(int(s) for s in z["input_shape"]))
  t0 = time.time()
  acc = theory.StatsAccumulator()
  chunk = 4096
  for i in range(0, ds.train_x.shape[0], chunk):
    xb = ds.train_x[i:i + chunk]
    acc.update(xb, np.eye(ds.num_classes)[ds.train_y[i:i + chunk]])
  stats = acc.finalize(rank=config.stats.rank)
  logging.info("Computed data statistics in %.1fs.", time.time() - t0)
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    arrays = {k: np.asarray(getattr(stats, k)) for k in
              ("x_mean", "y_mean", "sxx", "sxy", "syy", "eigvecs", "eigvals")
              if getattr(stats, k) is not None}
    tmp = path + ".tmp.npz"
    np.savez(tmp, fingerprint=json.dumps(fp), n=stats.n,
             input_shape=np.asarray(stats.input_shape, np.int64), **arrays)
    os.replace(tmp, path)
  return stats


def _has_batch_stats(model, input_shape) -> bool:
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                             jnp.zeros((1,) + tuple(input_shape)),
                                             train=False))
  return bool(shapes.get("batch_stats"))


def _to_host(x) -> np.ndarray:
  """A replicated (possibly multi-process) array as a host NumPy array."""
  if getattr(x, "is_fully_addressable", True):
    return np.asarray(x)
  return np.asarray(x.addressable_data(0))


def _local(tree):
  """Replicated global arrays -> single-device copies on this process's first device."""
  return jax.tree.map(lambda a: a.addressable_data(0) if isinstance(a, jax.Array) else a,
                      tree)


class Predictor:
  """Logits of the model in eval mode over a dataset, on this process's local devices.

  Every process computes the full evaluation (redundantly) so that no host transfer of
  sharded global arrays is needed; the batch is sharded over the local devices.
  """

  def __init__(self, model, batch_size: int, stats=None, theta_bar: float | None = None):
    self.local_mesh = step_lib.make_mesh(jax.local_devices())
    ndev = self.local_mesh.devices.size
    self.batch_size = int(math.ceil(batch_size / ndev) * ndev)
    self.stats = stats
    self.theta_bar = theta_bar
    self._batch = jax.sharding.NamedSharding(self.local_mesh, step_lib.P(step_lib.AXIS))
    self._rep = step_lib.replicated(self.local_mesh)

    def logits(variables, x, stats, rescale: bool):
      fn = lambda z: model.apply(variables, z, train=False)
      if rescale:
        fn = theory.rescaled(fn, stats, theta_bar)
      return fn(x)

    self._fn = jax.jit(logits, static_argnums=(3,), out_shardings=self._batch)

  def __call__(self, variables, x: np.ndarray, *, rescale: bool = False) -> np.ndarray:
    # Everything is put on this process's devices explicitly (multi-process jit refuses
    # host arrays with non-trivial shardings).
    variables = jax.device_put(_local(variables), self._rep)
    stats = None if self.stats is None else jax.device_put(self.stats, self._rep)
    n = x.shape[0]
    out = []
    for i in range(0, n, self.batch_size):
      xb = np.asarray(x[i:i + self.batch_size], np.float32)
      pad = self.batch_size - xb.shape[0]
      if pad:
        xb = np.concatenate([xb, np.zeros((pad,) + xb.shape[1:], xb.dtype)])
      logits = self._fn(variables, jax.device_put(xb, self._batch), stats, rescale)
      out.append(np.asarray(logits)[:xb.shape[0] - pad])
    return np.concatenate(out) if out else np.zeros((0,), np.float32)


_metric_sums = jax.jit(eval_lib.metric_sums, static_argnames=("num_bins",))


def metrics_of(logits: np.ndarray, labels: np.ndarray, num_bins: int) -> dict[str, float]:
  """accuracy / nll / ece / brier (`mixjax.eval`)."""
  sums = _metric_sums(np.asarray(logits, np.float32), np.asarray(labels, np.int32),
                      num_bins=num_bins)
  return {k: float(v) for k, v in eval_lib.finalize_metrics(sums).items()}


def evaluate(predict: Predictor, variables, ds, *, num_bins: int, rescale: bool,
             calibrate: bool = True, logits: dict[str, np.ndarray] | None = None
             ) -> dict[str, Any]:
  """Test metrics; + temperature-scaled metrics (T fitted on the validation split).

  If `logits` is a dict, the test (and validation) logits are stored in it under
  "test" (and "val")."""
  test_logits = predict(variables, ds.test_x, rescale=rescale)
  if logits is not None:
    logits["test"] = test_logits
  out = metrics_of(test_logits, ds.test_y, num_bins)
  if calibrate and ds.val_x.shape[0] > 0:
    val_logits = predict(variables, ds.val_x, rescale=rescale)
    if logits is not None:
      logits["val"] = val_logits
    out["val_accuracy"] = metrics_of(val_logits, ds.val_y, num_bins)["accuracy"]
    if np.all(np.isfinite(val_logits)) and np.all(np.isfinite(test_logits)):
      t = eval_lib.fit_temperature(val_logits, ds.val_y)
      cal = metrics_of(test_logits / np.float32(t), ds.test_y, num_bins)
      out.update(temperature=t, ece_temp_scaled=cal["ece"], nll_temp_scaled=cal["nll"],
                 brier_temp_scaled=cal["brier"])
  return out


def save_predictions(path: str, ds, logits: dict[str, np.ndarray],
                     logits_rescaled: dict[str, np.ndarray]) -> None:
  """Writes the final evaluation's inputs to `path` (.npz, atomically).

  Arrays: `test_logits` (n_test, c) float32, `test_labels` (n_test,) int32, and when
  computed `val_logits` / `val_labels` (the split temperature scaling is fitted on),
  `test_logits_rescaled` / `val_logits_rescaled` (test-time rescaling). Every number of
  summary.json's "test" and "test_rescaled" columns can be recomputed from them.
  """
  arrays = {"test_logits": logits["test"], "test_labels": ds.test_y}
  if "val" in logits:
    arrays.update(val_logits=logits["val"], val_labels=ds.val_y)
  for split, a in logits_rescaled.items():
    arrays[f"{split}_logits_rescaled"] = a
  tmp = path + ".tmp.npz"
  np.savez(tmp, **{k: np.asarray(v) for k, v in arrays.items()})
  os.replace(tmp, path)


def _fmt_time(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def format_summary(summary: dict[str, Any]) -> str:
  """The final table: one column per evaluation (plain, and rescaled when present)."""
  cols = [("test", summary["test"])]
  if summary.get("test_rescaled"):
    cols.append((f"rescaled (θ̄={summary['theta_bar']:.4f})", summary["test_rescaled"]))
  rows = ["accuracy", "nll", "ece", "brier", "temperature", "ece_temp_scaled",
          "nll_temp_scaled"]
  lines = [f"Final evaluation after {summary['step']} steps ({summary['epochs']:.1f} "
           f"epochs, {summary['method']}, {summary['dataset']}, {summary['model']}):",
           f"  {'metric':<18}" + "".join(f"{name:>26}" for name, _ in cols)]
  for r in rows:
    if any(r in c for _, c in cols):
      lines.append(f"  {r:<18}" + "".join(
          f"{c[r]:>26.4f}" if r in c else f"{'-':>26}" for _, c in cols))
  return "\n".join(lines)


# ----------------------------------------------------------------------------- the run


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       devices=None, interrupt_at_step: int | None = None
                       ) -> dict[str, Any]:
  """Trains and evaluates as configured; resumes from WORKDIR's latest checkpoint.

  Args:
    config: a config of `experiments/*.py` (see `mixjax.train.config`).
    workdir: output directory (checkpoints/, metrics.jsonl, tb/, data_stats.npz,
      summary.json).
    devices: the devices of the mesh (default: all devices of all processes).
    interrupt_at_step: tests only: stop abruptly (nothing saved, `_Interrupted` raised)
      after this many steps, as a killed process would.

  Returns:
    The summary dict (also written to WORKDIR/summary.json by process 0).

  Raises:
    ConfigError: a bad config (a ValueError; before anything is loaded or compiled where
      the problem can be seen from the config alone).
    WorkdirError: the workdir cannot be created, holds a run started with a different
      config (outside `config.RESUMABLE_CHANGES`, unless config.allow_config_change),
      or holds checkpoints none of which can be restored.
    NonFiniteLossError: the loss became NaN/inf; the message names the step and the
      last good checkpoint.
  """
  devices = jax.devices() if devices is None else list(devices)
  config_lib.validate_config(config, num_devices=len(devices))
  workdir = config_lib.make_workdir(workdir)
  ckpt = checkpoint_lib.Checkpointer(workdir, max_to_keep=config.max_to_keep)
  config_lib.check_workdir_config(
      config, workdir, write=jax.process_index() == 0,
      has_run=bool(ckpt.all_steps()) or os.path.exists(os.path.join(workdir, SUMMARY_FILE)))
  mesh = step_lib.make_mesh(devices)

  ds = data_lib.load_dataset(config.dataset.name, data_dir=config.dataset.data_dir,
                             val_fraction=config.dataset.val_fraction, seed=config.seed,
                             num_train=config.dataset.num_train,
                             **dict(config.dataset.kwargs))
  num_train = int(ds.train_x.shape[0])
  spe = data_lib.steps_per_epoch(num_train, config.batch_size)  # rejects B > n
  if config.augment.enabled and not ds.is_image:
    raise config_lib.ConfigError(
        f"config.augment.enabled=True but {config.dataset.name} is not an image dataset; "
        "set --config.augment.enabled=False.")
  sampler = training_sampler(config)
  input_shape = tuple(ds.input_shape)
  try:
    model = build_model(config, ds.num_classes, input_shape=input_shape)
  except (TypeError, ValueError) as e:
    raise config_lib.ConfigError(
        f"config.model ({config.model.name!r}, kwargs={dict(config.model.kwargs)}, "
        f"input_shape={config.model.input_shape}): {e}") from e
  if config.method.name == "approx" and _has_batch_stats(model, input_shape):
    raise config_lib.ConfigError(
        f"method 'approx' differentiates the model along input directions (JVPs), which "
        f"cannot carry BatchNorm batch statistics; model {config.model.name!r} has "
        "BatchNorm. Use a model without BatchNorm (mlp, lenet) or another method.")

  total = config_lib.total_steps(config, num_train)
  moments = None
  if config.method.name in methods_lib.MIXUP_FAMILY:
    moments = samplers_lib.theta_moments(effective_sampler(config, sampler))
  stats = load_or_compute_stats(config, ds, workdir) if needs_stats(config) else None
  if stats is not None and not jax.config.jax_enable_x64:
    stats = jax.tree.map(lambda a: np.asarray(a, np.float32), stats)

  ctx = methods_lib.MethodContext(
      loss=losses_lib.get_loss(config.method.loss), sampler=sampler,
      theta_bar=float(moments.mean) if moments is not None else 1.0,
      granularity=config.mixing.granularity, pairing=config.mixing.pairing,
      fold=config.mixing.fold, global_draw=config.mixing.global_draw,
      eta=float(config.method.eta), num_draws=int(config.method.num_draws),
      estimator=config.method.estimator, num_probes=int(config.method.num_probes),
      terms=tuple(config.method.terms))
  tx, schedule = optim.make_optimizer(config.optimizer, spe, total)

  rep = step_lib.replicated(mesh)
  sample = jnp.zeros((1,) + input_shape, jnp.float32)
  root = jax.random.key_data(jax.random.key(config.seed))
  state = jax.jit(lambda k: state_lib.create_state(model, tx, k, sample),
                  out_shardings=rep)(root)
  restored = ckpt.restore_latest(state)
  if restored is not None:
    state, meta = restored
    logging.info("Resumed from %s at step %d (epoch %d, batch %d of the epoch).",
                 ckpt.directory, meta["step"], meta["epoch"], meta["batch_in_epoch"])
  start = int(_to_host(state.step))
  writer = writers.MetricWriter(workdir)
  writer.truncate_after(start, drop_prefix="final")  # the final records are rewritten
  if restored is not None:
    writer.write(start, {"resumed_from_step": start})

  augment_fn = None
  if config.augment.enabled:
    augment_fn = lambda k, im: data_lib.augment(
        k, im, crop_padding=config.augment.crop_padding, flip=config.augment.flip)
  train_bytes = ds.train_x.nbytes + ds.train_y.nbytes
  on_device = config.data_on_device and train_bytes <= MAX_ON_DEVICE_BYTES
  train_step = step_lib.make_train_step(
      model=model, tx=tx, method=methods_lib.METHODS.get(config.method.name), ctx=ctx,
      mesh=mesh, num_classes=ds.num_classes, batch_size=config.batch_size,
      num_train=num_train if on_device else None, schedule=schedule,
      augment_fn=augment_fn)
  if on_device:
    x_src = step_lib.put_replicated(mesh, ds.train_x)
    y_src = step_lib.put_replicated(mesh, ds.train_y.astype(np.int32))
  else:
    logging.info("Training set (%.1f GB) fed from the host.", train_bytes / 1e9)
    data_key = jax.random.fold_in(jax.random.wrap_key_data(root), state_lib.KEY_DATA)
  stats_dev = None  # only the methods that use them get the statistics in the step
  if stats is not None and config.method.name in methods_lib.NEEDS_STATS:
    stats_dev = jax.tree.map(lambda a: step_lib.put_replicated(mesh, np.asarray(a)), stats)

  predict = Predictor(model, config.eval.batch_size, stats=stats,
                      theta_bar=ctx.theta_bar)
  rescale = (config.eval.rescale and config.method.name in methods_lib.MIXUP_FAMILY)

  def check_finite(state) -> None:
    bad = int(_to_host(state.first_nonfinite))
    if bad != state_lib.NO_NONFINITE:
      last = ckpt.latest_step()
      msg = (f"Non-finite loss or gradient at step {bad} (NaN/inf); training stopped. "
             + (f"The last good checkpoint is step {last} in {ckpt.directory}. "
                if last is not None else "No checkpoint was saved before it. ")
             + "Lower the learning rate (config.optimizer.lr) or check the data, and "
             "rerun with a fresh --workdir (or add --config.allow_config_change=True to "
             "continue from the last good checkpoint).")
      logging.error(msg)
      writer.close()
      ckpt.close()
      raise NonFiniteLossError(msg)

  def save(state) -> None:
    check_finite(state)
    s = int(_to_host(state.step))
    ckpt.save(s, state, {"step": s, "epoch": s // spe, "batch_in_epoch": s % spe,
                         "steps_per_epoch": spe})

  logging.info("Training %s on %s with %s: %d steps (%d per epoch, %.1f epochs) on %d "
               "devices, global batch %d, starting at step %d.", config.method.name,
               config.dataset.name, config.model.name, total, spe, total / spe,
               len(devices), config.batch_size, start)
  t_start = t_last = time.time()
  s_last = start
  eval_every = config.eval.every_epochs * spe
  sync_every_step = any(d.platform == "cpu" for d in devices)
  prev_loss = None
  for s in range(start, total):
    if on_device:
      state, m = train_step(state, x_src, y_src, stats_dev)
    else:
      idx = np.asarray(data_lib.batch_indices(data_key, s, num_examples=num_train,
                                              batch_size=config.batch_size))
      state, m = train_step(state, step_lib.put_sharded(mesh, ds.train_x[idx]),
                            step_lib.put_sharded(mesh, ds.train_y[idx].astype(np.int32)),
                            stats_dev)
    # Bound the steps in flight: on CPU, queued steps can starve the collectives of the
    # forced host devices of threads (an XLA rendezvous timeout), so wait for each step;
    # elsewhere keep one step in flight.
    if sync_every_step:
      jax.block_until_ready(m["loss"])
    elif prev_loss is not None:
      jax.block_until_ready(prev_loss)
    prev_loss = m["loss"]
    done = s + 1
    if interrupt_at_step is not None and done == interrupt_at_step:
      raise _Interrupted(f"interrupted after step {done}")
    if done % config.log_every_steps == 0 or done == total:
      m = {k: float(_to_host(v)) for k, v in m.items()}
      check_finite(state)
      now = time.time()
      rate = (done - s_last) / max(now - t_last, 1e-9)  # includes compilation at first
      t_last, s_last = now, done
      logging.info("step %d/%d (epoch %.2f) loss %.4f lr %.3g | %.1f steps/s, "
                   "%.0f examples/s, ETA %s", done, total, done / spe, m["loss"], m["lr"],
                   rate, rate * config.batch_size, _fmt_time((total - done) / rate))
      writer.write(done, {"train/" + k: v for k, v in m.items() if k != "finite"}
                   | {"epoch": done / spe, "steps_per_sec": rate})
    if done % config.checkpoint_every_steps == 0 and done != total:
      save(state)
    if eval_every and done % eval_every == 0 and done != total:
      check_finite(state)
      res = evaluate(predict, state.variables, ds, num_bins=config.eval.num_bins,
                     rescale=False, calibrate=False)
      logging.info("step %d: test accuracy %.4f nll %.4f ece %.4f", done,
                   res["accuracy"], res["nll"], res["ece"])
      writer.write(done, {"test/" + k: v for k, v in res.items()})

  if start < total or ckpt.latest_step() != total:
    save(state)
  train_time = time.time() - t_start
  check_finite(state)
  summary: dict[str, Any] = {
      "dataset": config.dataset.name, "model": config.model.name,
      "method": config.method.name, "sampler": config.sampler.name,
      "step": total, "epochs": total / spe, "num_devices": len(devices),
      "theta_bar": None if moments is None else float(moments.mean),
      "strength": None if moments is None else float(moments.strength),
      "train_time_s": train_time,
      "resumed_from_step": start if restored is not None else None,
      "process_index": jax.process_index(), "process_count": jax.process_count(),
      # Σ |w| over all parameters: a cheap fingerprint to compare runs and processes.
      "param_l1": float(sum(np.abs(_to_host(p)).astype(np.float64).sum()
                            for p in jax.tree.leaves(state.params))),
  }
  logits, logits_rescaled = {}, {}
  summary["test"] = evaluate(predict, state.variables, ds, num_bins=config.eval.num_bins,
                             rescale=False, logits=logits)
  if rescale:
    summary["test_rescaled"] = evaluate(predict, state.variables, ds,
                                        num_bins=config.eval.num_bins, rescale=True,
                                        logits=logits_rescaled)
  writer.write(total, {"final/" + k: v for k, v in summary["test"].items()}
               | {"final_rescaled/" + k: v
                  for k, v in summary.get("test_rescaled", {}).items()})
  writer.close()
  ckpt.close()
  text = format_summary(summary)
  if jax.process_index() == 0:
    save_predictions(os.path.join(workdir, PREDICTIONS_FILE), ds, logits, logits_rescaled)
    with open(os.path.join(workdir, SUMMARY_FILE), "w") as f:
      json.dump(summary, f, indent=2)
    print(text, flush=True)
  else:  # every process evaluates; the others' summaries are kept for comparison
    name = SUMMARY_FILE.replace(".json", f".process_{jax.process_index()}.json")
    with open(os.path.join(workdir, name), "w") as f:
      json.dump(summary, f, indent=2)
  return summary
