"""train_and_evaluate (mixjax/train/loop.py) end to end, at tiny sizes.

Every offline config runs (digits on device and host-fed must agree exactly; two moons
must reach the accuracy a linear model on its random features can reach), CIFAR-10 runs
under `tfds.testing.mock_data`, a run interrupted after its first checkpoint and
restarted with the same arguments ends with exactly the metrics of an uninterrupted run,
and a diverging run stops naming the step and leaves a finite checkpoint.
"""
from __future__ import annotations

import json
import os
from unittest import mock

import jax
import numpy as np
import pytest

from mixjax.train import checkpoint as checkpoint_lib
from mixjax.train import config as config_lib
from mixjax.train import loop
from mixjax.train import writers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
  """JAX's persistent compilation cache for this module: the runs here compile the same
  step / init / eval programs several times (a resumed run recompiles what the first
  run compiled), and a CPU compile of a train step takes seconds. Speed only: results
  are the same with or without it."""
  try:
    from jax._src import compilation_cache as cc  # pylint: disable=g-import-not-at-top
  except ImportError:  # private module moved: run uncached
    yield
    return
  names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
           "jax_persistent_cache_min_entry_size_bytes")
  old = {n: getattr(jax.config, n) for n in names}
  cache_dir = tmp_path_factory.getbasetemp().parent / "mixjax_train_jax_cache"
  jax.config.update("jax_compilation_cache_dir", str(cache_dir))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  cc.reset_cache()
  yield
  for n, v in old.items():
    jax.config.update(n, v)
  cc.reset_cache()


def get_config(name, **overrides):
  """experiments/<name>.py's config with `overrides` ({"a.b": value}) applied."""
  module = config_lib.load_config_module(os.path.join(ROOT, "experiments", f"{name}.py"))
  return config_lib.sweep_config(module.get_config(), overrides)


TINY = {"log_every_steps": 2, "eval.every_epochs": 1, "checkpoint_every_steps": 2}


def _summary(workdir):
  with open(os.path.join(workdir, "summary.json")) as f:
    return json.load(f)


def test_digits_on_device_and_host_fed_agree(tmp_path):
  """digits config, 4 steps: the host-fed path (same batch indices, fed from the host)
  gives exactly the on-device run; metrics and summary are written."""
  runs = []
  for on_device in (True, False):
    wd = str(tmp_path / f"dev{on_device}")
    config = get_config("digits", num_steps=4, data_on_device=on_device, batch_size=32,
                        **{"model.kwargs": {"hidden_sizes": (16,)}, **TINY})
    runs.append(loop.train_and_evaluate(config, wd))
    records = writers.read_metrics(wd)
    assert [r["step"] for r in records if "train/loss" in r] == [2, 4]
    assert all(np.isfinite(r["train/loss"]) for r in records if "train/loss" in r)
    assert _summary(wd)["test"] == runs[-1]["test"]
  a, b = runs
  assert a["param_l1"] == b["param_l1"]
  assert a["test"] == b["test"] and a["test_rescaled"] == b["test_rescaled"]


def test_same_config_on_four_devices_and_one_device(tmp_path):
  """The mnist1d config with global λ/partner draws: 4 devices and a mesh over
  jax.devices()[:1] end with the same parameters and metrics (float tolerance)."""
  config = get_config("mnist1d", num_steps=4, batch_size=64, log_every_steps=2,
                      **{"mixing.global_draw": True, "eval.every_epochs": 0,
                         "model.kwargs": {"features": (4,), "dense_sizes": (8,)}})
  four = loop.train_and_evaluate(config, str(tmp_path / "four"), devices=jax.devices())
  one = loop.train_and_evaluate(config, str(tmp_path / "one"), devices=jax.devices()[:1])
  assert (four["num_devices"], one["num_devices"]) == (4, 1)
  assert four["param_l1"] == pytest.approx(one["param_l1"], rel=1e-5)
  losses4 = [r["train/loss"] for r in writers.read_metrics(str(tmp_path / "four"))
             if "train/loss" in r]
  losses1 = [r["train/loss"] for r in writers.read_metrics(str(tmp_path / "one"))
             if "train/loss" in r]
  np.testing.assert_allclose(losses4, losses1, rtol=1e-5)
  for k in ("accuracy", "nll", "ece", "brier"):
    assert four["test"][k] == pytest.approx(one["test"][k], rel=1e-4, abs=1e-6)


def test_two_moons_reaches_linear_separability(tmp_path):
  """The paper's two-moons setup (linear model on 128 random ReLU features, full batch):
  mixup training for 300 steps classifies the noise-0.01 moons almost perfectly."""
  config = get_config("two_moons", num_steps=300, **{"eval.every_epochs": 0})
  summary = loop.train_and_evaluate(config, str(tmp_path))
  assert summary["test"]["accuracy"] >= 0.95
  assert summary["test_rescaled"]["accuracy"] >= 0.95
  # Beta(1, 1): θ̄ = 3/4 exactly (THEORY.md §6).
  assert summary["theta_bar"] == pytest.approx(0.75)


