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
import pathlib
from unittest import mock

import jax
import numpy as np
import pytest

from mixjax.train import checkpoint as checkpoint_lib
from mixjax import errors
from mixjax.train import sweeps
from mixjax.train import groups
from mixjax.train import loop
from mixjax.train import setup
from mixjax.train import writers
from helpers import comparable, get_config, read_summary  # pylint: disable=g-bad-import-order

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


pytestmark = pytest.mark.usefixtures("compilation_cache")


TINY = {"log_every_steps": 2, "eval.every_epochs": 1, "checkpoint_every_steps": 2}


def test_digits_on_device_and_host_fed_agree(tmp_path):
  """digits config, 4 steps: the host-fed path (same batch indices, fed from the host)
  gives exactly the on-device run; metrics and summary are written."""
  runs = []
  for on_device in (True, False):
    wd = str(tmp_path / f"dev{on_device}")
    config = get_config("digits", num_steps=4, data_on_device=on_device, batch_size=32,
                        **{"model.kwargs": {"hidden_sizes": (16,)}, **TINY})
    runs.append(groups.train_and_evaluate(config, wd))
    records = writers.read_metrics(wd)
    assert [r["step"] for r in records if "train/loss" in r] == [2, 4]
    assert all(np.isfinite(r["train/loss"]) for r in records if "train/loss" in r)
    assert read_summary(wd)["test"] == runs[-1]["test"]
  a, b = runs
  assert a["param_l1"] == b["param_l1"]
  assert a["test"] == b["test"] and a["test_rescaled"] == b["test_rescaled"]


def test_same_config_on_four_devices_and_one_device(tmp_path):
  """The mnist1d config with global λ/partner draws: 4 devices and a mesh over
  jax.devices()[:1] end with the same parameters and metrics (float tolerance)."""
  config = get_config("mnist1d", num_steps=4, batch_size=64, log_every_steps=2,
                      **{"mixing.global_draw": True, "eval.every_epochs": 0,
                         "model.kwargs": {"features": (4,), "dense_sizes": (8,)}})
  four = groups.train_and_evaluate(config, str(tmp_path / "four"), devices=jax.devices())
  one = groups.train_and_evaluate(config, str(tmp_path / "one"), devices=jax.devices()[:1])
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
  summary = groups.train_and_evaluate(config, str(tmp_path))
  assert summary["test"]["accuracy"] >= 0.95
  assert summary["test_rescaled"]["accuracy"] >= 0.95
  # Beta(1, 1): θ̄ = 3/4 exactly (docs/THEORY.md §6).
  assert summary["theta_bar"] == pytest.approx(0.75)


