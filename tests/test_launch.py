"""launch/: the 2-process loopback launch (both processes finish, agree with each other and
with a single-process run on the same 4 devices) and the sweep launcher's commands (each
one parses through the real flags into a valid config)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from absl import flags
import jax
import pytest

from mixjax.train import sweeps
from mixjax.train import validate
from mixjax.train import groups
from helpers import parse_main_flags  # the same flag parsing as mixjax.main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MNIST1D = os.path.join(ROOT, "experiments", "mnist1d.py")
TINY_FLAGS = ["--config.num_steps=3", "--config.batch_size=64", "--config.log_every_steps=1",
              "--config.checkpoint_every_steps=2", "--config.eval.every_epochs=0",
              '--config.model.kwargs={"features": [4], "dense_sizes": [8]}']
VOLATILE = ("train_time_s", "process_index")


def _load_sweep_module():
  # launch/sweep.py is a script (its flags are defined only under __main__).
  return sweeps.load_config_module(os.path.join(ROOT, "launch", "sweep.py"))


def _parse(argv, monkeypatch):
  """The config that `python -m mixjax.main argv...` would run."""
  parse_main_flags(argv[1:], monkeypatch)
  return flags.FLAGS.config


def test_two_processes_finish_and_agree(tmp_path, monkeypatch):
  workdir = tmp_path / "two_proc"
  env = dict(os.environ, PYTHON=sys.executable)
  proc = subprocess.run(
      ["bash", os.path.join(ROOT, "launch", "local_2proc.sh"), MNIST1D, str(workdir)]
      + TINY_FLAGS, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  s0 = json.loads((workdir / "summary.json").read_text())
  s1 = json.loads((workdir / "summary.process_1.json").read_text())
  assert (s0["process_count"], s0["num_devices"], s0["step"]) == (2, 4, 3)
  assert (s0["process_index"], s1["process_index"]) == (0, 1)
  strip = lambda s: {k: v for k, v in s.items() if k not in VOLATILE}
  assert strip(s0) == strip(s1)
  # Reference: the same command in one process over this process's 4 forced devices
  # (only the all-reduce implementation differs: gloo vs in-process).
  assert jax.device_count() == 4
  config = _parse(["mixjax.main", f"--config={MNIST1D}", f"--workdir={tmp_path / 'one'}"]
                  + TINY_FLAGS, monkeypatch)
  ref = groups.train_and_evaluate(config, str(tmp_path / "one"))
  assert s0["param_l1"] == pytest.approx(ref["param_l1"], rel=1e-5)
  for k in ("accuracy", "nll", "brier"):
    assert s0["test"][k] == pytest.approx(ref["test"][k], rel=1e-4, abs=1e-6)


def test_sweep_commands_parse_into_valid_configs(tmp_path, monkeypatch):
  sweep = _load_sweep_module()
  points = sweep.load_sweep(MNIST1D)
  cmds = sweep.sweep_commands(MNIST1D, str(tmp_path), ["--config.num_epochs=1"],
                              python="python")
  assert len(cmds) == len(points) and len({c[4] for c in cmds}) == len(cmds)
  for cmd, point in zip(cmds, points):
    assert cmd[:3] == ["python", "-m", "mixjax.main"]
    config = _parse(["mixjax.main"] + cmd[3:], monkeypatch)
    validate.validate_config(config, num_devices=4)
    assert config.num_epochs == 1
    expected = sweeps.sweep_config(config, point)  # the point applied to the parsed one
    assert config.to_dict() == expected.to_dict()


def test_sweep_dry_run_prints_without_running(tmp_path):
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, "launch", "sweep.py"), f"--config={MNIST1D}",
       f"--workdir={tmp_path}", "--dry_run"], cwd=ROOT, capture_output=True, text=True,
      timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  lines = [l for l in proc.stdout.splitlines() if "mixjax.main" in l]
  assert len(lines) == len(_load_sweep_module().load_sweep(MNIST1D))
  assert not any(tmp_path.iterdir())  # nothing ran


def test_gpu_bench_smoke_runs_and_prints_its_table():
  """`launch/gpu_bench.sh --smoke` on CPU: the script runs every measurement of the GPU
  benchmark (the bf16 step, the streaming pipeline on synthetic JPEGs with one worker,
  the step fed by the pipeline) at tiny sizes, within its own ten-minute limit, and
  prints one table with the three rates and the verdict."""
  env = dict(os.environ, PYTHON=sys.executable, JAX_PLATFORMS="cpu")
  out = subprocess.run([os.path.join(ROOT, "launch", "gpu_bench.sh"), "--smoke"], cwd=ROOT,
                       capture_output=True, text=True, timeout=900, env=env)
  assert out.returncode == 0, out.stderr[-3000:]
  lines = out.stdout.splitlines()
  assert "| measurement | images/s | / step |" in lines
  rows = {l.split("|")[1].strip(): float(l.split("|")[2]) for l in lines
          if l.startswith("| ") and l.split("|")[1].strip() in ("step", "pipeline", "fed")}
  assert set(rows) == {"step", "pipeline", "fed"} and all(v > 0 for v in rows.values())
  assert any(l.startswith(("the pipeline keeps the step fed", "the step waits for input"))
             for l in lines)
