"""mixjax/main.py and validate_config: bad input fails fast (before anything is loaded or
compiled) with the valid choices in the message; a good command line runs end to end
with `--config.key=value` overrides and writes config.json / summary.json."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from absl import flags
import pytest

from mixjax import main as main_lib
from helpers import make_arrays, one_line_error, run_main, write_source  # pylint: disable=g-bad-import-order
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
    ({"model.dtype": "float16"}, ["model.dtype='float16'", "'float32'", "'bfloat16'"]),
    ({"model.dtype": "bfloat16", "model.kwargs": {"dtype": "bfloat16"}},
     ["model.kwargs", "--config.model.dtype=bfloat16", "no dtype in model.kwargs"]),
]


@pytest.mark.parametrize("overrides,words", BAD, ids=[str(o) for o, _ in BAD])
def test_validate_config_names_the_problem_and_the_choices(overrides, words):
  with pytest.raises(errors.ConfigError) as e:
    validate.validate_config(_config(**overrides), num_devices=4)
  for w in words:
    assert w in str(e.value), (w, str(e.value))
  assert "\n" not in str(e.value)


def test_good_config_validates():
  """The base config and the main job's pass, unchanged (validation reads, never
  writes); the main job with one impossible value does not (the check is live)."""
  main_job = sweeps.load_config_module(MNIST1D).get_config()
  for config in (config_lib.base_config(), main_job):
    before = config.to_json()
    assert validate.validate_config(config, num_devices=4) is None
    assert config.to_json() == before
  with pytest.raises(errors.ConfigError, match="optimizer.lr"):
    validate.validate_config(sweeps.sweep_config(main_job, {"optimizer.lr": -1.0}),
                             num_devices=4)


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
     ["sampler 'beta' has no parameter 'alpah'", "(did you mean 'alpha'?)",
      "beta takes alpha, beta=None",
      "--config.sampler.params='{\"alpha\": <value>}'"]),
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
  err = one_line_error(capsys)
  assert "tfds build cifar10" in err and "--config.dataset.data_dir=" in err


# ---------------------------------------------------------------------------
# Your own law: --config.sampler.name=MODULE:FACTORY (docs/add_a_law.md).
# ---------------------------------------------------------------------------
def _truncnorm_moments(mu, sigma):
  """θ̄ and σ² of Normal(mu, sigma²) truncated to [½, 1] (scipy.stats), the reference of
  the `user_law_dir` fixture's `trunc_normal`."""
  from scipy import stats  # pylint: disable=g-import-not-at-top
  law = stats.truncnorm((0.5 - mu) / sigma, (1.0 - mu) / sigma, loc=mu, scale=sigma)
  return float(law.mean()), float(law.var())


# (factory in mylaw.py, params, words of the one-line message)
BAD_LAWS = [
    ("nope.py:trunc_normal", {}, ["no such file", "nope.py"]),
    ("no_such_module_xyz:f", {}, ["no module named 'no_such_module_xyz'"]),
    ("mylaw.py:trunc_norml", {}, ["no attribute 'trunc_norml'",
                                  "Did you mean 'trunc_normal'?"]),
    ("mylaw.py:NOT_CALLABLE", {}, ["is a int, not a factory"]),
    ("mylaw.py:raises", {}, ["raises(", "raised RuntimeError: no law today"]),
    ("mylaw.py:not_a_law", {}, ["returned float, not a law", "samplers.from_fn"]),
    ("mylaw.py:out_of_range", {}, [r"outside [0, 1]", "jnp.clip"]),
    ("mylaw.py:wrong_shape", {}, ["returned shape (3,)", "exactly `shape`"]),
    ("mylaw.py:wrong_moments", {"mu": 0.8}, ["do not match its draws", "max(λ, 1 − λ)"]),
    ("mylaw.py:trunc_normal", {"mu": 0.8, "sigmaa": 0.1},
     ["'sigmaa'", "takes mu=0.75, sigma=0.1",
      "--config.sampler.params='{\"mu\": <value>, \"sigma\": <value>}'"]),
]


