"""Seed groups (`--config.num_seeds=K`, `groups.train_group`) at tiny sizes.

A run of a group is checked against the same run trained alone (its own config, written
in its folder, through the single-run path): the logged losses to float tolerance and
the final metrics within float tolerance. Also: a vmapped group of one, a group killed
and resumed (bit-exact against the uninterrupted group), a NaN in one run (that run
marked failed with its step, the others finish), and the sequential mode's shared
compiled step and finished-run skipping.
"""
from __future__ import annotations

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixjax import models as models_lib
from mixjax import errors
from mixjax.models import introspect
from mixjax.train import sweeps
from mixjax.train import validate
from mixjax.train import loop
from mixjax.train import groups
from mixjax.train import setup
from mixjax.train import trained
from mixjax.train import step as step_lib
from mixjax.train import writers

from helpers import comparable, get_config, one_line_error, read_summary, run_main  # pylint: disable=g-bad-import-order

pytestmark = pytest.mark.usefixtures("compilation_cache")

# An MNIST-1D MLP (vmapped by "auto" on CPU): 8 steps, logged every step, checkpoints at 4.
MLP = {"model.name": "mlp", "model.kwargs": {"hidden_sizes": (16,)},
       "model.input_shape": None, "num_steps": 8, "batch_size": 64,
       "log_every_steps": 1, "checkpoint_every_steps": 4, "eval.every_epochs": 0}


def group_config(**overrides):
  return get_config("mnist1d", **{**MLP, **overrides})


def _losses(workdir):
  return [r["train/loss"] for r in writers.read_metrics(workdir) if "train/loss" in r]


def _alone(seed, tmp_path, **overrides):
  """The run of `seed` trained alone, from the config its group wrote for it."""
  wd = str(tmp_path / f"alone_{seed}")
  config = group_config(seed=seed, **overrides)
  return wd, groups.train_and_evaluate(config, wd)


@pytest.fixture(scope="module")
def group(compilation_cache, tmp_path_factory):  # pylint: disable=redefined-outer-name,unused-argument
  """(workdir, group summary) of a vmapped group of 3 seeds (5, 6, 7)."""
  wd = str(tmp_path_factory.mktemp("group"))
  return wd, groups.train_and_evaluate(group_config(seed=5, num_seeds=3), wd)


def test_group_writes_one_folder_per_run_and_a_group_summary(group):
  wd, out = group
  assert sorted(os.listdir(wd)) == ["checkpoints", "config.json", "data_stats.npz",
                                    "seed_5", "seed_6", "seed_7", "summary.json"]
  for seed in (5, 6, 7):
    run = os.path.join(wd, f"seed_{seed}")
    with open(os.path.join(run, "config.json")) as f:
      cfg = json.load(f)
    assert (cfg["seed"], cfg["num_seeds"]) == (seed, 1)
    s = read_summary(run)
    assert s["status"] == "ok" and s["step"] == 8 and s["seed"] == seed
    assert os.path.exists(os.path.join(run, "predictions.npz"))
    assert [r["step"] for r in writers.read_metrics(run) if "train/loss" in r] == \
        list(range(1, 9))
  g = read_summary(wd)
  assert (g["num_runs"], g["num_finished"]) == (3, 3)
  acc = [out["runs_summaries"][f"seed_{s}"]["test"]["accuracy"] for s in (5, 6, 7)]
  assert g["test"]["accuracy"]["mean"] == pytest.approx(np.mean(acc), abs=1e-12)
  assert g["test"]["accuracy"]["std"] == pytest.approx(np.std(acc, ddof=1), abs=1e-12)
  # The seeds are different runs: different initializations give different losses.
  assert len({round(_losses(os.path.join(wd, f"seed_{s}"))[0], 6) for s in (5, 6, 7)}) == 3


def test_run_in_a_group_equals_the_run_trained_alone(group, tmp_path):
  """seed 6 of the vmapped group against seed 6 trained alone (4 devices both)."""
  wd, _ = group
  alone_wd, alone = _alone(6, tmp_path)
  in_group = os.path.join(wd, "seed_6")
  np.testing.assert_allclose(_losses(in_group), _losses(alone_wd), rtol=2e-5)
  got = read_summary(in_group)
  assert got["param_l1"] == pytest.approx(alone["param_l1"], rel=1e-5)
  for k in ("accuracy", "nll", "ece", "brier"):
    assert got["test"][k] == pytest.approx(alone["test"][k], rel=1e-4, abs=1e-5)
    assert got["test_rescaled"][k] == pytest.approx(alone["test_rescaled"][k], rel=1e-4,
                                                    abs=1e-5)


