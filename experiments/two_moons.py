r"""Two moons, the paper's appendix setup (docs/THEORY.md §7): sklearn `make_moons` with
n = 300, noise 0.01, a 50/50 train/test split, and a random-features model: the dataset
applies a fixed random ReLU feature map (128 features, `dataset.kwargs`) and the model is
linear on top of it (an MLP without hidden layers). Full-batch training (the 120 training
points left after a 20% validation split), so each mixup draw pairs the whole training
set.

  python -m mixjax.main --config=experiments/two_moons.py --workdir=runs/two_moons
"""
from __future__ import annotations

import ml_collections

from mixjax.train.config import base_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  c = base_config()
  c.dataset.name = "two_moons"
  c.dataset.val_fraction = 0.2
  c.dataset.kwargs = ml_collections.ConfigDict(
      {"num_features": 128, "feature_map": "relu", "noise": 0.01, "n_samples": 300})
  c.model.name = "mlp"
  c.model.kwargs = ml_collections.ConfigDict({"hidden_sizes": ()})
  c.method.name = "mixup"
  c.sampler.name = "beta"
  c.sampler.params = ml_collections.ConfigDict({"alpha": 1.0})
  c.optimizer.name = "adam"
  c.optimizer.lr = 1e-2
  c.optimizer.weight_decay = 0.0
  c.optimizer.schedule = "constant"
  c.batch_size = 120  # full batch; divisible by 1, 2, 4 and 8 devices
  c.num_epochs = 1000
  c.eval.every_epochs = 250
  c.log_every_steps = 250
  c.checkpoint_every_steps = 500
  return c


def get_sweep() -> list[dict]:
  sweep = [{"method.name": "erm"}]
  for alpha in (0.2, 1.0, 10.0):
    sweep.append({"sampler.params": {"alpha": alpha}})
  sweep.append({"method.name": "approx", "method.estimator": "exact"})
  return sweep
