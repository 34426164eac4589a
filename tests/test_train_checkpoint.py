"""mixjax/train/checkpoint.py: a damaged checkpoint ends in one short line naming the
folder, the problem and the fix, quietly (no asyncio tracebacks, Orbax's and
TensorStore's words only in the INFO log), at the Checkpointer and through the real
command line (exit 5)."""
from __future__ import annotations

import asyncio
import json
import logging as py_logging
import os
import subprocess
import sys
import types

from absl import logging
import jax.numpy as jnp
import numpy as np
import pytest

from mixjax import errors
from mixjax.train import checkpoint as checkpoint_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MNIST1D = os.path.join(ROOT, "experiments", "mnist1d.py")


def _state(n=4):
  return {f"w{i}": jnp.full((n, 8), float(i)) for i in range(12)}


def _truncate_all(workdir, size=10):
  """Cuts every file of every checkpoint to `size` bytes."""
  for d, _, files in os.walk(os.path.join(workdir, "checkpoints")):
    for f in files:
      os.truncate(os.path.join(d, f), min(size, os.path.getsize(os.path.join(d, f))))


@pytest.fixture
def absl_records():
  """The absl logger's records (INFO and up) while the test runs."""
  records = []
  handler = py_logging.Handler()
  handler.emit = records.append
  absl_logger = py_logging.getLogger("absl")
  absl_logger.addHandler(handler)
  old = logging.get_verbosity()
  logging.set_verbosity(logging.INFO)
  yield records
  logging.set_verbosity(old)
  absl_logger.removeHandler(handler)


def _saved(workdir, steps=(2, 4)):
  with checkpoint_lib.Checkpointer(str(workdir)) as ckpt:
    for s in steps:
      ckpt.save(s, _state(), {"epoch": 0, "batch_in_epoch": s})


def test_intact_checkpoint_restores_exactly(tmp_path):
  _saved(tmp_path)
  with checkpoint_lib.Checkpointer(str(tmp_path)) as ckpt:
    state, meta = ckpt.restore_latest(_state())
  assert meta == {"epoch": 0, "batch_in_epoch": 4}
  for k, v in _state().items():
    np.testing.assert_array_equal(np.asarray(state[k]), np.asarray(v))


@pytest.mark.parametrize("what", ["every file", "array files"])
def test_damaged_checkpoints_are_one_short_line(what, tmp_path, absl_records,
                                                monkeypatch):
  """Every file (or every array file) of both checkpoints cut to 10 bytes: WorkdirError
  in one line of at most 200 characters besides the folder, that names the folder, the steps, "damaged" and
  the fix, without Orbax's or TensorStore's words; those are in the log at INFO, and
  nothing of Orbax's is logged above INFO. No unraisable exception reaches the hook."""
  unraisable = []
  monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
  # A previous test's abandoned read may finish at any point: filter it over this hook.
  checkpoint_lib._drop_abandoned_reads()  # pylint: disable=protected-access
  _saved(tmp_path)
  if what == "every file":
    _truncate_all(tmp_path)
  else:
    for d, _, files in os.walk(os.path.join(tmp_path, "checkpoints")):
      for f in files:
        if os.path.basename(d) == "d":
          os.truncate(os.path.join(d, f), 10)
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path))
  with pytest.raises(errors.WorkdirError) as e:
    ckpt.restore_latest(_state())
  ckpt.close()
  msg = str(e.value)
  folder = os.path.join(str(tmp_path), "checkpoints")
  assert "\n" not in msg and len(msg) - len(folder) <= 200, msg
  for words in (folder, "steps 4, 2", "cannot be read (damaged?)", "fresh --workdir",
                "delete that folder"):
    assert words in msg, (words, msg)
  for raw in ("tensorstore", "zarr", "OCDBT", "JSONDecodeError", "Error opening"):
    assert raw not in msg, (raw, msg)
  orbax = [r for r in absl_records if "/orbax/" in r.pathname]
  assert all(r.levelno <= py_logging.INFO for r in orbax), [r.getMessage() for r in orbax]
  detail = " ".join(r.getMessage() for r in absl_records
                    if r.levelno == py_logging.INFO and "cannot be restored" in r.getMessage())
  assert "step 4" in detail and "step 2" in detail, detail
  import gc  # pylint: disable=g-import-not-at-top
  gc.collect()
  assert not [u for u in unraisable if "Event loop is closed" in str(u.exc_value)]


