"""experiments/*.py: every config and every sweep point is valid, and the CIFAR recipe is
the published one (Zhang et al., ICLR 2018; docs/THEORY.md §7)."""
from __future__ import annotations

import json
import os

import pytest

from mixjax.train import config as config_lib
from mixjax import errors
from mixjax.train import sweeps
from mixjax.train import validate
from mixjax.train import workdir as workdir_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = ("mnist1d", "digits", "two_moons", "cifar10", "cifar100", "fashion_mnist")


def load(name):
  return sweeps.load_config_module(os.path.join(ROOT, "experiments", f"{name}.py"))


@pytest.mark.parametrize("name", CONFIGS)
def test_config_and_sweep_points_validate(name):
  module = load(name)
  config = module.get_config()
  assert config.dataset.name == name
  for ndev in (1, 4):
    validate.validate_config(config, num_devices=ndev)
  # Every config has exactly the base config's knobs: one name per knob.
  assert set(config.to_dict()) == set(config_lib.base_config().to_dict())
  for point in getattr(module, "get_sweep", list)():
    validate.validate_config(sweeps.sweep_config(config, point), num_devices=4)


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
    sweeps.sweep_config(config, {"optimizer.learning_rate": 0.1})
  swept = sweeps.sweep_config(config, {"sampler.name": "constant",
                                           "sampler.params": {"lam": 0.7}})
  assert dict(swept.sampler.params) == {"lam": 0.7}
  assert dict(config.sampler.params) == {"alpha": 1.0}  # the original is untouched


@pytest.mark.parametrize("name,kwargs", [
    ("digits", {}), ("digits", {"test_fraction": 0.33, "as_image": True}),
    ("two_moons", {}), ("two_moons", {"n_samples": 101}), ("mnist1d", {"num_samples": 1234})])
def test_train_size_from_metadata_matches_the_loader(name, kwargs):
  """`train_size` (validate_config's batch-size check) knows the training split's size
  without loading: it equals what the loader returns."""
  from mixjax.data import dataset  # pylint: disable=g-import-not-at-top
  for vf in (0.0, 0.1, 0.25):
    n = dataset.load_dataset(name, val_fraction=vf, **kwargs).num_train
    assert dataset.train_size(name, val_fraction=vf, **kwargs) == n


def test_changed_config_on_resume_is_refused_outside_the_allow_list(tmp_path):
  """`check_workdir_config`: the first start writes config.json; the same config passes;
  changes in RESUMABLE_CHANGES pass and rewrite it; any other change raises WorkdirError
  listing old -> new unless allow_config_change; with nothing to resume it is replaced."""
  check = workdir_lib.check_workdir_config
  path = tmp_path / workdir_lib.CONFIG_FILE
  base = load("mnist1d").get_config()
  assert check(base, str(tmp_path), has_run=False) == {}
  first = path.read_text()
  assert check(base, str(tmp_path), has_run=True) == {}
  allowed = sweeps.sweep_config(base, {"num_epochs": 7, "eval.every_epochs": 3,
                                           "dataset.data_dir": "/data"})
  changes = check(allowed, str(tmp_path), has_run=True, write=False)
  assert set(changes) == {"num_epochs", "eval.every_epochs", "dataset.data_dir"}
  assert changes["num_epochs"] == (base.num_epochs, 7)
  assert changes["dataset.data_dir"] == (None, "/data")
  assert path.read_text() == first  # write=False (processes other than 0)
  changed = sweeps.sweep_config(base, {"seed": 3, "optimizer.lr": 0.5,
                                           "num_steps": 5})
  with pytest.raises(errors.WorkdirError) as e:
    check(changed, str(tmp_path), has_run=True)
  msg = str(e.value)
  assert "seed: 0 -> 3" in msg and "optimizer.lr:" in msg and "-> 0.5" in msg
  assert "num_steps" not in msg.split("Changes allowed")[0]
  assert path.read_text() == first
  allow = sweeps.sweep_config(changed, {"allow_config_change": True})
  assert set(check(allow, str(tmp_path), has_run=True)) == {
      "seed", "optimizer.lr", "num_steps", "allow_config_change"}
  assert json.loads(path.read_text())["seed"] == 3
  assert set(check(base, str(tmp_path), has_run=False)) == set()  # nothing to resume
  assert path.read_text() == first
  for key in config_lib.RESUMABLE_CHANGES:
    assert workdir_lib.is_resumable_change(key)
    assert key == "allow_config_change" or key.split(".")[0] in base


def test_range_reads_its_interval():
  """`config.Range`: open and closed ends, no upper bound, never NaN or ±inf, None (an
  unset placeholder) valid; the message text."""
  r = config_lib.Range(0.0, "[0, 1)", "0: none")
  assert [r.contains(v) for v in (0.0, 0.5, 0.999, 1.0, -1e-9)] == [
      True, True, True, False, False]
  assert not r.contains(float("nan")) and r.contains(None)
  assert r.describe() == "in [0, 1) (0: none)"
  pos = config_lib.Range(1.0, "(0, inf)")
  assert [pos.contains(v) for v in (0.0, 1e-30, 1e30, float("inf"))] == [
      False, True, True, False]
  assert pos.describe() == "> 0"
  assert config_lib.Range(1, "[1, inf)").describe() == ">= 1"
  assert config_lib.Range(0.1, "(0, 1]").contains(1.0)


@pytest.mark.parametrize("key", sorted(config_lib.RANGES))
def test_every_declared_range_is_checked_at_its_bounds(key):
  """Each knob declared with a `Range`: its default is valid; at each finite bound the
  value is valid iff the end is closed; one past a bound is refused by validate_config
  with a ConfigError naming the key (and NaN, for float knobs)."""
  valid = config_lib.RANGES[key]
  default = config_lib.get(config_lib.base_config(), key)
  kind = int if isinstance(default, int) or default is None else float
  lo, hi = (float(b) for b in valid.interval[1:-1].split(","))
  cases = [(default, True)]
  if lo != float("-inf"):
    cases += [(kind(lo), valid.interval[0] == "["), (kind(lo - 1), False)]
  if hi != float("inf"):
    cases += [(kind(hi), valid.interval[-1] == "]"), (kind(hi + 1), False)]
  if kind is float:
    cases.append((float("nan"), False))
  for value, ok in cases:
    config = sweeps.sweep_config(config_lib.base_config(), {key: value})
    if ok:
      validate.validate_config(config, num_devices=1)
    else:
      with pytest.raises(errors.ConfigError, match=f"config.{key}="):
        validate.validate_config(config, num_devices=1)