@pytest.mark.parametrize("name,params,words", BAD_LAWS, ids=[b[0] for b in BAD_LAWS])
def test_bad_user_law_is_one_line(name, params, words, user_law_dir):
  """Each way a MODULE:FACTORY can be wrong: no such file or module, no such attribute,
  not callable, the factory raises, returns no law, a law whose draws leave [0, 1] or
  have the wrong shape, wrong given moments, parameters the factory does not take."""
  if name.startswith("mylaw.py") or name.startswith("nope.py"):
    name = f"{user_law_dir}/{name}"
  with pytest.raises(errors.ConfigError) as e:
    validate.validate_config(_config(**{"sampler.name": name, "sampler.params": params}),
                             num_devices=4)
  msg = str(e.value)
  assert "\n" not in msg and "config.sampler." in msg, msg
  for w in words:
    assert w in msg, (w, msg)


def test_law_parameter_hints_name_the_laws_own_parameters():
  """A parameter the law does not take: the message says what it takes, from its
  signature, and how to set them (not the user's typo back)."""
  with pytest.raises(errors.ConfigError) as e:
    validate.validate_config(_config(**{"sampler.params": {"alpah": 1.0}}), num_devices=4)
  assert "beta takes alpha, beta=None" in str(e.value), str(e.value)
  assert "--config.sampler.params='{\"alpha\": <value>}'" in str(e.value)
  assert validate.sampler_params_hint("w_shaped") == (
      "w_shaped takes a, b=None: set them with --config.sampler.params='{\"a\": <value>}'")
  assert validate.sampler_params_hint("optimal").startswith("optimal takes no parameters")


def test_cli_misspelled_law_parameter_names_the_laws_parameters(run_main_cli, tmp_path):
  proc = run_main_cli(f"--config={MNIST1D}", f"--workdir={tmp_path / 'w'}",
                      "--config.sampler.params.alpah=1")
  assert proc.returncode == 2, proc.stderr
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and "beta takes alpha" in lines[0], proc.stderr
  assert "alpah\": 1" not in lines[0], lines[0]


def test_cli_bad_user_law_exits_2_with_one_line_before_any_output(run_main_cli,
                                                                   user_law_dir, tmp_path):
  proc = run_main_cli(f"--config={MNIST1D}", f"--workdir={tmp_path / 'w'}",
                      "--config.sampler.name=laws/mylaw.py:trunc_norml",
                      cwd=str(user_law_dir.parent))
  assert proc.returncode == 2, proc.stderr
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
  assert "Did you mean 'trunc_normal'?" in lines[0] and not proc.stdout.strip()
  assert not (tmp_path / "w").exists()


def test_user_law_points_group_into_one_vmapped_program(user_law_dir):
  """Sweep points of one user factory that differ in its parameters share a group (one
  sampler structure), as Beta(α) points do; its Monte-Carlo variant (no moment leaves)
  and a built-in law are groups of their own."""
  name = f"{user_law_dir}/mylaw.py:trunc_normal"
  points = [(f"p{mu}", _config(**{"sampler.name": name,
                                  "sampler.params": {"mu": mu, "sigma": 0.1}}))
            for mu in (0.7, 0.8, 0.9)]
  points += [("mc", _config(**{"sampler.name": f"{user_law_dir}/mylaw.py:trunc_normal_mc",
                               "sampler.params": {"mu": 0.8}})), ("beta", _config())]
  assert sweeps.law_groups(points) == [[0, 1, 2], [3], [4]]


USER_LAW_FLAGS = ['--config.sampler.params={"mu": 0.8, "sigma": 0.1}',
                  "--config.num_steps=4", "--config.batch_size=64",
                  "--config.checkpoint_every_steps=2", "--config.eval.every_epochs=0",
                  '--config.model.kwargs={"features": [4], "dense_sizes": [8]}']


