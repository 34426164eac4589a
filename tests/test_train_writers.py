"""mixjax.train.writers: TensorBoard through tensorboardX without importing PyTorch."""
from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_tensorboard_writer_does_not_import_torch(tmp_path):
  """In a fresh interpreter: the metric writer writes its TensorBoard events and
  metrics.jsonl, `torch` stays unimported, and stays importable afterwards."""
  code = f"""
import importlib.util, json, os, sys
from mixjax.train import writers
w = writers.MetricWriter({str(tmp_path)!r})
w.write(3, {{"train/loss": 1.25}})
w.close()
assert "torch" not in sys.modules, "tensorboardX imported torch"
events = os.listdir(os.path.join({str(tmp_path)!r}, "tb"))
assert events and all(os.path.getsize(os.path.join({str(tmp_path)!r}, "tb", e)) > 0
                      for e in events), events
assert writers.read_metrics({str(tmp_path)!r}) == [{{"step": 3, "train/loss": 1.25}}]
if importlib.util.find_spec("torch") is not None:
  import torch  # still importable: the block was lifted
print("ok")
"""
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                       text=True, timeout=240, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
