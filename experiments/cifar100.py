r"""CIFAR-100 with the CIFAR-10 mixup recipe (PreAct-ResNet-18, Beta(1, 1), SGD 0.1 with
×0.1 at epochs 100 and 150, weight decay 1e-4, batch 128, 200 epochs, crop + flip).

  python -m mixjax.main --config=experiments/cifar100.py --workdir=runs/cifar100
"""
from __future__ import annotations

import os

import ml_collections

from mixjax.train.sweeps import load_config_module


def _cifar10():
  return load_config_module(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                         "cifar10.py"))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  return _cifar10().get_config("cifar100")


def get_sweep() -> list[dict]:
  return _cifar10().get_sweep()
