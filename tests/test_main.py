"""mixjax/main.py and validate_config: bad input fails fast (before anything is loaded or
compiled) with the valid choices in the message; a good command line runs end to end
with `--config.key=value` overrides and writes config.json / summary.json."""
from __future__ import annotations

import json
import os
import sys

from absl import flags
import pytest

from mixjax import main as main_lib
from conftest import one_line_error, run_main  # pylint: disable=g-bad-import-order
from mixjax import train
from mixjax.train import config as config_lib
from mixjax import errors
from mixjax.train import sweeps
from mixjax.train import workdir as workdir_lib
from mixjax.train import validate
from mixjax.train import groups
from mixjax.train import loop
from mixjax.train import setup
from mixjax.train import writers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MNIST1D = os.path.join(ROOT, "experiments", "mnist1d.py")


def _config(**overrides):
  return sweeps.sweep_config(config_lib.base_config(), overrides)


# (overrides, words the message must contain)
BAD = [
    ({"model.name": "resnet7"}, ["resnet7", "mlp", "lenet", "preact_resnet18"]),
    ({"dataset.name": "imagenet21k"}, ["imagenet21k", "mnist1d", "cifar10", "two_moons"]),
    ({"method.name": "cutmix"}, ["cutmix", "erm", "mixup", "regmixup", "perturbed_erm",
                                 "erm_transformed", "approx"]),
    ({"sampler.name": "gamma"}, ["gamma", "beta", "w_shaped", "optimal"]),
    ({"method.loss": "hinge"}, ["hinge", "cross_entropy", "squared"]),
    ({"sampler.params": {"alpha": 0.0}}, ["alpha"]),
    ({"sampler.params": {"alpha": -1.0}}, ["alpha"]),
    ({"sampler.params": {"lam": 0.5}}, ["alpha", "lam"]),
    ({"batch_size": 130}, ["batch_size", "130", "4"]),
    ({"optimizer.lr": 0.0}, ["optimizer.lr"]),
    ({"optimizer.lr": -0.1}, ["optimizer.lr"]),
    ({"optimizer.name": "lbfgs"}, ["lbfgs", "sgd", "adam"]),
    ({"optimizer.schedule": "linear"}, ["linear", "constant", "piecewise", "cosine"]),
    ({"num_epochs": 0}, ["num_epochs"]),
    ({"num_epochs": -3}, ["num_epochs"]),
    ({"dataset.val_fraction": 1.0}, ["val_fraction"]),
    ({"mixing.granularity": "pixel"}, ["pixel", "example", "batch"]),
    ({"mixing.pairing": "random"}, ["random", "permutation", "reverse"]),
    ({"method.name": "approx", "method.estimator": "sketch"},
     ["sketch", "exact", "lowrank", "stochastic"]),
    ({"method.name": "approx", "method.terms": ("jacobian", "curvature")},
     ["curvature", "hessian", "label"]),
    ({"method.name": "approx", "method.estimator": "lowrank"}, ["stats.rank"]),
    ({"optimizer.momentum": 1.0}, ["momentum"]),
    ({"method.eta": -1.0}, ["eta"]),
    ({"batch_size": 100000}, ["batch_size=100000", "3600", "mnist1d", "<= 3600"]),
    ({"model.name": "lenet", "model.kwargs": {"hidden_sizes": (17,)}},
     ["model.kwargs", "hidden_sizes", "'lenet'", "features", "dense_sizes",
      "--config.model.kwargs="]),
    ({"dataset.name": "two_moons", "dataset.kwargs": {"n_samples": 100},
      "batch_size": 48}, ["batch_size=48", "45"]),
]


@pytest.mark.parametrize("overrides,words", BAD, ids=[str(o) for o, _ in BAD])
def test_validate_config_names_the_problem_and_the_choices(overrides, words):
  with pytest.raises(errors.ConfigError) as e:
    validate.validate_config(_config(**overrides), num_devices=4)
  for w in words:
    assert w in str(e.value), (w, str(e.value))
  assert "\n" not in str(e.value)


def test_good_config_validates():
  validate.validate_config(config_lib.base_config(), num_devices=4)


@pytest.fixture(scope="module")
def bad_configs(tmp_path_factory):
  d = tmp_path_factory.mktemp("configs")
  (d / "syntax.py").write_text("def get_config(:\n")
  (d / "raises.py").write_text("def get_config():\n  raise ValueError('no such preset')\n")
  (d / "none.py").write_text("def get_config():\n  pass\n")
  return d


