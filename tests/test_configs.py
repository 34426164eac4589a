"""experiments/*.py: every config and every sweep point is valid, and the CIFAR recipe is
the published one (Zhang et al., ICLR 2018; THEORY.md §7)."""
from __future__ import annotations

import os

import pytest

from mixjax.train import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = ("mnist1d", "digits", "two_moons", "cifar10", "cifar100")


def load(name):
  return config_lib.load_config_module(os.path.join(ROOT, "experiments", f"{name}.py"))


@pytest.mark.parametrize("name", CONFIGS)
def test_config_and_sweep_points_validate(name):
  module = load(name)
  config = module.get_config()
  assert config.dataset.name == name
  for ndev in (1, 4):
    config_lib.validate_config(config, num_devices=ndev)
  # Every config has exactly the base config's knobs: one name per knob.
  assert set(config.to_dict()) == set(config_lib.base_config().to_dict())
  for point in getattr(module, "get_sweep", list)():
    config_lib.validate_config(config_lib.sweep_config(config, point), num_devices=4)


def test_cifar_recipe_is_the_published_one():
  for name in ("cifar10", "cifar100"):
    c = load(name).get_config()
    assert (c.model.name, c.method.name, c.sampler.name) == ("preact_resnet18", "mixup", "beta")
    assert dict(c.sampler.params) == {"alpha": 1.0}
    assert (c.optimizer.name, c.optimizer.lr, c.optimizer.momentum) == ("sgd", 0.1, 0.9)
    assert (c.optimizer.schedule, tuple(c.optimizer.boundaries)) == ("piecewise", (100, 150))
    assert (c.optimizer.decay_factor, c.optimizer.weight_decay) == (0.1, 1e-4)
    assert (c.batch_size, c.num_epochs) == (128, 200)
    assert c.augment.enabled and c.augment.flip and c.augment.crop_padding == 4


def test_sweep_config_rejects_unknown_keys():
  config = config_lib.base_config()
  with pytest.raises(ValueError, match="no such config key"):
    config_lib.sweep_config(config, {"optimizer.learning_rate": 0.1})
  swept = config_lib.sweep_config(config, {"sampler.name": "constant",
                                           "sampler.params": {"lam": 0.7}})
  assert dict(swept.sampler.params) == {"lam": 0.7}
  assert dict(config.sampler.params) == {"alpha": 1.0}  # the original is untouched