def test_cifar10_config_under_mock_data(tmp_path):
  """The CIFAR-10 recipe's pipeline (tfds array_record source, crop + flip, piecewise
  SGD) on mocked tfds data, with a tiny LeNet in place of the PreAct-ResNet-18 and ERM:
  the run memorizes the 40 mock training images' random labels (training accuracy far
  above the 10% of chance, measured on the restored final model), which a pipeline that
  scrambled images and labels on their way to the step could not do."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from mixjax.train import trained  # pylint: disable=g-import-not-at-top
  config = get_config("cifar10", num_steps=150, batch_size=16,
                      **{"model.name": "lenet", "method.name": "erm",
                         "model.kwargs": {"features": (8,), "dense_sizes": (32,)},
                         "optimizer.name": "adam", "optimizer.lr": 3e-3,
                         "optimizer.boundaries": (), "optimizer.weight_decay": 0.0,
                         "augment.enabled": False, "log_every_steps": 40,
                         "dataset.data_dir": str(tmp_path / "tfds"), "eval.every_epochs": 0})
  with tfds.testing.mock_data(num_examples=40), \
      mock.patch.object(tfds.core.DatasetBuilder, "is_prepared", return_value=True), \
      mock.patch.object(tfds.core.DatasetInfo, "file_format", new_callable=mock.PropertyMock,
                        return_value=tfds.core.FileFormat.ARRAY_RECORD):
    summary = groups.train_and_evaluate(config, str(tmp_path / "run"))
    run = trained.TrainedRun(str(tmp_path / "run"))
  assert summary["dataset"] == "cifar10" and summary["step"] == 150
  logits = run.model.apply(run.variables(), run.ds.train_x, train=False)
  train_acc = float(np.mean(np.argmax(np.asarray(logits), 1) == run.ds.train_y))
  run.close()
  assert train_acc >= 0.6, train_acc


def _train_steps(workdir):
  return [r["step"] for r in writers.read_metrics(workdir) if "train/loss" in r]


def _resumes(workdir):
  return [r["resumed_from_step"] for r in writers.read_metrics(workdir)
          if "resumed_from_step" in r]


# The resume tests' run: 9 steps, logged every step, checkpoints at 3, 6 and 9.
RESUME = {"num_steps": 9, "batch_size": 64, "log_every_steps": 1,
          "checkpoint_every_steps": 3, "eval.every_epochs": 0,
          "model.kwargs": {"features": (4,), "dense_sizes": (8,)}}
RESUME_FLAGS = ["--config.num_steps=9", "--config.batch_size=64",
                "--config.log_every_steps=1", "--config.checkpoint_every_steps=3",
                "--config.eval.every_epochs=0",
                '--config.model.kwargs={"features": [4], "dense_sizes": [8]}']


def resume_config(**overrides):
  return get_config("mnist1d", **{**RESUME, **overrides})


@pytest.fixture(scope="module")
def reference(compilation_cache, tmp_path_factory):  # pylint: disable=unused-argument
  """(workdir, summary) of the uninterrupted RESUME run, shared by the tests below."""
  wd = str(tmp_path_factory.mktemp("reference"))
  return wd, groups.train_and_evaluate(resume_config(), wd)


@pytest.fixture(scope="module")
def interrupted(compilation_cache, tmp_path_factory):  # pylint: disable=unused-argument
  """A workdir of the RESUME run stopped abruptly after step 7 (checkpoints 3 and 6);
  tests copy it, never change it."""
  wd = str(tmp_path_factory.mktemp("interrupted"))
  with pytest.raises(loop.Interrupted):  # pylint: disable=protected-access
    groups.train_and_evaluate(resume_config(), wd, interrupt_at_step=7)
  return wd


def _copy(src, dst):
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.copytree(src, dst)
  return str(dst)


def test_resume_after_interruption_matches_uninterrupted_run(reference, interrupted,
                                                             tmp_path):
  """Interrupted after step 7 (checkpoints at 3 and 6), restarted with the same call:
  the run records that it resumed from step 6 (metrics.jsonl and summary.json), no
  step is logged twice, and the metrics file and the final summary equal those of an
  uninterrupted run exactly (same batches, λ draws and optimizer state)."""
  full, ref = reference
  assert ref["resumed_from_step"] is None and _resumes(full) == []
  wd = _copy(interrupted, tmp_path / "resumed")
  assert checkpoint_lib.Checkpointer(wd).all_steps() == [3, 6]
  assert max(r["step"] for r in writers.read_metrics(wd)) == 6  # 7 was not logged
  got = groups.train_and_evaluate(resume_config(), wd)
  assert got["resumed_from_step"] == 6 and _resumes(wd) == [6]
  assert _train_steps(wd) == list(range(1, 10))  # strictly increasing, none repeated
  assert comparable(writers.read_metrics(wd)) == comparable(writers.read_metrics(full))
  for key in ("test", "test_rescaled", "param_l1"):
    assert got[key] == ref[key]
  # Running the finished command again trains and evaluates nothing: same summary.
  mtime = os.path.getmtime(os.path.join(wd, "summary.json"))
  again = groups.train_and_evaluate(resume_config(), wd)
  assert again == read_summary(wd) and _resumes(wd) == [6]
  assert os.path.getmtime(os.path.join(wd, "summary.json")) == mtime
  assert again["test"] == ref["test"] and again["param_l1"] == ref["param_l1"]
  # An evaluation-only change re-evaluates the same weights, and says so.
  rebinned = groups.train_and_evaluate(resume_config(**{"eval.num_bins": 10}), wd)
  assert rebinned["resumed_from_step"] == 9 and _resumes(wd) == [6, 9]
  assert rebinned["config_changes"] == {"eval.num_bins": [15, 10]}
  assert rebinned["param_l1"] == ref["param_l1"]
  assert rebinned["test"]["accuracy"] == ref["test"]["accuracy"]
  assert _train_steps(wd) == list(range(1, 10))


def _truncate_arrays(workdir, step):
  """Cuts every array data file of checkpoint `step` to half its size."""
  root = os.path.join(workdir, "checkpoints", str(step), "state")
  files = [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs
           if os.path.basename(d) == "d"]
  assert files, f"no array files under {root}"
  for f in files:
    os.truncate(f, os.path.getsize(f) // 2)


def test_corrupted_newest_checkpoint_falls_back_to_the_previous_one(reference, interrupted,
                                                                    tmp_path):
  """The newest checkpoint's array files truncated: the rerun warns, restores step 3
  instead, and ends with exactly the uninterrupted run's metrics."""
  _, ref = reference
  wd = _copy(interrupted, tmp_path / "w")
  _truncate_arrays(wd, 6)
  with mock.patch.object(checkpoint_lib.logging, "warning") as warning:
    got = groups.train_and_evaluate(resume_config(), wd)
  warned = " ".join(str(c.args[0] % c.args[1:]) for c in warning.call_args_list)
  assert "step 6" in warned and "cannot be restored" in warned
  assert got["resumed_from_step"] == 3 and _resumes(wd) == [3]
  assert _train_steps(wd) == list(range(1, 10))
  for key in ("test", "test_rescaled", "param_l1"):
    assert got[key] == ref[key], key
  assert checkpoint_lib.Checkpointer(wd).all_steps() == [6, 9]  # 6 rewritten, good


