"""The trainer on a streamed dataset (`dataset.streaming`): a prepared synthetic image
folder trained through `python -m mixjax.main --config=experiments/image_folder.py`
to well above chance and evaluated; a run killed with SIGKILL mid-epoch and resumed
ends bit-identical to an uninterrupted one; two processes over loopback train one run;
a `dataset.num_classes` that disagrees with the folders is one line before any compute;
"auto" keeps the registered datasets in memory."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from scipy import stats

from helpers import ROOT, comparable, get_config, one_line_error, read_summary, run_main  # pylint: disable=g-bad-import-order
from mixjax.data import image_folder
from mixjax.data import shift as shift_lib
from mixjax.train import checkpoint as checkpoint_lib
from mixjax.train import config as config_lib
from mixjax.train import groups
from mixjax.train import setup
from mixjax.train import writers

CONFIG = os.path.join(ROOT, "experiments", "image_folder.py")
NUM_CLASSES, TRAIN_PER_CLASS, TEST_PER_CLASS = 4, 40, 12
BATCH = 16
# 160 training images, 16 held out for validation (val_fraction 0.1): 144, 9 steps.
STEPS_PER_EPOCH = (NUM_CLASSES * TRAIN_PER_CLASS - 16) // BATCH


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  """A prepared synthetic image folder (JPEGs of 24–48 pixels a side, four classes of
  coloured shapes): (data_dir, name)."""
  tmp = tmp_path_factory.mktemp("image_folder")
  src = image_folder.write_synthetic(
      str(tmp / "src"), per_class={"train": TRAIN_PER_CLASS, "test": TEST_PER_CLASS},
      size_range=(24, 48))
  image_folder.prepare(src, name="shapes", data_dir=str(tmp / "out"))
  return str(tmp / "out"), "shapes"


def _args(prepared, workdir, **overrides):
  data_dir, name = prepared
  flags = {"dataset.name": name, "dataset.data_dir": data_dir, "dataset.image_size": 24,
           "dataset.num_workers": 0, "batch_size": BATCH, "num_epochs": 3,
           "log_every_steps": 3, "checkpoint_every_steps": 4, "tensorboard": False}
  flags.update(overrides)
  return ([f"--config={CONFIG}", f"--workdir={workdir}"]
          + [f"--config.{k}={v}" for k, v in flags.items()])


def _env(**extra):
  env = dict(os.environ, JAX_PLATFORMS="cpu", **extra)
  env["PYTHONPATH"] = os.pathsep.join(
      [ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
  return env


def _main(args, **kw):
  return subprocess.Popen([sys.executable, "-m", "mixjax.main", "--verbose", *args], cwd=ROOT,
                          env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, **kw)


def _finish(proc, timeout=600):
  out = proc.communicate(timeout=timeout)[0]
  assert proc.returncode == 0, out[-4000:]
  return out


@pytest.fixture(scope="module")
def uninterrupted(prepared, tmp_path_factory):
  """One run of the image-folder config, 6 epochs, streamed: its workdir."""
  workdir = str(tmp_path_factory.mktemp("full") / "run")
  _finish(_main(_args(prepared, workdir, num_epochs=6)))
  return workdir


def test_an_image_folder_trains_well_above_chance(uninterrupted):
  """Four classes: chance is 25%. With 48 test images, a classifier at chance scores at
  least k/48 with probability below 1e-6 for k = binom.isf(1e-6, 48, 1/4) + 1; the
  trained model must reach that (and does: the classes differ in colour)."""
  summary = read_summary(uninterrupted)
  n_test = NUM_CLASSES * TEST_PER_CLASS
  bound = (stats.binom.isf(1e-6, n_test, 1 / NUM_CLASSES) + 1) / n_test
  assert bound < 0.7
  assert summary["status"] == "ok" and summary["step"] == 6 * STEPS_PER_EPOCH
  assert summary["test"]["accuracy"] >= bound, summary["test"]
  assert summary["test_rescaled"]["accuracy"] >= bound, summary["test_rescaled"]
  assert "temperature" in summary["val"]  # the held-out validation part, streamed
  # The quick evaluations of every epoch, streamed too.
  records = writers.read_metrics(uninterrupted)
  quick = [r["step"] for r in records if "test/accuracy" in r and not r.get("final")]
  assert quick == [STEPS_PER_EPOCH * e for e in range(1, 6)]
  # The predictions are of every test image once, with its label.
  with np.load(os.path.join(uninterrupted, writers.PREDICTIONS_FILE)) as z:
    assert z["test_logits"].shape == (n_test, NUM_CLASSES)
    assert np.bincount(z["test_labels"], minlength=NUM_CLASSES).tolist() == [
        TEST_PER_CLASS] * NUM_CLASSES
  # The rescaling statistics: one epoch's means, cached for a resume.
  with np.load(os.path.join(uninterrupted, setup.STATS_FILE)) as z:
    assert int(z["n"]) == STEPS_PER_EPOCH * BATCH
    np.testing.assert_allclose(z["y_mean"].sum(), 1.0, rtol=1e-12)
    assert z["x_mean"].shape == (24 * 24 * 3,)


def _params(workdir, step):
  with checkpoint_lib.Checkpointer(workdir) as ckpt:
    state, meta = ckpt.restore(step)
  return state["params"], meta


def test_kill_mid_epoch_and_resume_is_bit_identical(prepared, uninterrupted, tmp_path):
  """SIGKILL as soon as a checkpoint is on disk (mid-epoch: every 4 steps, 9 per epoch),
  then the same command again: the params, the predictions, the summary and the metric
  log equal the uninterrupted run's exactly, and the checkpoint holds the loader's
  position."""
  workdir = str(tmp_path / "run")
  args = _args(prepared, workdir, num_epochs=6)
  proc = _main(args)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  deadline = time.time() + 600
  while time.time() < deadline and proc.poll() is None:
    if os.path.isdir(ckpt_dir) and any(d.isdigit() for d in os.listdir(ckpt_dir)):
      break
    time.sleep(0.02)
  assert proc.poll() is None, "the run ended before it could be killed"
  proc.send_signal(signal.SIGKILL)
  proc.communicate()
  assert not os.path.exists(os.path.join(workdir, "summary.json"))
  with checkpoint_lib.Checkpointer(workdir) as ckpt:
    killed_at = ckpt.latest_step()
    meta = ckpt.metadata(killed_at)
  assert killed_at % STEPS_PER_EPOCH != 0  # mid-epoch
  assert meta["input"]["step"] == killed_at and meta["input"]["batch_size"] == BATCH
  assert meta["input"]["num_examples"] == STEPS_PER_EPOCH * BATCH

  out = _finish(_main(args))
  assert f"Streaming the training split from step {killed_at} " in out
  assert "Loaded data statistics from" in out  # x̄, ȳ not recomputed
  got, want = read_summary(workdir), read_summary(uninterrupted)
  assert got["resumed_from_step"] == killed_at
  drop = ("train_time_s", "resumed_from_step")
  assert ({k: v for k, v in got.items() if k not in drop}
          == {k: v for k, v in want.items() if k not in drop})
  assert comparable(writers.read_metrics(workdir)) == comparable(
      writers.read_metrics(uninterrupted))
  with np.load(os.path.join(workdir, writers.PREDICTIONS_FILE)) as a, np.load(
      os.path.join(uninterrupted, writers.PREDICTIONS_FILE)) as b:
    assert sorted(a.files) == sorted(b.files)
    for k in a.files:
      np.testing.assert_array_equal(a[k], b[k])
  final = 6 * STEPS_PER_EPOCH
  (pa, ma), (pb, mb) = _params(workdir, final), _params(uninterrupted, final)
  assert ma == mb
  flat = lambda t: {jax.tree_util.keystr(k): np.asarray(v)
                    for k, v in jax.tree_util.tree_flatten_with_path(t)[0]}
  fa, fb = flat(pa), flat(pb)
  assert fa.keys() == fb.keys()
  for k in fa:
    assert fa[k].tobytes() == fb[k].tobytes(), k


def test_k_steps_per_call_take_the_same_steps(prepared, uninterrupted, tmp_path):
  """k = 4 steps per dispatch (4 streamed batches stacked per call) against the
  uninterrupted run's k = 1: the logged losses at the same steps and the final
  parameters to float tolerance (the scanned program rounds its own way)."""
  data_dir, name = prepared
  config = get_config("image_folder", **{
      "dataset.name": name, "dataset.data_dir": data_dir, "dataset.image_size": 24,
      "dataset.num_workers": 0, "batch_size": BATCH, "num_epochs": 6,
      "log_every_steps": 3, "checkpoint_every_steps": 4, "tensorboard": False,
      "steps_per_call": 4})
  summary = groups.train_and_evaluate(config, str(tmp_path / "k4"))
  losses = lambda d: [(r["step"], r["train/loss"]) for r in writers.read_metrics(str(d))
                      if "train/loss" in r]
  got, want = losses(tmp_path / "k4"), losses(uninterrupted)
  assert [s for s, _ in got] == [s for s, _ in want]
  np.testing.assert_allclose([l for _, l in got], [l for _, l in want], rtol=1e-4)
  assert summary["param_l1"] == pytest.approx(read_summary(uninterrupted)["param_l1"],
                                              rel=1e-4)


def test_a_checkpoint_of_another_stream_is_refused(prepared, uninterrupted, tmp_path,
                                                   capsys, monkeypatch):
  """Resuming the finished run's last checkpoint with another batch size (allowed by
  --config.allow_config_change) is refused in one line: its input position belongs to
  another stream."""
  import shutil  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / "run"
  shutil.copytree(uninterrupted, workdir)
  os.remove(workdir / "summary.json")
  with pytest.raises(SystemExit) as e:
    run_main(_args(prepared, workdir, num_epochs=6, batch_size=8,
                   allow_config_change=True), monkeypatch)
  err = capsys.readouterr().err
  lines = [l for l in err.splitlines() if l.strip()]
  # The changed config the user allowed is a warning; the refusal is one line after it.
  assert len(lines) <= 2 and "Traceback" not in err, err
  line = lines[-1]
  assert e.value.code == 5
  assert "batch_size: 16 then, 8 now" in line and "fresh --workdir" in line, line


def test_num_classes_that_disagrees_is_one_line_before_compute(prepared, tmp_path,
                                                               capsys, monkeypatch):
  workdir = tmp_path / "run"
  with pytest.raises(SystemExit) as e:
    run_main(_args(prepared, workdir, **{"dataset.num_classes": 10}), monkeypatch)
  assert e.value.code == 2
  line = one_line_error(capsys)
  assert line.startswith("Invalid config: config.dataset.num_classes=10 but dataset "
                         "'shapes' has 4 classes"), line
  assert "blue_triangle" in line
  assert not os.path.exists(workdir / "checkpoints")
  assert not os.path.exists(workdir / setup.STATS_FILE)


def _as_shift_config(data_dir, name, shift_name, config):
  """Copies the prepared dataset `name` as config `config` of a tfds dataset
  `shift_name` in `data_dir` (the layout `tfds build` gives ImageNet-C's configs:
  `data_dir/<name>/<config>/<version>/`, files named by the dataset)."""
  (version,) = os.listdir(os.path.join(data_dir, name))
  dst = os.path.join(data_dir, shift_name, config, version)
  shutil.copytree(os.path.join(data_dir, name, version), dst)
  for f in os.listdir(dst):
    if f.startswith(f"{name}-"):
      os.rename(os.path.join(dst, f), os.path.join(dst, shift_name + f[len(name):]))
  info_path = os.path.join(dst, "dataset_info.json")
  with open(info_path) as f:
    info = json.load(f)
  info.update(name=shift_name, configName=config)
  with open(info_path, "w") as f:
    json.dump(info, f)
  return version


def test_a_streamed_shifted_set_is_evaluated(prepared, tmp_path, monkeypatch):
  """`eval.shift` with a streamed shifted dataset (how ImageNet-C and ImageNetV2 are
  read): here the test split copied as config "a" of a tfds dataset `shapes_shift`.
  The final evaluation reports it with the clean test split's numbers exactly (the
  same images, normalized like the clean dataset), and predictions.npz holds its
  logits and its labels."""
  data_dir, name = prepared
  data_dir = shutil.copytree(data_dir, tmp_path / "data")
  version = _as_shift_config(str(data_dir), name, "shapes_shift", "a")
  monkeypatch.setitem(shift_lib.SHIFT_DATASETS, "shapes_shift", shift_lib.ShiftDataset(
      name="shapes_shift", clean=name, configs=("a",), version=version, streamed=True))
  workdir = tmp_path / "run"
  run_main(_args((str(data_dir), name), workdir, num_epochs=1,
                 **{"eval.shift": '("shapes_shift",)'}), monkeypatch)
  summary = read_summary(workdir)
  assert summary["status"] == "ok"
  for suffix in ("", "_rescaled"):
    shifted, test = summary["shift" + suffix]["a"], summary["test" + suffix]
    for k in ("accuracy", "nll", "ece", "brier"):
      assert shifted[k] == test[k], (suffix, k)
  with np.load(workdir / writers.PREDICTIONS_FILE) as preds:
    np.testing.assert_array_equal(preds["shift_a_logits"], preds["test_logits"])
    np.testing.assert_array_equal(preds["shift_a_labels"], preds["test_labels"])
    assert preds["shift_a_labels"].shape == (NUM_CLASSES * TEST_PER_CLASS,)


def test_auto_keeps_registered_datasets_in_memory(prepared):
  """"auto" streams the image folder (variable-size images, no in-memory loader) and no
  registered dataset; True / False force it."""
  data_dir, name = prepared
  config = config_lib.base_config()
  config.dataset.data_dir = data_dir
  for dataset in ("mnist1d", "digits", "two_moons", "fashion_mnist", "cifar10"):
    config.dataset.name = dataset
    assert not setup.use_streaming(config), dataset
  config.dataset.name = name
  assert setup.use_streaming(config)
  config.dataset.streaming = False
  assert not setup.use_streaming(config)
  config.dataset.name = "mnist1d"
  config.dataset.streaming = True
  assert setup.use_streaming(config)


@pytest.mark.slow
def test_two_processes_over_loopback_train_one_run(prepared, tmp_path):
  """`--jax_distributed` on localhost, two processes of two CPU devices each: each feeds
  its half of every batch (`TrainStream` rows [p·b, (p+1)·b), tests/test_streaming.py
  checks they are disjoint and together the epoch); both finish the same run (equal
  parameters and test metrics), with the steps of one epoch of the whole split."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  workdir = str(tmp_path / "run")
  env = _env()
  env.pop("XLA_FLAGS", None)
  procs = [subprocess.Popen(
      [sys.executable, "-m", "mixjax.main", *_args(prepared, workdir, num_epochs=1),
       "--jax_distributed", f"--coordinator_address=127.0.0.1:{port}",
       "--num_processes=2", f"--process_id={p}", "--num_cpu_devices=2"],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for p in range(2)]
  logs = [p.communicate(timeout=600)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], "\n".join(l[-3000:] for l in logs)
  s0 = read_summary(workdir)
  with open(os.path.join(workdir, "summary.process_1.json")) as f:
    s1 = json.load(f)
  assert (s0["process_count"], s1["process_index"]) == (2, 1)
  assert s0["num_devices"] == 4 and s0["step"] == STEPS_PER_EPOCH
  assert s0["param_l1"] == s1["param_l1"]
  assert s0["test"] == s1["test"]