# (argv after --config, words of the message); every one exits 2 while parsing flags.
BAD_FLAGS = [
    (["--config=experiments/no_such_file.py"],
     ["--config=experiments/no_such_file.py", "no such file", "mnist1d.py", "cifar10.py",
      "looked in /", "relative to the current directory"]),
    (["--config=experiments/mnist1d.py", "--config.nosuchkey=1"],
     ["--config.nosuchkey=1", "'nosuchkey'", "batch_size", "optimizer", "seed",
      "mixjax/train/config.py"]),
    (["--config=experiments/mnist1d.py", "--config.optimizer.lrr=0.1"],
     ["config.optimizer has no key 'lrr'", "Did you mean 'lr'?", "momentum"]),
    (["--config=experiments/mnist1d.py", "--config.sampler.params.alpah=0.2"],
     ["'alpah'", "Did you mean 'alpha'?",
      "--config.sampler.params='{\"alpah\": 0.2}'"]),
    (["--config=experiments/mnist1d.py", "--config.batch_size=abc"],
     ["--config.batch_size=abc", "int", "128"]),
    (["--config=experiments/mnist1d.py", "--config.model.kwargs=[4]"],
     ["--config.model.kwargs", "dict literal"]),
    (["--config={d}/syntax.py"], ["syntax.py", "line 1", "Fix the file"]),
    (["--config={d}/raises.py"], ["raises.py", "get_config() raised", "ValueError",
                                  "no such preset"]),
    (["--config={d}/none.py"], ["none.py", "returned NoneType"]),
    (["--config=experiments/mnist1d.py", "--no_such_flag=3"],
     ["no_such_flag", "--helpfull"]),
]


@pytest.mark.parametrize("argv,words", BAD_FLAGS, ids=[" ".join(a) for a, _ in BAD_FLAGS])
def test_bad_flags_exit_2_with_one_line(argv, words, bad_configs, monkeypatch, capsys,
                                        tmp_path):
  """A missing / unparsable / raising config file, an unknown or mistyped override and
  an unknown flag stop in `main.parse_flags` (app.run's flags parser): exit 2, one line
  naming the flag, the value and the choices, no traceback."""
  monkeypatch.chdir(ROOT)
  argv = ["mixjax.main"] + [a.format(d=bad_configs) for a in argv] + [
      f"--workdir={tmp_path}"]
  monkeypatch.setattr(sys, "argv", argv)
  flags.FLAGS.unparse_flags()
  for name in list(flags.FLAGS):
    if name.startswith("config."):
      delattr(flags.FLAGS, name)
  with pytest.raises(SystemExit) as e:
    main_lib.parse_flags(argv)
  assert e.value.code == 2
  line = one_line_error(capsys)
  for w in words:
    assert w in line, (w, line)
  assert not os.listdir(tmp_path)


def test_debug_flag_shows_the_traceback(monkeypatch, capsys, tmp_path):
  argv = ["mixjax.main", f"--config={MNIST1D}", f"--workdir={tmp_path}",
          "--config.nosuchkey=1", "--verbose"]
  monkeypatch.setattr(sys, "argv", argv)
  flags.FLAGS.unparse_flags()
  with pytest.raises(SystemExit) as e:
    main_lib.parse_flags(argv)
  err = capsys.readouterr().err
  assert e.value.code == 2 and "Traceback" in err and "'nosuchkey'" in err


