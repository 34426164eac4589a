"""Optimizer and learning-rate schedule from `config.optimizer` (epochs -> steps).

  sgd:   add_decayed_weights(wd) then SGD with (Nesterov) momentum: L2 coupled to the
         gradient, as in the classic PyTorch CIFAR recipe (wd 1e-4 on all parameters;
         with wd = 0 the decay adds exactly 0).
  adam:  AdamW (decoupled weight decay, `weight_decay` times the learning rate).
Schedules (s = the optimizer's step count, 0 at the first update; T = total_steps;
w = round(warmup_epochs · steps_per_epoch)):
  constant   lr.
  piecewise  lr · decay_factor^k, k = the number of boundaries b (epochs) with
             s ≥ round(b · steps_per_epoch); boundaries that land on the same step
             each apply.
  cosine     lr · ½(1 + cos(π (s − w)/(T − w))): from lr at s = w to its end value 0 at
             s = T, the count after the last update (the last update, s = T − 1, still
             has a small positive rate), as `optax.warmup_cosine_decay_schedule(0, lr, w, T)`.
`warmup_epochs` > 0 prepends a linear ramp lr · s / w for s < w (0 at the first update).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax


def make_schedule(cfg: ml_collections.ConfigDict, steps_per_epoch: int, total_steps: int,
                  lr: Any = None) -> optax.Schedule:
  """The schedule of config.optimizer; `lr` (default cfg.lr) may be a traced scalar."""
  lr = cfg.lr if lr is None else lr
  warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
  if cfg.schedule == "constant":
    main = optax.constant_schedule(lr)
  elif cfg.schedule == "piecewise":
    # round(), not int(): 0.29 · 100 is 28.999… in floats. Scales of boundaries that
    # land on the same step multiply (a dict keyed by step would keep only one).
    scales: dict[int, float] = {}
    for b in cfg.boundaries:
      at = int(round(b * steps_per_epoch)) - warmup
      scales[at] = scales.get(at, 1.0) * cfg.decay_factor
    main = optax.piecewise_constant_schedule(lr, scales)
  elif cfg.schedule == "cosine":
    main = optax.cosine_decay_schedule(lr, max(total_steps - warmup, 1))
  else:
    raise ValueError(f"Unknown schedule {cfg.schedule!r}; use constant, piecewise or cosine.")
  if warmup <= 0:
    return main
  return optax.join_schedules(
      [optax.linear_schedule(0.0, lr, warmup), main], [warmup])


# The optimizer's numeric hyper-parameters that may differ across the runs of one
# vmapped program: optimizer-state leaves (`optax.inject_hyperparams`), by config key.
HYPERPARAMS = {"lr": "optimizer.lr", "weight_decay": "optimizer.weight_decay"}


def make_optimizer(cfg: ml_collections.ConfigDict, steps_per_epoch: int, total_steps: int
                   ) -> optax.GradientTransformation:
  """The optimizer of `config.optimizer`, its peak learning rate and weight decay held in
  its state (`optax.inject_hyperparams`: `opt_state.hyperparams["lr"]`,
  `["weight_decay"]`, float32 scalars), so that runs with different values stack into
  one vmapped program and a checkpoint records them. `tx.init` stores cfg.lr and
  cfg.weight_decay; `with_hyperparams` replaces them in a state.

  The learning rate of update s is `make_schedule(cfg, ..., lr=hyperparams["lr"])(s)`
  (`learning_rate(opt_state, ...)`).
  """
  if cfg.name not in ("sgd", "adam"):
    raise ValueError(f"Unknown optimizer {cfg.name!r}; use sgd or adam.")

  def factory(lr, weight_decay):
    schedule = make_schedule(cfg, steps_per_epoch, total_steps, lr)
    if cfg.name == "sgd":
      return optax.chain(
          optax.add_decayed_weights(weight_decay),
          optax.sgd(schedule, momentum=cfg.momentum or None, nesterov=cfg.nesterov))
    return optax.adamw(schedule, weight_decay=weight_decay)

  return optax.inject_hyperparams(factory, hyperparam_dtype=jnp.float32)(
      lr=cfg.lr, weight_decay=cfg.weight_decay)


def with_hyperparams(opt_state, **values):
  """`opt_state` of `make_optimizer` with hyperparams replaced (e.g. lr=, weight_decay=;
  traced values allowed)."""
  hyper = dict(opt_state.hyperparams)
  hyper.update({k: jnp.asarray(v, jnp.float32) for k, v in values.items()})
  return opt_state._replace(hyperparams=hyper)


def learning_rate(opt_state, cfg: ml_collections.ConfigDict, steps_per_epoch: int,
                  total_steps: int, step) -> jax.Array:
  """The learning rate of update `step` under the peak rate held in `opt_state`."""
  return make_schedule(cfg, steps_per_epoch, total_steps,
                       opt_state.hyperparams["lr"])(step)