@pytest.mark.slow
def test_cli_trains_a_law_from_a_file_outside_the_repository(run_main_cli, user_law_dir,
                                                             tmp_path, monkeypatch):
  """`python -m mixjax.main --config.sampler.name=laws/mylaw.py:trunc_normal` in a
  temporary working directory: it trains, its summary records the law and the exact θ̄
  its factory computed (scipy's), the final table shows it. A run of the same config
  from config.json (a new process would rebuild the law from its name there), stopped
  after step 3 and resumed from checkpoint 2, ends with the same summary."""
  cwd = user_law_dir.parent
  proc = run_main_cli(f"--config={MNIST1D}", "--workdir=run",
                      "--config.sampler.name=laws/mylaw.py:trunc_normal", *USER_LAW_FLAGS,
                      cwd=str(cwd), timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = json.loads((cwd / "run" / "summary.json").read_text())
  mean, var = _truncnorm_moments(0.8, 0.1)
  assert summary["theta_bar"] == pytest.approx(mean, rel=1e-12)
  assert "theta_bar_stderr" not in summary  # exact: no Monte-Carlo standard error
  assert summary["strength"] == pytest.approx(var / mean**2, rel=1e-9)
  assert summary["sampler"] == {"name": "laws/mylaw.py:trunc_normal",
                                "params": {"mu": 0.8, "sigma": 0.1},
                                "label": "trunc_normal(0.8,0.1)"}
  assert "trunc_normal(0.8,0.1)" in proc.stdout and f"θ̄={mean:.4f})" in proc.stdout
  # The same config, from config.json, in this process: interrupted, then resumed.
  monkeypatch.chdir(cwd)
  config = workdir_lib.config_from_json(
      json.loads((cwd / "run" / "config.json").read_text()))
  wd = str(tmp_path / "resumed")
  with pytest.raises(loop.Interrupted):
    groups.train_and_evaluate(config, wd, interrupt_at_step=3)
  resumed = groups.train_and_evaluate(config, wd)
  assert resumed["resumed_from_step"] == 2
  for key in ("test", "test_rescaled", "param_l1", "theta_bar", "sampler"):
    assert resumed[key] == summary[key], key


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
  # The log (WORKDIR/log.txt; not stderr at the default verbosity) names the cache.
  assert f"Compilation cache: {cache}." in (tmp_path / "a" / "log.txt").read_text()
  assert "Compilation cache" not in first.stderr
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


# ---------------------------------------------------------------------------
# Errors before output; quiet success; a finished run, rerun; the shifted sets' table.
# ---------------------------------------------------------------------------
TINY = ["--config.num_steps=4", "--config.batch_size=64", "--config.eval.every_epochs=0",
        '--config.model.kwargs={"features": [4], "dense_sizes": [8]}']
INFO_RECORD = re.compile(r"^I\d{4} ")  # an absl INFO record ("I1206 19:15:40.2 ...")


def _lines(text: str) -> list[str]:
  return [l for l in text.splitlines() if l.strip()]


def test_cli_missing_dataset_is_one_line_before_any_output(run_main_cli, tmp_path):
  """CIFAR-10 (a tfds dataset mixjax cannot prepare itself) with an empty data_dir:
  exit 4, one stderr line (about 200 characters besides the paths) with the command
  that prepares it, nothing on stdout, no workdir created."""
  empty = tmp_path / "tfds"
  empty.mkdir()
  proc = run_main_cli(f"--config={os.path.join(ROOT, 'experiments', 'cifar10.py')}",
                      f"--workdir={tmp_path / 'w'}", f"--config.dataset.data_dir={empty}")
  assert proc.returncode == 4, proc.stderr[-3000:]
  lines = _lines(proc.stderr)
  assert len(lines) == 1 and not proc.stdout.strip(), proc.stderr + proc.stdout
  line = lines[0]
  assert line.startswith("Missing data: cifar10 is not prepared") and str(empty) in line
  assert "tfds build cifar10 --file_format=array_record --data_dir=DIR" in line
  assert "--config.dataset.data_dir=DIR" in line
  assert len(line.replace(str(empty), "")) <= 220, len(line)
  assert not (tmp_path / "w").exists()


def test_cli_workdir_of_another_config_is_one_line(run_main_cli, tmp_path):
  """A workdir holding a finished run of another config: exit 5, one short line naming
  the key old -> new and the fix, nothing on stdout; the whole comparison in the log."""
  module = sweeps.load_config_module(MNIST1D)
  (tmp_path / "config.json").write_text(workdir_lib.config_to_json(module.get_config()))
  (tmp_path / "summary.json").write_text("{}")
  proc = run_main_cli(f"--config={MNIST1D}", f"--workdir={tmp_path}",
                      '--config.sampler.params={"alpha": 0.2}', "--config.seed=3",
                      "--config.optimizer.lr=0.5", "--config.mixing.pairing=reverse")
  assert proc.returncode == 5, proc.stderr[-3000:]
  lines = _lines(proc.stderr)
  assert len(lines) == 1 and not proc.stdout.strip(), proc.stderr + proc.stdout
  line = lines[0]
  assert 'mixing.pairing: "permutation" -> "reverse"' in line, line  # sorted, first 2
  assert "fresh --workdir" in line and "Nothing would be retrained" in line, line
  assert "2 more in the log" in line and len(line.replace(str(tmp_path), "")) <= 240, line
  log = (tmp_path / "log.txt").read_text()
  for key in ("mixing.pairing", "optimizer.lr", "sampler.params.alpha: 1.0 -> 0.2",
              "seed: 0 -> 3"):
    assert key in log, (key, log[-2000:])


def test_cli_nonfinite_loss_stops_without_a_traceback(run_main_cli, tmp_path):
  """A learning rate that diverges: exit 3, one line naming the step, no traceback (the
  checkpoint manager is closed on the way out)."""
  proc = run_main_cli(f"--config={MNIST1D}", f"--workdir={tmp_path / 'w'}", *TINY,
                      "--config.optimizer.lr=1e30", timeout=300)
  assert proc.returncode == 3, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr and "Event loop is closed" not in proc.stderr
  lines = _lines(proc.stderr)
  assert len(lines) == 1 and "Non-finite loss or gradient at step" in lines[0], lines
  assert not (tmp_path / "w" / "summary.json").exists()


def test_cli_quiet_run_then_a_rerun_prints_already_finished_and_the_table(run_main_cli,
                                                                           tmp_path):
  """A short run: no INFO records and no traceback on stderr, the config only in
  config.json and WORKDIR/log.txt (with the progress), stdout the line pointing to the
  log and the final table. The same command again: one line "already finished at step
  4" naming summary.json, the same table, exit 0, nothing written, nothing on stderr."""
  wd = tmp_path / "w"
  args = [f"--config={MNIST1D}", f"--workdir={wd}", *TINY]
  first = run_main_cli(*args, timeout=300)
  assert first.returncode == 0, first.stderr[-3000:]
  assert "Traceback" not in first.stderr, first.stderr[-5000:]
  assert not [l for l in first.stderr.splitlines() if INFO_RECORD.match(l)], first.stderr
  assert "allow_config_change" not in first.stdout + first.stderr  # no config dump
  log = (wd / "log.txt").read_text()
  assert "Config:\nallow_config_change: false" in log and "step 4/4" in log, log[-3000:]
  assert json.loads((wd / "config.json").read_text())["num_steps"] == 4
  out = first.stdout.splitlines()
  assert out[0].startswith("Training w from step 0 to 4; progress in "
                           f"{wd / 'log.txt'}"), out[0]
  table = first.stdout[first.stdout.index("Final evaluation of seed 0"):]
  files = ("summary.json", "metrics.jsonl", "predictions.npz", "config.json")
  before = {f: (wd / f).read_bytes() for f in files}
  steps = sorted(os.listdir(wd / "checkpoints"))

  second = run_main_cli(*args, timeout=300)
  assert second.returncode == 0, second.stderr[-3000:]
  assert not second.stderr.strip(), second.stderr
  head, rest = second.stdout.split("\n", 1)
  assert head == (f"{wd} already finished at step 4; nothing retrained. "
                  f"Summary: {wd / 'summary.json'}"), head
  assert rest == table
  assert {f: (wd / f).read_bytes() for f in files} == before
  assert sorted(os.listdir(wd / "checkpoints")) == steps


@pytest.mark.slow
def test_checkpoint_tests_warnings_summary_holds_no_traceback(tmp_path):
  """pytest's own warnings summary of tests/test_train_checkpoint.py (damaged and
  mismatched checkpoints restored in-process): no Orbax / asyncio shutdown traceback."""
  proc = subprocess.run(
      [sys.executable, "-m", "pytest", "-q", "-p", "no:xdist", "-p", "no:cacheprovider",
       "-m", "not slow", "-W", "default", os.path.join(ROOT, "tests",
                                                        "test_train_checkpoint.py")],
      cwd=str(tmp_path), capture_output=True, text=True, timeout=600,
      env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 0, proc.stdout[-3000:]
  assert " passed" in proc.stdout, proc.stdout[-3000:]
  for words in ("Traceback", "Event loop is closed", "PytestUnraisableExceptionWarning"):
    assert words not in proc.stdout + proc.stderr, (words, proc.stdout[-5000:])


@pytest.fixture(scope="module")
def tiny_fashion_mnist(tmp_path_factory):
  """A tfds data_dir with Fashion-MNIST (30 training, 40 test images of noise) and two
  of its Fashion-MNIST-C corruptions, prepared offline from IDX files written here."""
  from mixjax.data import prepare  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp("tiny_fashion_mnist")
  write_source(root / "src", make_arrays(seed=5, n_train=30, n_test=40))
  out = root / "tfds"
  prepare.prepare("fashion_mnist", data_dir=str(out), source_dir=str(root / "src"))
  prepare.prepare("fashion_mnist_corrupted", data_dir=str(out),
                  source_dir=str(root / "src"), configs=("shot_noise", "rotate"))
  return out


FASHION_MNIST = os.path.join(ROOT, "experiments", "fashion_mnist.py")


def _fashion_flags(data_dir, workdir, shift):
  return [f"--config={FASHION_MNIST}", f"--workdir={workdir}",
          f"--config.dataset.data_dir={data_dir}", "--config.dataset.cache_dir=",
          "--config.model.name=mlp", '--config.model.kwargs={"hidden_sizes": [8]}',
          "--config.batch_size=8", "--config.num_steps=2", "--config.eval.every_epochs=0",
          "--config.eval.shift=(" + "".join(f'"fashion_mnist_corrupted/{c}",'
                                            for c in shift) + ")"]


def test_final_table_lists_every_shifted_set(tiny_fashion_mnist, tmp_path, monkeypatch,
                                             capsys):
  """With eval.shift: a row per corruption and their mean, each with the accuracy, NLL
  and ECE of summary.json's "shift" (plain) and "shift_rescaled" columns; the dataset
  info of each prepared dataset is read once in the run (the log)."""
  wd = tmp_path / "w"
  run_main(_fashion_flags(tiny_fashion_mnist, wd, ("shot_noise", "rotate")), monkeypatch)
  summary = json.loads((wd / "summary.json").read_text())
  out = capsys.readouterr().out
  rows = {l.split()[0]: [float(v) for v in l.split()[1:]] for l in out.splitlines()
          if l.startswith("  ") and l.split()[0] in ("shot_noise", "rotate", "mean")}
  assert set(rows) == {"shot_noise", "rotate", "mean"}, out
  for name, values in rows.items():
    want = [summary[col][name][m] for col in ("shift", "shift_rescaled")
            for m in ("accuracy", "nll", "ece")]
    assert values == pytest.approx(want, abs=5e-5), (name, values, want)
  for m in ("accuracy", "nll", "ece"):  # the mean row is the mean of the sets
    assert summary["shift"]["mean"][m] == pytest.approx(
        (summary["shift"]["shot_noise"][m] + summary["shift"]["rotate"][m]) / 2, rel=1e-6)
  loads = re.findall(r"Load dataset info from (\S+)", (wd / "log.txt").read_text())
  assert loads and len(loads) == len(set(loads)), loads


def test_missing_shifted_set_is_one_line_before_anything(tiny_fashion_mnist, tmp_path,
                                                         monkeypatch, capsys):
  """A corruption that is not prepared: exit 4, one line naming it and the command that
  prepares just it, before the workdir is made."""
  with pytest.raises(SystemExit) as e:
    run_main(_fashion_flags(tiny_fashion_mnist, tmp_path / "w", ("rotate", "fog")),
             monkeypatch)
  assert e.value.code == 4
  line = one_line_error(capsys)
  assert "config.eval.shift: fashion_mnist_corrupted/fog is not prepared in" in line, line
  assert (f"python -m mixjax.data.prepare --dataset=fashion_mnist_corrupted --configs=fog "
          f"--data_dir={tiny_fashion_mnist}") in line
  assert not capsys.readouterr().out and not (tmp_path / "w").exists()


def test_monte_carlo_theta_bar_has_its_standard_error_in_the_summary(user_law_dir,
                                                                     tmp_path, capsys):
  """A `from_fn` law without moments (trunc_normal_mc): θ̄ is estimated from N = 2^20
  draws; summary.json has `theta_bar_stderr` ≈ sd(θ)/√N (scipy's truncated normal;
  the estimate of a standard deviation from N draws is off by ~√((κ−1)/(4N)), κ the
  kurtosis: 6 of those allowed), and θ̄ within 5 of its standard errors of scipy's
  mean; the table shows θ̄±se. A law with given moments has no `theta_bar_stderr`."""
  from scipy import stats  # pylint: disable=g-import-not-at-top
  from mixjax.samplers import moments as moments_lib  # pylint: disable=g-import-not-at-top
  mu, sigma = 0.8, 0.1
  config = _config(**{"sampler.name": f"{user_law_dir}/mylaw.py:trunc_normal_mc",
                      "sampler.params": {"mu": mu, "sigma": sigma}, "num_steps": 2,
                      "batch_size": 64, "eval.every_epochs": 0, "model.name": "mlp",
                      "model.kwargs": {"hidden_sizes": (8,)}})
  summary = groups.train_and_evaluate(config, str(tmp_path / "mc"))
  law = stats.truncnorm((0.5 - mu) / sigma, (1.0 - mu) / sigma, loc=mu, scale=sigma)
  n = moments_lib.DEFAULT_NUM_DRAWS
  mean, var, kurt = (float(v) for v in law.stats(moments="mvk"))
  se = (var / n) ** 0.5
  assert summary["theta_bar_stderr"] == pytest.approx(
      se, rel=6 * ((kurt + 3 - 1) / (4 * n)) ** 0.5)
  assert abs(summary["theta_bar"] - mean) < 5 * se
  assert f"θ̄={summary['theta_bar']:.4f}±{summary['theta_bar_stderr']:.1g})" in (
      capsys.readouterr().out)
  exact = groups.train_and_evaluate(
      sweeps.sweep_config(config, {"sampler.name": f"{user_law_dir}/mylaw.py:trunc_normal"}),
      str(tmp_path / "exact"))
  assert "theta_bar_stderr" not in exact and exact["theta_bar"] == pytest.approx(
      mean, rel=1e-12)


def test_cli_bfloat16_run_tracks_the_float32_run(run_main_cli, tmp_path):
  """`python -m mixjax.main --config=experiments/mnist1d.py --config.model.dtype=bfloat16`
  against the same command in float32: K = 6 seeds (a seed group, the same batches, λ
  draws and initial parameters per seed in both runs) of the main job's 1-D LeNet
  (narrowed), 80 steps of batch 64 (Adam at 0.01, cosine, no warm-up), then the final
  evaluation on the 4000 test signals.

  Tolerance, derived from the seed-to-seed spread of these runs: if bfloat16 changes the
  outcome by no more than a change of seed does, the K bfloat16 and the K float32
  outcomes are two samples of one distribution, and the difference of their means lies
  within t · s · √(2/K) (s the pooled standard deviation of the two samples, t Student's
  quantile with 2K − 2 = 10 degrees of freedom) with probability 1 − p; p = 0.001 for
  each of the two quantities checked (test NLL and test accuracy). The bfloat16 run's
  config.json records the dtype, and its numbers differ from float32's (the knob took
  effect); both learned (mean accuracy above twice the 10% of chance)."""
  from scipy import stats  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  k = 6
  common = [f"--config={MNIST1D}", f"--config.num_seeds={k}", "--config.num_steps=80",
            "--config.batch_size=64", "--config.eval.every_epochs=0",
            "--config.optimizer.lr=0.01", "--config.optimizer.warmup_epochs=0",
            "--config.log_every_steps=40", "--config.checkpoint_every_steps=1000",
            "--config.tensorboard=False", "--config.dataset.cache_dir=",
            "--config.model.kwargs={\"features\": [8, 16], \"dense_sizes\": [32]}"]
  out = {}
  for dtype in ("float32", "bfloat16"):
    workdir = tmp_path / dtype
    proc = run_main_cli(*common, f"--workdir={workdir}", f"--config.model.dtype={dtype}",
                        timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((workdir / "config.json").read_text())["model"]["dtype"] == dtype
    tests = [json.loads((workdir / f"seed_{s}" / "summary.json").read_text())["test"]
             for s in range(k)]
    out[dtype] = np.asarray([[t["nll"], t["accuracy"]] for t in tests], np.float64).T
  f32, bf16 = out["float32"], out["bfloat16"]
  assert np.all(np.isfinite(bf16)) and not np.array_equal(f32, bf16)
  t = stats.t.ppf(1 - 0.001 / 2, 2 * k - 2)
  for name, a, b in zip(("test nll", "test accuracy"), f32, bf16):
    pooled = np.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2)
    tol = t * pooled * np.sqrt(2 / k)
    assert abs(b.mean() - a.mean()) <= tol, (name, a, b, tol)
  assert f32[1].mean() > 0.2 and bf16[1].mean() > 0.2, (f32, bf16)  # twice chance
  print(f"bf16 - f32 means: nll {bf16[0].mean() - f32[0].mean():+.4f}, accuracy "
        f"{bf16[1].mean() - f32[1].mean():+.4f}; tolerances (t = {t:.2f}) "
        + ", ".join(f"{t * np.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2 * 2 / k):.4f}"
                    for a, b in zip(f32, bf16)))