def test_cli_unknown_key_one_line_no_traceback(tmp_path):
  """The real command line (app.run wiring): one line on stderr, exit code 2."""
  import subprocess  # pylint: disable=g-import-not-at-top
  proc = subprocess.run(
      [sys.executable, "-m", "mixjax.main", f"--config={MNIST1D}",
       f"--workdir={tmp_path / 'w'}", "--config.nosuchkey=1"],
      cwd=ROOT, capture_output=True, text=True, timeout=120,
      env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 2, proc.stderr
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and "'nosuchkey'" in lines[0] and "batch_size" in lines[0], (
      proc.stderr)
  assert not (tmp_path / "w").exists()


def test_main_rejects_bad_input_before_training(tmp_path, monkeypatch, capsys):
  """Exit code 2 with the message, no config.json, and train_and_evaluate (where data
  loading and every compilation happen) never entered."""
  def fail(*a, **k):
    raise AssertionError("train_and_evaluate must not be reached with a bad config")
  monkeypatch.setattr(train, "train_and_evaluate", fail)
  monkeypatch.setattr(groups, "train_and_evaluate", fail)
  for flag, word in (("--config.model.name=resnet7", "preact_resnet18"),
                     ("--config.sampler.params={\"alpha\": -2.0}", "alpha"),
                     ("--config.batch_size=130", "divisible"),
                     ("--config.batch_size=100000", "<= 3600"),
                     ('--config.model.kwargs={"hidden_sizes": [17]}', "dense_sizes")):
    with pytest.raises(SystemExit) as e:
      run_main([f"--config={MNIST1D}", f"--workdir={tmp_path}", flag], monkeypatch)
    assert e.value.code == 2
    assert word in one_line_error(capsys)
    assert not os.path.exists(tmp_path / "config.json")
  # A workdir that cannot be created (under a regular file): exit 5, naming it.
  blocker = tmp_path / "file"
  blocker.write_text("")
  with pytest.raises(SystemExit) as e:
    run_main([f"--config={MNIST1D}", f"--workdir={blocker / 'run'}"], monkeypatch)
  assert e.value.code == 5
  assert f"--workdir={blocker / 'run'}" in one_line_error(capsys)


@pytest.mark.parametrize("finished", [True, False], ids=["finished", "unfinished"])
def test_main_refuses_a_workdir_started_with_another_config(finished, tmp_path, monkeypatch,
                                                            capsys):
  """A workdir whose run was made with α = 1, rerun with α = 0.2: exit 5 before any data
  is loaded, one line listing the key old -> new and the way out; config.json is not
  overwritten. A finished run (a summary) is refused even with allow_config_change=True:
  nothing would be retrained, so its results would only be relabelled; an unfinished
  one (a checkpoint) names allow_config_change=True as the way to continue it."""
  module = sweeps.load_config_module(MNIST1D)
  (tmp_path / "config.json").write_text(workdir_lib.config_to_json(module.get_config()))
  if finished:
    (tmp_path / "summary.json").write_text("{}")
  else:
    (tmp_path / "checkpoints" / "3").mkdir(parents=True)
  before = (tmp_path / "config.json").read_text()
  monkeypatch.setattr(setup.data_lib, "load_dataset",
                      lambda *a, **k: pytest.fail("data loaded"))
  flags_ = [f"--config={MNIST1D}", f"--workdir={tmp_path}",
            '--config.sampler.params={"alpha": 0.2}']
  for extra in ([], ["--config.allow_config_change=True"]) if finished else ([],):
    with pytest.raises(SystemExit) as e:
      run_main(flags_ + extra, monkeypatch)
    assert e.value.code == 5
    line = one_line_error(capsys)
    assert "sampler.params.alpha: 1.0 -> 0.2" in line and "fresh --workdir" in line
    assert ("--config.allow_config_change=True" in line) == (not finished), line
    assert ("Nothing would be retrained" in line) == finished, line
  assert (tmp_path / "config.json").read_text() == before


def test_main_runs_with_overrides(tmp_path, capsys, monkeypatch):
  """The mnist1d config end to end at tiny size through the real flag parsing."""
  run_main([f"--config={MNIST1D}", f"--workdir={tmp_path}", "--config.num_steps=4",
             "--config.batch_size=64", "--config.log_every_steps=2",
             "--config.eval.every_epochs=0", "--config.method.name=regmixup",
             "--config.sampler.params={\"alpha\": 2.0}", "--config.dataset.label_noise=0.3",
             "--config.model.kwargs={\"features\": [4], \"dense_sizes\": [8]}"],
            monkeypatch)
  saved = json.loads((tmp_path / "config.json").read_text())
  assert saved["method"]["name"] == "regmixup"
  assert saved["sampler"]["params"] == {"alpha": 2.0}
  assert saved["num_steps"] == 4
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert summary["step"] == 4 and summary["method"] == "regmixup"
  for col in ("test", "test_rescaled"):
    assert 0.0 <= summary[col]["accuracy"] <= 1.0
    assert summary[col]["nll"] > 0 and 0 <= summary[col]["ece"] <= 1
  # RegMixup's effective θ-law: atom at 1 w.p. 1/2, folded Beta(2,2) (θ̄ = 0.6875) w.p. 1/2.
  assert summary["theta_bar"] == pytest.approx(0.5 * 1.0 + 0.5 * 0.6875, abs=1e-6)
  out = capsys.readouterr().out
  assert "Final evaluation of seed 0" in out and "accuracy" in out
  # The names of the outputs: the summary's columns, the final metrics.jsonl record.
  assert set(summary) >= {"test", "val", "test_rescaled", "val_rescaled"}
  assert set(summary["val"]) == {"accuracy", "temperature"}
  assert "temperature" not in summary["test"] and "val_accuracy" not in summary["test"]
  assert summary["sampler"] == {"name": "beta", "params": {"alpha": 2.0},
                                "label": "Beta(2)"}
  final = [r for r in writers.read_metrics(str(tmp_path)) if r.get("final")]
  assert len(final) == 1 and final[0]["step"] == 4
  assert final[0]["test/accuracy"] == summary["test"]["accuracy"]
  assert final[0]["val_rescaled/temperature"] == summary["val_rescaled"]["temperature"]
  # Label noise on the training split: 30% of 3600 labels flipped (4 binomial sds).
  noise = summary["label_noise"]
  assert noise["rate"] == 0.3 and noise["num_train"] == 3600
  assert abs(noise["flipped"] / 3600 - 0.3) < 4 * (0.21 / 3600) ** 0.5


def test_main_missing_tfds_data_exits_fast_with_instructions(tmp_path, monkeypatch, capsys):
  """CIFAR-10 with an empty data_dir: exit code 4 within seconds, the message says how to
  prepare the data (`tfds build ... --file_format=array_record`) and which flag to pass."""
  import time  # pylint: disable=g-import-not-at-top
  cifar = os.path.join(os.path.dirname(MNIST1D), "cifar10.py")
  empty = tmp_path / "tfds"
  empty.mkdir()
  start = time.monotonic()
  with pytest.raises(SystemExit) as e:
    run_main([f"--config={cifar}", f"--workdir={tmp_path / 'w'}",
               f"--config.dataset.data_dir={empty}"], monkeypatch)
  assert time.monotonic() - start < 30
  assert e.value.code == 4
  err = capsys.readouterr().err
  assert "tfds build cifar10" in err and "--config.dataset.data_dir=" in err


def test_compilation_cache_flag_keeps_programs_and_changes_no_number(tmp_path,
                                                                     run_main_cli):
  """--compilation_cache_dir: the first run writes compiled programs there, a rerun of
  the same command (fresh workdir) loads them and reports the same numbers."""
  cache = tmp_path / "cache"
  args = [f"--config={MNIST1D}", "--config.num_steps=4", "--config.batch_size=64",
          "--config.eval.every_epochs=0", f"--compilation_cache_dir={cache}",
          "--config.model.kwargs={\"features\": [4], \"dense_sizes\": [8]}"]
  first = run_main_cli(*args, f"--workdir={tmp_path / 'a'}", timeout=300)
  assert first.returncode == 0, first.stderr[-2000:]
  assert f"Compilation cache: {cache}." in first.stderr
  entries = set(os.listdir(cache))
  assert entries  # the train step, init and evaluation programs
  second = run_main_cli(*args, f"--workdir={tmp_path / 'b'}", timeout=300)
  assert second.returncode == 0, second.stderr[-2000:]
  assert set(os.listdir(cache)) >= entries
  a, b = (json.loads((tmp_path / w / "summary.json").read_text()) for w in "ab")
  for col in ("test", "val", "test_rescaled"):
    assert a[col] == b[col]
  assert a["param_l1"] == b["param_l1"]


def test_compilation_cache_respects_a_dir_already_set(tmp_path):
  import jax  # pylint: disable=g-import-not-at-top
  names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
  old = {n: getattr(jax.config, n) for n in names}
  try:
    jax.config.update("jax_compilation_cache_dir", None)
    assert main_lib.use_compilation_cache("") is None
    assert not jax.config.jax_compilation_cache_dir
    assert main_lib.use_compilation_cache(str(tmp_path / "a")) == str(tmp_path / "a")
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "a")
    assert main_lib.use_compilation_cache(str(tmp_path / "b")) == str(tmp_path / "a")
  finally:
    for n, v in old.items():
      jax.config.update(n, v)
