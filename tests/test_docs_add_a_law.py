"""docs/add_a_law.md runs as written: its one file and its one command, taken from the
page, train the main job under the page's law in a fresh directory, and the θ̄ the page
states is the law's (scipy.stats.truncnorm)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from scipy import stats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGE = os.path.join(ROOT, "docs", "add_a_law.md")


def _blocks(lang: str) -> list[str]:
  with open(PAGE, encoding="utf-8") as f:
    return re.findall(rf"^```{lang}\n(.*?)^```", f.read(), re.M | re.S)


def test_the_page_has_one_file_and_one_command():
  assert len(_blocks("python")) == 1 and len(_blocks("bash")) == 1
  (command,) = _blocks("bash")
  assert command.startswith("python -m mixjax.main ") and "mylaw.py:" in command


@pytest.mark.slow
def test_the_page_file_and_command_train_the_law(tmp_path):
  """The page's file saved as mylaw.py, its command run by bash in a directory that, like
  the repository root, holds experiments/ (`python` is this interpreter): exit 0, the
  final table printed, and summary.json records the law with the θ̄ the page states,
  which is scipy's mean of the truncated normal."""
  (source,) = _blocks("python")
  (command,) = _blocks("bash")
  name = re.search(r"--config\.sampler\.name=(\S+)\.py:", command).group(1)
  (tmp_path / f"{name}.py").write_text(source)
  os.symlink(os.path.join(ROOT, "experiments"), tmp_path / "experiments")
  command = command.replace("python ", f"{sys.executable} ", 1)
  proc = subprocess.run(["bash", "-c", command], cwd=tmp_path, capture_output=True,
                        text=True, timeout=900, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "Final evaluation of seed 0" in proc.stdout, proc.stdout
  params = json.loads(re.search(r"--config\.sampler\.params='([^']*)'", command).group(1))
  mu, sigma = params["mu"], params["sigma"]
  mean = stats.truncnorm((0.5 - mu) / sigma, (1.0 - mu) / sigma, loc=mu, scale=sigma).mean()
  workdir = re.search(r"--workdir=(\S+)", command).group(1)
  with open(tmp_path / workdir / "summary.json") as f:
    summary = json.load(f)
  assert summary["theta_bar"] == pytest.approx(mean, rel=1e-12)
  assert summary["sampler"]["label"] == f"trunc_normal({mu:g},{sigma:g})"
  assert f"θ̄={mean:.4f}" in proc.stdout
  with open(PAGE, encoding="utf-8") as f:
    assert f"θ̄ = {mean:.4f}" in f.read()