def test_a_state_of_other_shapes_is_named_as_such(tmp_path, monkeypatch):
  unraisable = []
  monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
  # As in a process, where it stays installed after the first restore: a read that the
  # previous test's failed restore abandoned can finish at any time, also before this
  # test's restore installs the filter over the hook just replaced.
  checkpoint_lib._drop_abandoned_reads()  # pylint: disable=protected-access
  _saved(tmp_path, steps=(3,))
  with checkpoint_lib.Checkpointer(str(tmp_path)) as ckpt:
    with pytest.raises(errors.WorkdirError) as e:
      ckpt.restore_latest(_state(n=5))
  import gc  # pylint: disable=g-import-not-at-top
  gc.collect()
  assert not unraisable, [str(u.exc_value) for u in unraisable]
  msg = str(e.value)
  assert "step 3" in msg and "other shapes" in msg and "(5, 8)" in msg, msg
  assert "(4, 8)" in msg and "fresh --workdir" in msg and "damaged" not in msg, msg


def test_the_hook_drops_only_reads_a_failed_restore_abandoned(monkeypatch):
  """The wrapped `sys.unraisablehook` drops a RuntimeError 'Event loop is closed' raised
  in asyncio's `call_soon_threadsafe` (a TensorStore read finishing after Orbax's failed
  restore) and an Exception caused by GeneratorExit in an Orbax read coroutine (closed
  by the garbage collector); it passes everything else on (the same words raised
  elsewhere, the same exception from another coroutine), installed once however often."""
  from orbax.checkpoint._src.serialization import serialization  # pylint: disable=g-import-not-at-top
  seen = []
  monkeypatch.setattr(sys, "unraisablehook", seen.append)
  checkpoint_lib._drop_abandoned_reads()  # pylint: disable=protected-access
  checkpoint_lib._drop_abandoned_reads()  # pylint: disable=protected-access
  hook = sys.unraisablehook
  assert hook is not seen.append and hook.drops_abandoned_reads

  def args(exc, obj=None):
    return types.SimpleNamespace(exc_type=type(exc), exc_value=exc,
                                 exc_traceback=exc.__traceback__, err_msg=None,
                                 object=obj)

  loop = asyncio.new_event_loop()
  loop.close()
  try:
    loop.call_soon_threadsafe(lambda: None)
  except RuntimeError as e:
    closed = e
  try:
    raise RuntimeError("Event loop is closed")  # the same words, raised elsewhere
  except RuntimeError as e:
    elsewhere = e
  wrapped = Exception("Encountered error while reading array index")
  wrapped.__cause__ = GeneratorExit()

  async def not_orbax():
    pass

  read = serialization._read_array_index_and_device_put  # pylint: disable=protected-access
  assert asyncio.iscoroutinefunction(read)
  orbax_coro = types.SimpleNamespace(cr_code=read.__code__)  # what its coroutine carries
  other_coro = not_orbax()
  hook(args(closed))
  hook(args(elsewhere))
  hook(args(wrapped, orbax_coro))
  hook(args(wrapped, other_coro))
  hook(args(ValueError("other")))
  other_coro.close()
  assert [a.exc_value for a in seen] == [elsewhere, wrapped, seen[2].exc_value]
  assert seen[1].object is other_coro and str(seen[2].exc_value) == "other"


def _cli(args, cwd, timeout=300):
  return subprocess.run([sys.executable, "-m", "mixjax.main", *args], cwd=cwd,
                        capture_output=True, text=True, timeout=timeout,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))


@pytest.fixture(scope="module")
def damaged_workdir(tmp_path_factory):
  """A run of 4 steps (checkpoints at 2 and 4) made unfinished (summary.json removed),
  every checkpoint file then cut to 10 bytes; and its command line."""
  wd = tmp_path_factory.mktemp("damaged") / "run"
  args = [f"--config={MNIST1D}", f"--workdir={wd}", "--config.num_steps=4",
          "--config.batch_size=64", "--config.checkpoint_every_steps=2",
          "--config.eval.every_epochs=0",
          '--config.model.kwargs={"features": [4], "dense_sizes": [8]}']
  proc = _cli(args, ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  os.remove(wd / "summary.json")
  _truncate_all(wd)
  return wd, args


@pytest.mark.slow
@pytest.mark.parametrize("verbosity", [[], ["--verbosity=-1"]],
                         ids=["default", "warnings_only"])
def test_cli_damaged_checkpoint_exits_5_in_at_most_3_lines(damaged_workdir, verbosity):
  """The command rerun over the damaged checkpoints: exit 5, at most 3 lines on stderr,
  no traceback, the mixjax line naming the folder and the fix."""
  wd, args = damaged_workdir
  proc = _cli(args + verbosity, ROOT)
  assert proc.returncode == 5, proc.stderr[-3000:]
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert len(lines) <= 3 and "Traceback" not in proc.stderr, proc.stderr[-5000:]
  assert any("cannot be read (damaged?)" in l and str(wd / "checkpoints") in l
             for l in lines), lines
  assert not os.path.exists(wd / "summary.json")
  with open(wd / "config.json") as f:
    assert json.load(f)["num_steps"] == 4
  if not verbosity:  # Orbax's / TensorStore's own words are in the log file
    log = (wd / "log.txt").read_text()
    assert "Checkpoint step 4 in" in log and "cannot be restored: " in log, log[-3000:]
