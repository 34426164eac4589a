r"""scikit-learn's 8×8 digits (1797 images, 10 classes; offline): a small MLP with mixup.

  python -m mixjax.main --config=experiments/digits.py --workdir=runs/digits
"""
from __future__ import annotations

import ml_collections

from mixjax.train.config import base_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  c = base_config()
  c.dataset.name = "digits"
  c.dataset.val_fraction = 0.1
  c.model.name = "mlp"
  c.model.kwargs = ml_collections.ConfigDict({"hidden_sizes": (128,)})
  c.method.name = "mixup"
  c.sampler.name = "beta"
  c.sampler.params = ml_collections.ConfigDict({"alpha": 1.0})
  c.optimizer.name = "adam"
  c.optimizer.lr = 1e-3
  c.optimizer.weight_decay = 0.0
  c.optimizer.schedule = "cosine"
  c.batch_size = 64
  c.num_epochs = 60
  c.eval.every_epochs = 20
  c.log_every_steps = 200
  c.checkpoint_every_steps = 500
  return c


def get_sweep() -> list[dict]:
  return [{"method.name": m} for m in ("erm", "mixup", "erm_transformed", "approx")]
