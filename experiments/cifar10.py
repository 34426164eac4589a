r"""CIFAR-10, the classic mixup recipe (Zhang et al., ICLR 2018; docs/THEORY.md §7).

PreAct-ResNet-18, mixup with λ ~ Beta(1, 1), SGD (momentum 0.9, lr 0.1, ×0.1 at epochs 100
and 150, weight decay 1e-4), batch 128, 200 epochs, random crop (padding 4) + horizontal
flip. Published anchor: test error 5.6% (ERM) and about 4.2% (mixup).

The data is read through `tfds.data_source` (array_record) and must be prepared first
(see `mixjax.data`). Usage:

  python -m mixjax.main --config=experiments/cifar10.py --workdir=runs/cifar10
  python -m mixjax.main --config=experiments/cifar10.py --config.method.name=erm ...
  python launch/sweep.py --config=experiments/cifar10.py --workdir=runs/cifar10_sweep
"""
from __future__ import annotations

import ml_collections

from mixjax.train.config import base_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The recipe; `arg` (e.g. `experiments/cifar10.py:cifar100`) picks the dataset."""
  c = base_config()
  c.dataset.name = arg or "cifar10"
  c.dataset.val_fraction = 0.1
  c.model.name = "preact_resnet18"
  c.model.kwargs = ml_collections.ConfigDict()
  c.method.name = "mixup"
  c.sampler.name = "beta"
  c.sampler.params = ml_collections.ConfigDict({"alpha": 1.0})
  c.optimizer.name = "sgd"
  c.optimizer.lr = 0.1
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 1e-4
  c.optimizer.schedule = "piecewise"
  c.optimizer.boundaries = (100, 150)
  c.optimizer.decay_factor = 0.1
  c.batch_size = 128
  c.num_epochs = 200
  c.augment.enabled = True
  c.augment.crop_padding = 4
  c.augment.flip = True
  c.eval.every_epochs = 10
  c.log_every_steps = 100
  c.checkpoint_every_steps = 2000
  return c


def get_sweep() -> list[dict]:
  """ERM vs mixup with the θ-laws of docs/THEORY.md §6 (one override dict per run)."""
  sweep = [{"method.name": "erm"}]
  for alpha in (0.2, 1.0):
    sweep.append({"method.name": "mixup", "sampler.name": "beta",
                  "sampler.params": {"alpha": alpha}})
  sweep.append({"method.name": "mixup", "sampler.name": "optimal", "sampler.params": {}})
  sweep.append({"method.name": "regmixup", "sampler.name": "beta",
                "sampler.params": {"alpha": 10.0}, "method.eta": 1.0})
  return sweep