def test_a_lone_run_compiles_without_the_run_axis(tmp_path, monkeypatch):
  """A single run is a group of one through the same path, compiled without the run
  axis (num_runs None), so its program is a single run's; a seed group of two compiles
  one vmapped program (num_runs 2)."""
  built = []
  original = step_lib.make_train_step
  monkeypatch.setattr(step_lib, "make_train_step",
                      lambda **kw: built.append(kw["num_runs"]) or original(**kw))
  groups.train_and_evaluate(group_config(seed=3), str(tmp_path / "one"))
  groups.train_and_evaluate(group_config(seed=3, num_seeds=2), str(tmp_path / "two"))
  assert built == [None, 2]


def test_killed_group_resumes_exactly(group, tmp_path):
  """The group killed after step 6 (checkpoint at 4), rerun with the same call: every
  run's metrics and summary equal the uninterrupted group's exactly."""
  full, ref = group
  wd = str(tmp_path / "killed")
  with pytest.raises(loop.Interrupted):  # pylint: disable=protected-access
    groups.train_and_evaluate(group_config(seed=5, num_seeds=3), wd, interrupt_at_step=6)
  assert not os.path.exists(os.path.join(wd, "summary.json"))
  groups.train_and_evaluate(group_config(seed=5, num_seeds=3), wd)
  for seed in (5, 6, 7):
    got, want = (read_summary(os.path.join(d, f"seed_{seed}")) for d in (wd, full))
    assert got["resumed_from_step"] == 4
    assert got["param_l1"] == want["param_l1"] and got["test"] == want["test"]
    drop = lambda rs: [{k: v for k, v in r.items() if k != "steps_per_sec"} for r in rs
                       if "resumed_from_step" not in r]
    assert drop(writers.read_metrics(os.path.join(wd, f"seed_{seed}"))) == drop(
        writers.read_metrics(os.path.join(full, f"seed_{seed}")))


def test_nan_in_one_run_fails_that_run_only(group, tmp_path, monkeypatch):
  """Run 1 of the group starts with a NaN weight: its first step is non-finite, so it is
  frozen and its summary says failed at step 1; runs 0 and 2 finish and equal the
  healthy group's."""
  full, _ = group
  original = setup.create_or_restore_state

  def poisoned(*args, **kwargs):
    state, resumed = original(*args, **kwargs)
    leaf, *_ = jax.tree.leaves(state.params)
    bad = jax.tree.map(lambda a: a.at[1].set(jnp.nan) if a is leaf else a, state.params)
    return state.replace(params=bad), resumed

  monkeypatch.setattr(setup, "create_or_restore_state", poisoned)
  wd = str(tmp_path / "nan")
  out = groups.train_and_evaluate(group_config(seed=5, num_seeds=3), wd)
  failed = read_summary(os.path.join(wd, "seed_6"))
  assert failed["status"] == "failed" and failed["failed_at_step"] == 1
  assert "test" not in failed
  nan_metrics = os.path.join(wd, "seed_6", writers.METRICS_FILE)
  assert not os.path.exists(nan_metrics) or not any(
      "train/loss" in r for r in writers.read_metrics(os.path.join(wd, "seed_6")))
  assert (out["num_runs"], out["num_finished"]) == (3, 2)
  assert out["runs"]["seed_6"] == {"status": "failed", "seed": 6, "failed_at_step": 1,
                                   "test": None}
  for seed in (5, 7):
    got, want = (read_summary(os.path.join(d, f"seed_{seed}")) for d in (wd, full))
    assert got["status"] == "ok" and got["param_l1"] == pytest.approx(want["param_l1"],
                                                                      rel=1e-6)


