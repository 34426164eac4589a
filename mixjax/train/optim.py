"""Optimizer and learning-rate schedule from `config.optimizer` (epochs -> steps).

  sgd:   add_decayed_weights(wd) then SGD with (Nesterov) momentum: L2 coupled to the
         gradient, as in the classic PyTorch CIFAR recipe (wd 1e-4 on all parameters).
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


def make_optimizer(cfg: ml_collections.ConfigDict, steps_per_epoch: int, total_steps: int,
                   *, lr: Any = None, weight_decay: Any = None
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Returns (tx, schedule) for `config.optimizer`.

  `lr` and `weight_decay` replace cfg.lr and cfg.weight_decay; they may be traced scalars
  (each run's own values inside a vmapped group, `step.RunParams`). The optimizer
  state's structure does not depend on them, so runs with different values stack.
  """
  schedule = make_schedule(cfg, steps_per_epoch, total_steps, lr)
  wd = cfg.weight_decay if weight_decay is None else weight_decay
  if cfg.name == "sgd":
    tx = optax.chain(
        optax.add_decayed_weights(wd) if weight_decay is not None or wd else optax.identity(),
        optax.sgd(schedule, momentum=cfg.momentum or None, nesterov=cfg.nesterov))
  elif cfg.name == "adam":
    tx = optax.adamw(schedule, weight_decay=wd)
  else:
    raise ValueError(f"Unknown optimizer {cfg.name!r}; use sgd or adam.")
  return tx, schedule