def test_no_restorable_checkpoint_stops_and_names_the_folder(interrupted, tmp_path):
  """Every checkpoint unreadable, or all of another model's shapes (config.json removed,
  so only the checkpoints can tell): WorkdirError (exit 5 in main) naming the folder and
  what to do; the run never starts from scratch over them."""
  damaged = _copy(interrupted, tmp_path / "damaged")
  for step in (3, 6):
    _truncate_arrays(damaged, step)
  other = _copy(interrupted, tmp_path / "other_model")
  os.remove(os.path.join(other, "config.json"))
  for wd, config in ((damaged, resume_config()),
                     (other, resume_config(**{"model.kwargs": {"features": (8,),
                                                               "dense_sizes": (8,)}}))):
    with pytest.raises(errors.WorkdirError) as e:
      groups.train_and_evaluate(config, wd)
    msg = str(e.value)
    assert os.path.join(wd, "checkpoints") in msg and "fresh --workdir" in msg, msg
    assert "steps 6, 3" in msg and "\n" not in msg
    assert not os.path.exists(os.path.join(wd, "summary.json"))
  assert "shape" in msg  # the other model's error is named


def test_changed_config_is_refused_unless_allowed(reference, interrupted, tmp_path):
  """A finished workdir rerun with another λ law or another model: refused, listing the
  keys old -> new and saying nothing would be retrained, even with
  allow_config_change=True (the old weights would be relabelled), config.json and
  summary.json untouched, before any data is loaded. An unfinished run may continue with
  a changed config only with allow_config_change=True. A change in the allow-list (here
  log_every_steps) resumes and rewrites config.json."""
  wd = _copy(reference[0], tmp_path / "w")
  before = {f: pathlib.Path(wd, f).read_text() for f in ("config.json", "summary.json")}
  with mock.patch.object(setup.data_lib, "load_dataset",
                         side_effect=AssertionError("data loaded")):
    for allow in (False, True):
      with pytest.raises(errors.WorkdirError) as e:
        groups.train_and_evaluate(resume_config(**{"sampler.params": {"alpha": 0.2},
                                                   "allow_config_change": allow}), wd)
      msg = str(e.value)
      assert "sampler.params.alpha: 1.0 -> 0.2" in msg and "finished run" in msg, msg
      assert "Nothing would be retrained" in msg and "fresh --workdir" in msg, msg
      assert "allow_config_change=True" not in msg
    with pytest.raises(errors.WorkdirError) as e:
      groups.train_and_evaluate(resume_config(**{"model.kwargs": {"features": (8,),
                                                                "dense_sizes": (8,)}}), wd)
    assert "model.kwargs.features: [4] -> [8]" in str(e.value)
    unfinished = _copy(interrupted, tmp_path / "unfinished")
    with pytest.raises(errors.WorkdirError) as e:
      groups.train_and_evaluate(resume_config(**{"sampler.params": {"alpha": 0.2}}),
                                unfinished)
    assert "allow_config_change=True" in str(e.value) and "fresh --workdir" in str(e.value)
  assert before == {f: pathlib.Path(wd, f).read_text() for f in before}
  got = groups.train_and_evaluate(resume_config(log_every_steps=3), wd)
  assert got["resumed_from_step"] == 9 and got["test"] == reference[1]["test"]
  with open(os.path.join(wd, "config.json")) as f:
    assert json.load(f)["log_every_steps"] == 3