def test_nan_in_one_run_of_a_sequential_group_fails_that_run_only(group, tmp_path,
                                                                  monkeypatch):
  """The same in sequential mode: seed 6's own state starts with a NaN weight; it is
  marked failed at step 1 and the group goes on to train seed 7 (exit 0, 2 finished),
  whose numbers equal the healthy group's to float rounding."""
  full, _ = group
  original = setup.create_or_restore_state

  def poisoned(model, tx, mesh, ckpt, *args, **kwargs):
    state, resumed = original(model, tx, mesh, ckpt, *args, **kwargs)
    if "seed_6" not in str(ckpt.directory):
      return state, resumed
    assert kwargs.get("num_runs") is None  # one run's state, no run axis
    leaf, *_ = jax.tree.leaves(state.params)
    bad = jax.tree.map(lambda a: a.at[0].set(jnp.nan) if a is leaf else a, state.params)
    return state.replace(params=bad), resumed

  monkeypatch.setattr(setup, "create_or_restore_state", poisoned)
  wd = str(tmp_path / "nan_seq")
  out = groups.train_and_evaluate(
      group_config(seed=5, num_seeds=3, group_mode="sequential"), wd)
  failed = read_summary(os.path.join(wd, "seed_6"))
  assert failed["status"] == "failed" and failed["failed_at_step"] == 1
  assert (out["num_runs"], out["num_finished"]) == (3, 2)
  for seed in (5, 7):
    got, want = (read_summary(os.path.join(d, f"seed_{seed}")) for d in (wd, full))
    assert got["status"] == "ok" and got["checkpoint"]["mode"] == "alone"
    assert got["param_l1"] == pytest.approx(want["param_l1"], rel=1e-5)


def test_nan_in_every_run_stops_the_group(tmp_path):
  config = group_config(num_seeds=2, **{"optimizer.lr": 1e30})
  with pytest.raises(errors.NonFiniteLossError, match="every run of the group"):
    groups.train_and_evaluate(config, str(tmp_path / "all_nan"))


def test_sequential_group_shares_one_step_and_skips_finished_runs(tmp_path, monkeypatch):
  """LeNet over images on CPU: "auto" picks sequential; the step is built once for both
  runs; each run equals the run alone exactly (same path, same compiled step); a rerun
  trains nothing again."""
  overrides = {"model.name": "lenet", "model.kwargs": {"features": (4,), "dense_sizes": (8,)},
               "model.input_shape": (8, 5, 1)}
  config = group_config(num_seeds=2, **overrides)
  ds = setup.load_data(config)
  model = setup.make_model(config, ds)
  assert groups.group_mode(config, model, ds, jax.devices()) == "sequential"
  built = []
  original = step_lib.make_train_step
  monkeypatch.setattr(step_lib, "make_train_step",
                      lambda **kw: built.append(kw["num_runs"]) or original(**kw))
  wd = str(tmp_path / "seq")
  out = groups.train_and_evaluate(config, wd)
  assert built == [None] and out["num_finished"] == 2
  assert not os.path.exists(os.path.join(wd, "checkpoints"))  # each run has its own
  for seed in (0, 1):
    alone_wd, alone = _alone(seed, tmp_path, **overrides)
    got = read_summary(os.path.join(wd, f"seed_{seed}"))
    assert got["param_l1"] == alone["param_l1"] and got["test"] == alone["test"]
  mtime = os.path.getmtime(os.path.join(wd, "seed_0", "summary.json"))
  groups.train_and_evaluate(config, wd)
  assert os.path.getmtime(os.path.join(wd, "seed_0", "summary.json")) == mtime


def test_auto_mode_vmaps_dense_models_and_not_convolutions():
  """`group_mode="auto"` on these CPU devices: vmap for the MLP and for LeNet over 1-D
  signals (40, 1, 1); sequential for LeNet over images (8, 5, 1) and for host-fed data;
  "vmap" and "sequential" as asked."""
  lenet = {"model.name": "lenet", "model.kwargs": {"features": (4,), "dense_sizes": (8,)},
           "model.input_shape": (40, 1, 1)}
  lenet_2d = {**lenet, "model.input_shape": (8, 5, 1)}
  mode = lambda c: groups.group_mode(c, setup.make_model(c, ds), ds, jax.devices())
  ds = setup.load_data(group_config())
  assert mode(group_config(num_seeds=2)) == "vmap"
  assert mode(group_config(num_seeds=2, **lenet)) == "vmap"
  assert mode(group_config(num_seeds=2, **lenet_2d)) == "sequential"
  assert mode(group_config(num_seeds=2, data_on_device=False)) == "sequential"
  assert mode(group_config(num_seeds=2, group_mode="vmap", **lenet_2d)) == "vmap"
  assert mode(group_config(num_seeds=2, group_mode="sequential")) == "sequential"
  assert introspect.has_convolution(setup.make_model(group_config(**lenet), ds), (40,))


