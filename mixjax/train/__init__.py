"""Training: the program assembled once from the configs and the data (`assemble`), the
per-device step under jax.jit(jax.shard_map(...)), the loop, Orbax checkpoints, metric
writers, the METHODS registry (each entry a `Method` that declares what it needs) and
the config schema (every knob, its default and its range).

Names are imported lazily, so that reading a config (`mixjax.train.config`) does not
import JAX, Flax, Orbax or the datasets.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "base_config": "mixjax.train.config",
    "validate_config": "mixjax.train.validate",
    "ConfigError": "mixjax.errors",
    "WorkdirError": "mixjax.errors",
    "NonFiniteLossError": "mixjax.errors",
    "train_and_evaluate": "mixjax.train.groups",
    "train_sweep": "mixjax.train.sweeps",
    "TrainedRun": "mixjax.train.trained",
    "Program": "mixjax.train.program",
    "assemble": "mixjax.train.program",
    "METHODS": "mixjax.train.methods",
    "Method": "mixjax.train.methods",
    "TrainState": "mixjax.train.state",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
  if name in _EXPORTS:
    return getattr(importlib.import_module(_EXPORTS[name]), name)
  raise AttributeError(f"module 'mixjax.train' has no attribute {name!r}")