def test_workdir_from_before_a_new_knob_resumes_unless_the_knob_is_changed(reference,
                                                                          tmp_path):
  """A config.json written before knobs were added (here num_seeds and steps_per_call
  removed from it) is the same config when the new knobs have their defaults (the
  finished run is not trained or evaluated again; with an evaluation change it is
  re-evaluated and config.json rewritten); a new knob set to something else is a change
  like any other (num_seeds: <absent> -> 2, refused)."""
  wd = _copy(reference[0], tmp_path / "old")
  path = os.path.join(wd, "config.json")
  with open(path) as f:
    old = json.load(f)
  del old["num_seeds"], old["steps_per_call"], old["dataset"]["split_seed"]
  with open(path, "w") as f:
    json.dump(old, f)
  got = groups.train_and_evaluate(resume_config(), wd)
  assert got == reference[1]
  got = groups.train_and_evaluate(resume_config(**{"eval.num_bins": 10}), wd)
  assert got["resumed_from_step"] == 9 and got["param_l1"] == reference[1]["param_l1"]
  with open(path) as f:  # rewritten with the new knobs
    old = json.load(f)
  assert old["num_seeds"] == 1
  del old["num_seeds"]
  with open(path, "w") as f:
    json.dump(old, f)
  with pytest.raises(errors.WorkdirError, match="num_seeds"):
    groups.train_and_evaluate(resume_config(num_seeds=2), wd)


def test_saved_predictions_reproduce_the_summary(reference):
  """summary.json's test metrics recomputed from predictions.npz with plain NumPy/SciPy:
  accuracy, NLL, 15-bin ECE, Brier, and the temperature-scaled NLL/ECE with T fitted
  independently on the validation logits (both columns: plain and rescaled)."""
  from scipy import optimize, special  # pylint: disable=g-import-not-at-top
  wd, summary = reference
  with open(os.path.join(wd, "summary.json")) as f:
    assert json.load(f) == json.loads(json.dumps(summary))

  def metrics(logits, labels, t=1.0):
    logits = np.asarray(logits, np.float64) / t
    logp = special.log_softmax(logits, axis=1)
    p = np.exp(logp)
    n = labels.shape[0]
    conf, pred = p.max(1), p.argmax(1)
    correct = (pred == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, 16)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):  # bins (lo, hi]
      inside = (conf > lo) & (conf <= hi)
      if inside.any():
        ece += inside.sum() / n * abs(correct[inside].mean() - conf[inside].mean())
    onehot = np.eye(logits.shape[1])[labels]
    return {"accuracy": correct.mean(), "nll": -logp[np.arange(n), labels].mean(),
            "ece": ece, "brier": ((p - onehot) ** 2).sum(1).mean()}

  def fit_t(logits, labels):
    nll = lambda log_t: metrics(logits, labels, np.exp(log_t))["nll"]
    res = optimize.minimize_scalar(nll, bounds=(np.log(1e-2), np.log(1e2)),
                                   method="bounded", options={"xatol": 1e-8})
    return float(np.exp(res.x))

  z = np.load(os.path.join(wd, "predictions.npz"))
  assert set(z.files) == {"test_logits", "test_labels", "val_logits", "val_labels",
                          "test_logits_rescaled", "val_logits_rescaled"}
  assert z["test_logits"].shape == (1000, 10) and z["val_logits"].shape == (400, 10)
  for col, suffix in (("test", ""), ("test_rescaled", "_rescaled")):
    test, val = z["test_logits" + suffix], z["val_logits" + suffix]
    ref, ref_val = summary[col], summary[col.replace("test", "val")]
    got = metrics(test, z["test_labels"])
    for k in ("accuracy", "nll", "ece", "brier"):
      assert got[k] == pytest.approx(ref[k], rel=1e-4, abs=1e-5), (col, k)
    assert metrics(val, z["val_labels"])["accuracy"] == pytest.approx(
        ref_val["accuracy"], abs=1e-6)
    t = fit_t(val, z["val_labels"])
    assert t == pytest.approx(ref_val["temperature"], rel=1e-3)
    cal = metrics(test, z["test_labels"], t)
    assert cal["nll"] == pytest.approx(ref["nll_temp_scaled"], rel=1e-4)
    assert cal["ece"] == pytest.approx(ref["ece_temp_scaled"], abs=2e-3)