@pytest.mark.parametrize("key,value,needle", [
    ("num_seeds", 0, "config.num_seeds=0 must be >= 1"),
    ("group_mode", "parallel", "config.group_mode='parallel' is not valid"),
])
def test_bad_group_settings_are_refused(key, value, needle):
  with pytest.raises(errors.ConfigError, match=needle.replace("(", r"\(")):
    validate.validate_config(group_config(**{key: value}), check_data=False)


def test_vmap_mode_needs_the_data_on_device(tmp_path):
  config = group_config(num_seeds=2, group_mode="vmap", data_on_device=False)
  with pytest.raises(errors.ConfigError, match="group_mode=sequential"):
    groups.train_and_evaluate(config, str(tmp_path / "host"))
  shutil.rmtree(tmp_path / "host", ignore_errors=True)


# ----------------------------------------------------------------------------------------
# Sweeps: `python -m mixjax.main --sweep` (`config.sweep_point_configs`, `sweeps.train_sweep`).

SWEEP_FILE = '''
import ml_collections
from mixjax.train.config import base_config

def get_config():
  c = base_config()
  c.model.name = "mlp"
  c.model.kwargs = ml_collections.ConfigDict({"hidden_sizes": (8,)})
  c.num_steps = 6
  c.batch_size = 64
  c.log_every_steps = 3
  c.eval.every_epochs = 0
  return c

def get_sweep():
  return [{"method.name": "erm"},
          {"sampler.name": "beta", "sampler.params": {"alpha": 0.2}}]
'''


@pytest.fixture()
def sweep_file(tmp_path):
  path = tmp_path / "sweep_cfg.py"
  path.write_text(SWEEP_FILE)
  return str(path)


def test_sweep_runs_every_point_in_its_folder_and_skips_finished_ones(sweep_file,
                                                                       tmp_path,
                                                                       monkeypatch):
  wd = tmp_path / "sweep"
  run_main([f"--config={sweep_file}", f"--workdir={wd}", "--sweep",
             "--config.seed=3"], monkeypatch)
  names = ["00_method=erm", "01_sampler=beta_alpha=0.2"]
  assert sorted(p for p in os.listdir(wd) if os.path.isdir(wd / p)) == names
  erm, beta = (json.loads((wd / n / "config.json").read_text()) for n in names)
  assert (erm["method"]["name"], erm["seed"]) == ("erm", 3)  # the command line's seed
  assert (beta["method"]["name"], beta["sampler"]["params"]) == ("mixup", {"alpha": 0.2})
  summary = json.loads((wd / "summary.json").read_text())
  assert list(summary) == names and all(v["status"] == "ok" for v in summary.values())
  assert summary[names[1]]["test"] == read_summary(wd / names[1])["test"]
  # The ERM point is the run of that config trained alone.
  module = sweeps.load_config_module(sweep_file)
  alone = sweeps.sweep_config(module.get_config(), {"method.name": "erm", "seed": 3})
  got = groups.train_and_evaluate(alone, str(tmp_path / "alone"))
  assert got["test"] == summary[names[0]]["test"]
  mtime = os.path.getmtime(wd / names[0] / "summary.json")
  run_main([f"--config={sweep_file}", f"--workdir={wd}", "--sweep",
             "--config.seed=3"], monkeypatch)
  assert os.path.getmtime(wd / names[0] / "summary.json") == mtime


def test_sweep_point_and_command_line_setting_the_same_key_is_refused(sweep_file,
                                                                       tmp_path,
                                                                       monkeypatch, capsys):
  with pytest.raises(SystemExit) as e:
    run_main([f"--config={sweep_file}", f"--workdir={tmp_path / 'w'}", "--sweep",
               "--config.method.name=regmixup"], monkeypatch)
  assert e.value.code == 2
  line = one_line_error(capsys)
  assert "method.name" in line and "command line" in line and "point 0" in line
  assert not (tmp_path / "w").exists()


# ----------------------------------------------------------------------------------------
# k steps per dispatch (`config.steps_per_call`, a lax.scan in the compiled program).