def test_cifar10_config_under_mock_data(tmp_path):
  """The CIFAR-10 recipe (mixup, crop + flip, piecewise SGD) on mocked tfds data with a
  tiny LeNet in place of the PreAct-ResNet-18."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  config = get_config("cifar10", num_steps=2, batch_size=16,
                      **{"model.name": "lenet",
                         "model.kwargs": {"features": (4,), "dense_sizes": (8,)},
                         "dataset.data_dir": str(tmp_path / "tfds"), "eval.every_epochs": 0})
  with tfds.testing.mock_data(num_examples=40), \
      mock.patch.object(tfds.core.DatasetBuilder, "is_prepared", return_value=True), \
      mock.patch.object(tfds.core.DatasetInfo, "file_format", new_callable=mock.PropertyMock,
                        return_value=tfds.core.FileFormat.ARRAY_RECORD):
    summary = loop.train_and_evaluate(config, str(tmp_path / "run"))
  assert summary["dataset"] == "cifar10" and summary["step"] == 2
  for col in ("test", "test_rescaled"):
    assert 0 <= summary[col]["accuracy"] <= 1 and np.isfinite(summary[col]["nll"])


def _comparable(records):
  drop = ("steps_per_sec",)
  return [{k: v for k, v in r.items() if k not in drop} for r in records]


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path):
  """Interrupted after step 7 (checkpoints at 3 and 6), restarted with the same call:
  the metrics file and the final summary equal those of an uninterrupted run exactly
  (same batches, λ draws and optimizer state after the restore from step 6)."""
  def config():
    return get_config("mnist1d", num_steps=9, batch_size=64, log_every_steps=1,
                      checkpoint_every_steps=3,
                      **{"model.kwargs": {"features": (4,), "dense_sizes": (8,)},
                         "eval.every_epochs": 0})
  full = str(tmp_path / "full")
  ref = loop.train_and_evaluate(config(), full)
  wd = str(tmp_path / "resumed")
  with pytest.raises(loop._Interrupted):  # pylint: disable=protected-access
    loop.train_and_evaluate(config(), wd, interrupt_at_step=7)
  assert checkpoint_lib.Checkpointer(wd).latest_step() == 6
  assert max(r["step"] for r in writers.read_metrics(wd)) == 6  # 7 was not logged
  got = loop.train_and_evaluate(config(), wd)
  assert _comparable(writers.read_metrics(wd)) == _comparable(writers.read_metrics(full))
  for key in ("test", "test_rescaled", "param_l1"):
    assert got[key] == ref[key]
  # Running the finished command again only re-evaluates: nothing changes.
  again = loop.train_and_evaluate(config(), wd)
  assert _comparable(writers.read_metrics(wd)) == _comparable(writers.read_metrics(full))
  assert again["test"] == ref["test"] and again["param_l1"] == ref["param_l1"]


def test_nan_loss_stops_with_the_step_and_keeps_a_finite_checkpoint(tmp_path):
  config = get_config("mnist1d", num_steps=6, batch_size=64, log_every_steps=1,
                      checkpoint_every_steps=1,
                      **{"optimizer.lr": 1e38, "optimizer.warmup_epochs": 0.0,
                         "model.kwargs": {"features": (4,), "dense_sizes": (8,)},
                         "eval.every_epochs": 0})
  with pytest.raises(loop.NonFiniteLossError) as e:
    loop.train_and_evaluate(config, str(tmp_path))
  msg = str(e.value)
  bad = int(msg.split("at step ")[1].split()[0])
  assert 1 <= bad <= 6
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path))
  if bad == 1:
    assert ckpt.latest_step() is None and "No checkpoint" in msg
  else:
    assert ckpt.latest_step() == bad - 1 and f"checkpoint is step {bad - 1}" in msg
    state, meta = ckpt.restore(bad - 1)
    assert meta["step"] == bad - 1
    leaves = jax.tree.leaves(state)
    assert leaves and all(np.all(np.isfinite(np.asarray(a))) for a in leaves)
  assert not os.path.exists(tmp_path / "summary.json")


def test_approx_with_batchnorm_model_is_rejected_before_training(tmp_path):
  config = get_config("digits", **{"method.name": "approx", "model.name": "preact_resnet18",
                                   "model.kwargs": {"width": 2},
                                   "model.input_shape": (8, 8, 1)})
  with pytest.raises(ValueError, match="BatchNorm"):
    loop.train_and_evaluate(config, str(tmp_path))


def test_sigkill_at_an_arbitrary_point_then_same_command_resumes_exactly(tmp_path):
  """A real kill: `python -m mixjax.main` is SIGKILLed as soon as its first checkpoint
  is on disk (wherever it is then: training, logging or writing the next checkpoint),
  and the same command is run again. The final summary equals that of an uninterrupted
  run of the same command exactly."""
  import signal  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top

  def command(workdir):
    return [sys.executable, "-m", "mixjax.main",
            f"--config={os.path.join(ROOT, 'experiments', 'mnist1d.py')}",
            f"--workdir={workdir}", "--config.num_steps=300", "--config.batch_size=64",
            "--config.checkpoint_every_steps=25", "--config.log_every_steps=25",
            "--config.eval.every_epochs=0",
            '--config.model.kwargs={"features": [4], "dense_sizes": [8]}']

  env = dict(os.environ, JAX_PLATFORMS="cpu")
  full, killed = tmp_path / "full", tmp_path / "killed"
  subprocess.run(command(full), env=env, check=True, cwd=ROOT, capture_output=True,
                 timeout=300)
  proc = subprocess.Popen(command(killed), env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  ckpt_dir = killed / "checkpoints"
  deadline = time.monotonic() + 240
  while time.monotonic() < deadline and proc.poll() is None:
    if ckpt_dir.is_dir() and any(p.name.isdigit() for p in ckpt_dir.iterdir()):
      break
    time.sleep(0.05)
  assert proc.poll() is None, "the run finished before it could be killed; make it longer"
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not (killed / "summary.json").exists()
  subprocess.run(command(killed), env=env, check=True, cwd=ROOT, capture_output=True,
                 timeout=300)
  got, ref = _summary(killed), _summary(full)
  assert got["step"] == ref["step"] == 300
  for key in ("test", "test_rescaled", "param_l1"):
    assert got[key] == ref[key], key
