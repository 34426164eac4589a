r"""Two moons, the paper's appendix setup (THEORY.md §7): sklearn `make_moons` with
n = 300, noise 0.01, a 50/50 train/test split, and a random-features model (a wide hidden
layer). Full-batch training, so the mixup draws are over the whole training set.

  python -m mixjax.main --config=experiments/two_moons.py --workdir=runs/two_moons
"""
from __future__ import annotations

import ml_collections

from mixjax.train.config import base_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  c = base_config()
  c.dataset.name = "two_moons"
  c.dataset.val_fraction = 0.0
  c.model.name = "mlp"
  c.model.kwargs = ml_collections.ConfigDict({"hidden_sizes": (500,)})
  c.method.name = "mixup"
  c.sampler.name = "beta"
  c.sampler.params = ml_collections.ConfigDict({"alpha": 1.0})
  c.optimizer.name = "adam"
  c.optimizer.lr = 1e-2
  c.optimizer.weight_decay = 0.0
  c.optimizer.schedule = "constant"
  c.batch_size = 144  # full batch of the 150 training points, divisible by 1..4 devices
  c.num_epochs = 500
  c.eval.every_epochs = 100
  c.log_every_steps = 100
  c.checkpoint_every_steps = 500
  return c


def get_sweep() -> list[dict]:
  sweep = [{"method.name": "erm"}]
  for alpha in (0.2, 1.0, 10.0):
    sweep.append({"sampler.params": {"alpha": alpha}})
  sweep.append({"method.name": "approx", "method.estimator": "exact"})
  return sweep