@pytest.mark.parametrize("overrides", [
    {},  # on device, one run
    {"data_on_device": False},  # host-fed: k stacked batches per call
    {"num_seeds": 2, "group_mode": "vmap"},  # a vmapped group, scanned
], ids=["on_device", "host_fed", "vmapped_group"])
def test_k_steps_per_call_take_the_same_steps(overrides, tmp_path, monkeypatch):
  """k = 4 with logs every 4 steps and a checkpoint every 10 of 18 steps (scanned blocks
  0–4, 4–8, 12–16; single steps for 8–12 around the checkpoint and 16–18) against k = 1:
  the same logged losses and final parameters to float tolerance, logs at the same
  steps, and both the 4-step and the 1-step programs were used."""
  base = {**overrides, "log_every_steps": 4, "checkpoint_every_steps": 10, "num_steps": 18}
  out = {}
  original = step_lib.make_train_step
  for k in (1, 4):
    built = []
    monkeypatch.setattr(step_lib, "make_train_step",
                        lambda **kw: built.append(kw["steps_per_call"]) or original(**kw))  # pylint: disable=cell-var-from-loop
    wd = tmp_path / f"k{k}"
    out[k] = groups.train_and_evaluate(group_config(steps_per_call=k, **base), str(wd))
    out[k]["_dir"] = wd / "seed_0" if "num_seeds" in overrides else wd
    assert sorted(built) == sorted({1, k})
  steps = lambda d: [r["step"] for r in writers.read_metrics(str(d)) if "train/loss" in r]
  assert steps(out[1]["_dir"]) == steps(out[4]["_dir"]) == [4, 8, 12, 16, 18]
  np.testing.assert_allclose(_losses(str(out[4]["_dir"])), _losses(str(out[1]["_dir"])),
                             rtol=1e-5)
  p1, p4 = (read_summary(str(out[k]["_dir"]))["param_l1"] for k in (1, 4))
  assert p4 == pytest.approx(p1, rel=1e-5)


def test_steps_per_call_must_be_positive():
  with pytest.raises(errors.ConfigError, match="steps_per_call=0"):
    validate.validate_config(group_config(steps_per_call=0), check_data=False)


LAW_SWEEP_FILE = SWEEP_FILE.replace('''def get_sweep():
  return [{"method.name": "erm"},
          {"sampler.name": "beta", "sampler.params": {"alpha": 0.2}}]''', '''def get_sweep():
  return ([{"sampler.name": "beta", "sampler.params": {"alpha": a}, "optimizer.lr": lr,
           "optimizer.weight_decay": wd}
          for a, lr, wd in ((0.2, 0.1, 0.0), (1.0, 0.05, 1e-3), (4.0, 0.1, 0.0))]
          + [{"sampler.name": "w_shaped", "sampler.params": {"a": 0.5}}])''')


def test_sweep_over_law_parameters_is_one_vmapped_program_equal_to_each_run(tmp_path):
  """Beta(α) for three α with their own lr and weight decay (a dense model on CPU): one
  vmapped program, laws and optimizer values as arrays; a W-shaped law (another
  structure) trains apart. Each point's losses, parameters and metrics (rescaled ones
  with its own θ̄) equal the point trained alone, and `TrainedRun` restores its final
  parameters from the group checkpoint."""
  assert "(1.0, 0.05, 1e-3)" in LAW_SWEEP_FILE
  path = tmp_path / "law_sweep.py"
  path.write_text(LAW_SWEEP_FILE)
  config = sweeps.load_config_module(str(path)).get_config()
  points = sweeps.sweep_point_configs(config, str(path))
  assert [[points[i][0] for i in g] for g in sweeps.law_groups(points)] == [
      [p[0] for p in points[:3]], [points[3][0]]]
  wd = tmp_path / "sweep"
  out = sweeps.train_sweep(points, str(wd))
  assert sorted(os.listdir(wd)) == sorted([p[0] for p in points] + ["group_000_3",
                                                                     "summary.json"])
  assert read_summary(wd / points[1][0])["checkpoint"] == {
      "mode": "vmapped", "group": [f"../{p[0]}" if i != 1 else "."
                                   for i, p in enumerate(points[:3])],
      "workdir": "../group_000_3", "run": 1, "num_runs": 3}
  lrs = [[r["train/lr"] for r in writers.read_metrics(str(wd / p[0])) if "train/lr" in r]
         for p in points[:2]]
  np.testing.assert_allclose(np.asarray(lrs[1]) / np.asarray(lrs[0]), 0.5, rtol=1e-6)
  for name, c in points:
    alone_wd = str(tmp_path / f"alone_{name}")
    alone = groups.train_and_evaluate(c, alone_wd)
    got = read_summary(wd / name)
    assert got["theta_bar"] == pytest.approx(alone["theta_bar"], rel=1e-12)
    np.testing.assert_allclose(_losses(str(wd / name)), _losses(alone_wd), rtol=2e-5)
    assert got["param_l1"] == pytest.approx(alone["param_l1"], rel=1e-5)
    for col in ("test", "test_rescaled"):
      for k in ("accuracy", "nll"):
        assert got[col][k] == pytest.approx(alone[col][k], rel=1e-4, abs=1e-5), (name, col)
    assert out[name]["test"] == got["test"]
    run = trained.TrainedRun(str(wd / name))
    ref = trained.TrainedRun(alone_wd)
    for a, b in zip(jax.tree.leaves(run.variables()), jax.tree.leaves(ref.variables())):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    assert run.steps[-1] == ref.steps[-1] == 6
    run.close()
    ref.close()


