"""mixjax/registry.py: an unknown name fails with one line that lists the known names and,
for a near miss, suggests the closest ("Did you mean 'beta'?"), for every registry a config
names (sampler, method, model, dataset, loss), through the public lookups, through
validate_config and through the real command line."""
from __future__ import annotations

import difflib
import os

import pytest

from mixjax import data
from mixjax import losses
from mixjax import models
from mixjax import samplers
from mixjax import train
from mixjax.registry import Registry
from mixjax.train import methods

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MNIST1D = os.path.join(ROOT, "experiments", "mnist1d.py")

# (registry, public lookup, config key, misspelling, the name it should suggest)
TYPOS = [
    (samplers.SAMPLERS, samplers.make_sampler, "sampler.name", "betta", "beta"),
    (methods.METHODS, methods.METHODS.get, "method.name", "mixpu", "mixup"),
    (models.MODELS, lambda n: models.get_model(n, num_classes=10), "model.name", "lenett",
     "lenet"),
    (data.DATASETS, data.load_dataset, "dataset.name", "fashion_mnsit", "fashion_mnist"),
    (losses.LOSSES, losses.get_loss, "method.loss", "cross_entropi", "cross_entropy"),
]
IDS = [t[2] for t in TYPOS]


def _check_message(msg: str, registry: Registry, typo: str, expected: str):
  assert "\n" not in msg, msg
  assert f"{typo!r}" in msg, msg
  assert expected in registry.names()  # the suggestion is a real name
  assert f"Did you mean {expected!r}" in msg, msg
  known = msg.split(f"Known {registry.kind}s: ", 1)[1].split(". Did you mean", 1)[0]
  assert known.split(", ") == registry.names(), msg


@pytest.mark.parametrize("registry,lookup,key,typo,expected", TYPOS, ids=IDS)
def test_public_lookup_suggests_the_closest_name(registry, lookup, key, typo, expected):
  del key
  with pytest.raises(ValueError) as e:
    lookup(typo)
  _check_message(str(e.value), registry, typo, expected)


@pytest.mark.parametrize("registry,lookup,key,typo,expected", TYPOS, ids=IDS)
def test_validate_config_suggests_the_closest_name(registry, lookup, key, typo, expected):
  del lookup
  config = train.base_config()
  section, leaf = key.split(".")
  config[section][leaf] = typo
  with pytest.raises(ValueError) as e:  # ConfigError, a ValueError
    train.validate_config(config, num_devices=4)
  _check_message(str(e.value), registry, typo, expected)
  assert f"--config.{key}=" in str(e.value)


def test_suggestions_follow_difflib():
  """Up to three close names, closest first (difflib's order), none when nothing is close
  or the name is not a string; the known names are always listed."""
  reg = Registry("colour")
  for name in ("red", "green", "blue", "greenish", "grey"):
    reg.register(name, name)
  with pytest.raises(ValueError) as e:
    reg.get("gren")
  close = difflib.get_close_matches("gren", sorted(reg.names()), n=3, cutoff=0.6)
  assert close[0] == "green" and len(close) >= 2  # the reference itself offers a choice
  assert str(e.value) == (
      "Unknown colour 'gren'. Known colours: blue, green, greenish, grey, red. "
      f"Did you mean {' or '.join(repr(c) for c in close)}?")
  known = "Known colours: blue, green, greenish, grey, red."
  with pytest.raises(ValueError) as e:
    reg.get("ultraviolet")
  assert str(e.value) == f"Unknown colour 'ultraviolet'. {known}"
  with pytest.raises(ValueError) as e:
    reg.get(None)
  assert str(e.value) == f"Unknown colour None. {known}"
  assert reg.get("red") == "red"


def test_cli_misspelled_sampler_exits_2_with_a_suggestion(run_main_cli, tmp_path):
  """`python -m mixjax.main --config.sampler.name=betta`: exit 2, one line on stderr with
  the suggestion and the known samplers, nothing written."""
  workdir = tmp_path / "w"
  proc = run_main_cli(f"--config={MNIST1D}", f"--workdir={workdir}",
                      "--config.sampler.name=betta")
  assert proc.returncode == 2, proc.stderr
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
  assert "'betta'" in lines[0] and "Did you mean 'beta'?" in lines[0], lines[0]
  assert "w_shaped" in lines[0] and "--config.sampler.name=" in lines[0], lines[0]
  assert not workdir.exists()


# `load_entry_point`: "MODULE:ATTR", the `module:attr` convention of entry points.
def test_entry_point_from_a_file_relative_or_absolute_or_a_module(user_law_dir,
                                                                monkeypatch):
  """A .py file outside the repository, named relative to the current directory or
  absolutely, is loaded once: every name of it gives the same function. A module on
  sys.path is imported by name."""
  from mixjax.registry import is_entry_point, load_entry_point  # pylint: disable=g-import-not-at-top
  monkeypatch.chdir(user_law_dir.parent)
  rel = load_entry_point("laws/mylaw.py:trunc_normal")
  assert rel is load_entry_point(f"{user_law_dir}/mylaw.py:trunc_normal")
  assert rel is load_entry_point("./laws/mylaw.py:trunc_normal")
  assert rel(mu=0.8, sigma=0.1).label == "trunc_normal(0.8,0.1)"
  monkeypatch.syspath_prepend(str(user_law_dir))
  by_module = load_entry_point("mylaw:trunc_normal")
  assert by_module.__module__ == "mylaw" and callable(by_module)
  assert load_entry_point("os.path:join") is os.path.join
  assert is_entry_point("mylaw.py:f") and not is_entry_point("beta")


def test_entry_point_errors_are_one_line_with_the_fix(user_law_dir, tmp_path,
                                                      monkeypatch):
  from mixjax.registry import load_entry_point  # pylint: disable=g-import-not-at-top
  monkeypatch.chdir(tmp_path)
  (tmp_path / "broken.py").write_text("import math\nraise KeyError('oops')\n")
  cases = [
      ("nope.py:f", ["no such file", str(tmp_path / "nope.py"),
                     "relative to the current directory"]),
      ("no_such_module_xyz:f", ["no module named 'no_such_module_xyz'", ".py"]),
      ("broken.py:f", ["importing", "raised KeyError", "oops", "Fix the file"]),
      (f"{user_law_dir}/mylaw.py:trunc_norml",
       ["has no attribute 'trunc_norml'", "trunc_normal, trunc_normal_mc",
        "Did you mean 'trunc_normal'?"]),
      ("mylaw.py", ["expected MODULE:ATTR"]),
      (":f", ["expected MODULE:ATTR"]),
  ]
  for spec, words in cases:
    with pytest.raises(ValueError) as e:
      load_entry_point(spec)
    msg = str(e.value)
    assert "\n" not in msg, msg
    for w in words:
      assert w in msg, (w, msg)
  # A failed import leaves nothing behind: the fixed file loads.
  (tmp_path / "broken.py").write_text("def f():\n  return 1\n")
  assert load_entry_point("broken.py:f")() == 1