def test_nan_loss_stops_with_the_step_and_keeps_a_finite_checkpoint(tmp_path):
  config = get_config("mnist1d", num_steps=6, batch_size=64, log_every_steps=1,
                      checkpoint_every_steps=1,
                      **{"optimizer.lr": 1e38, "optimizer.warmup_epochs": 0.0,
                         "model.kwargs": {"features": (4,), "dense_sizes": (8,)},
                         "eval.every_epochs": 0})
  with pytest.raises(errors.NonFiniteLossError) as e:
    groups.train_and_evaluate(config, str(tmp_path))
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
    groups.train_and_evaluate(config, str(tmp_path))


# Runs `python -m mixjax.main` with Orbax's final commit (the rename of the finished
# temporary folder) patched to SIGKILL the process during the save of step KILL_AT: the
# array data of that checkpoint is then written but not committed.
_KILL_DURING_SAVE = """
import os, signal, sys
from absl import app
from orbax.checkpoint._src.path import atomicity
from mixjax import main as main_lib
from mixjax.train import checkpoint as checkpoint_lib
kill_at = int(os.environ["KILL_AT"])
armed = []
save = checkpoint_lib.Checkpointer.save
def patched_save(self, step, *args, **kwargs):
  armed.append(int(step) == kill_at)
  return save(self, step, *args, **kwargs)
finalize = atomicity.AtomicRenameTemporaryPath.finalize
async def patched_finalize(self, *args, **kwargs):
  if armed and armed[-1]:
    os.kill(os.getpid(), signal.SIGKILL)
  return await finalize(self, *args, **kwargs)
checkpoint_lib.Checkpointer.save = patched_save
atomicity.AtomicRenameTemporaryPath.finalize = patched_finalize
sys.argv[0] = "mixjax.main"
app.run(main_lib.main, flags_parser=main_lib.parse_flags)
"""


def test_sigkill_during_a_checkpoint_write_then_same_command_resumes_exactly(reference,
                                                                              tmp_path):
  """A real kill in the middle of writing checkpoint 6 (its arrays written, not yet
  committed): the half-written folder is left behind, and the same command run again
  resumes from checkpoint 3 and ends with exactly the uninterrupted run's summary."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  wd = tmp_path / "killed"
  args = [f"--config={os.path.join(ROOT, 'experiments', 'mnist1d.py')}",
          f"--workdir={wd}"] + RESUME_FLAGS
  env = dict(os.environ, JAX_PLATFORMS="cpu", KILL_AT="6")
  proc = subprocess.run([sys.executable, "-c", _KILL_DURING_SAVE] + args, env=env,
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == -9, proc.stderr[-3000:]
  ckpt_dir = wd / "checkpoints"
  half = [p for p in ckpt_dir.iterdir() if not p.name.isdigit()]
  assert half and any(f.parent.name == "d" for p in half for f in p.rglob("*")), half
  assert checkpoint_lib.Checkpointer(str(wd)).all_steps() == [3]
  proc = subprocess.run([sys.executable, "-m", "mixjax.main"] + args, env=env, cwd=ROOT,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  got, ref = read_summary(wd), reference[1]
  assert got["resumed_from_step"] == 3 and _resumes(str(wd)) == [3]
  assert _train_steps(str(wd)) == list(range(1, 10))
  for key in ("test", "test_rescaled", "param_l1"):
    assert got[key] == ref[key], key


def test_pooled_metrics_at_the_final_evaluation_unless_asked(tmp_path):
  """eval.pooled_every_epoch: the quick evaluations during training carry the pooled
  metrics only when asked; the final records and the summary are the same either way."""
  finals, summaries = [], []
  for pooled in (False, True):
    wd = str(tmp_path / f"pooled{pooled}")
    config = get_config("digits", num_epochs=2, batch_size=256,
                        **{"model.kwargs": {"hidden_sizes": (16,)}, **TINY,
                           "eval.pooled_every_epoch": pooled})
    summaries.append(groups.train_and_evaluate(config, wd))
    records = writers.read_metrics(wd)
    quick = [r for r in records if "test/accuracy" in r and not r.get("final")]
    assert quick and all(("test/aurc" in r) == pooled and ("test/smooth_ece" in r) == pooled
                         for r in quick)
    finals.append([r for r in records if r.get("final")])
  assert finals[0] == finals[1] and "test/aurc" in finals[0][0]
  for col in ("test", "val", "test_rescaled"):
    assert summaries[0][col] == summaries[1][col]