SWAP_SWEEP_FILE = SWEEP_FILE.replace('''def get_sweep():
  return [{"method.name": "erm"},
          {"sampler.name": "beta", "sampler.params": {"alpha": 0.2}}]''', '''def get_sweep(arg=None):
  values = [(0.1, 0.0), (0.02, 0.05)]
  if arg == "swapped":
    values = values[::-1]
  return [{"seed": s, "optimizer.lr": lr, "optimizer.weight_decay": wd}
          for s, (lr, wd) in zip((0, 1), values)]''').replace("def get_config():",
                                                      "def get_config(arg=None):")


def test_swapping_per_run_optimizer_values_in_a_vmapped_sweep_changes_the_runs(tmp_path):
  """Negative control for per-run values: two points (seeds 0 and 1) trained as one
  vmapped program, then the same with their (lr, weight decay) swapped. Each run
  follows its own values: swapping changes both runs' results, and the seed-0 run with
  the values (0.1, 0) matches itself across the two sweeps only when it has them."""
  path = tmp_path / "swap.py"
  path.write_text(SWAP_SWEEP_FILE)
  out = {}
  for arg in ("plain", "swapped"):
    config = sweeps.load_config_module(str(path)).get_config()
    points = sweeps.sweep_point_configs(config, f"{path}:{arg}")
    assert len(sweeps.law_groups(points)) == 1  # one vmapped program
    sweeps.train_sweep(points, str(tmp_path / arg))
    out[arg] = [_losses(str(tmp_path / arg / name))[-1] for name, _ in points]
  for r in range(2):
    assert abs(out["plain"][r] - out["swapped"][r]) > 0.02 * abs(out["plain"][r])
  # The run (seed 1, lr 0.1, wd 0) of the swapped sweep is that run trained alone.
  alone_wd = str(tmp_path / "alone")
  groups.train_and_evaluate(
      sweeps.sweep_config(sweeps.load_config_module(str(path)).get_config(),
                          {"seed": 1, "optimizer.lr": 0.1, "optimizer.weight_decay": 0.0}),
      alone_wd)
  assert out["swapped"][1] == pytest.approx(_losses(alone_wd)[-1], rel=1e-5)


def test_a_sweep_reads_its_data_once(sweep_file, tmp_path, monkeypatch):
  """The sweep's two points are two groups (ERM, Beta(0.2)): the dataset is loaded for
  the first and kept for the second (`setup.load_data_once`); a point on another
  dataset split loads again."""
  calls = []
  load = setup.load_data
  monkeypatch.setattr(setup, "load_data", lambda c: calls.append(c.dataset.split_seed)
                      or load(c))
  monkeypatch.setattr(setup, "_LOADED", {})
  run_main([f"--config={sweep_file}", f"--workdir={tmp_path / 'a'}", "--sweep"],
           monkeypatch)
  assert calls == [0]
  run_main([f"--config={sweep_file}", f"--workdir={tmp_path / 'b'}", "--sweep",
            "--config.dataset.split_seed=1"], monkeypatch)
  assert calls == [0, 1]
