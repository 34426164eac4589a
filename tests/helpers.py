"""Shared helpers of the test modules (plain functions; the fixtures are in conftest.py,
which no test module imports): configs of experiments/, run summaries, the method context
of the base config, and `python -m mixjax.main` run in this process."""
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def method_context(*, sampler=None, moments=None, axis_name="data", **overrides):
  """`MethodContext.from_config` of the base config with `overrides` ({"mixing.fold":
  True, ...}, dotted keys as keyword names with "__" for "."), for tests of the step and
  the methods: e.g. `method_context(sampler=samplers.beta(0.7), method__eta=0.6)`."""
  from mixjax.train import config as config_lib  # pylint: disable=g-import-not-at-top
  from mixjax.train import methods  # pylint: disable=g-import-not-at-top
  from mixjax.train import sweeps  # pylint: disable=g-import-not-at-top
  config = sweeps.sweep_config(config_lib.base_config(),
                               {k.replace("__", "."): v for k, v in overrides.items()})
  return methods.MethodContext.from_config(config, sampler=sampler, moments=moments,
                                           axis_name=axis_name)


def get_config(name, **overrides):
  """experiments/<name>.py's config (`name` may carry a `:arg`) with `overrides`
  ({"a.b": value}) applied."""
  from mixjax.train import sweeps  # pylint: disable=g-import-not-at-top
  file, _, arg = name.partition(":")
  module = sweeps.load_config_module(os.path.join(ROOT, "experiments", f"{file}.py"))
  config = module.get_config(arg) if arg else module.get_config()
  return sweeps.sweep_config(config, overrides)


def read_summary(workdir):
  """WORKDIR/summary.json."""
  import json  # pylint: disable=g-import-not-at-top
  with open(os.path.join(workdir, "summary.json")) as f:
    return json.load(f)


def comparable(records):
  """metrics.jsonl records without wall-clock rates and without the resume markers."""
  drop = ("steps_per_sec",)
  return [{k: v for k, v in r.items() if k not in drop} for r in records
          if "resumed_from_step" not in r]


def parse_main_flags(argv, monkeypatch):
  """Parses `python -m mixjax.main argv...`'s flags in this process."""
  import sys  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  from mixjax import main  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import  (defines the flags)
  argv = ["mixjax.main"] + list(argv)
  monkeypatch.setattr(sys, "argv", argv)  # config_flags reads `--config.*` from sys.argv
  flags.FLAGS.unparse_flags()
  for name in list(flags.FLAGS):  # override flags are defined per parse
    if name.startswith("config."):
      delattr(flags.FLAGS, name)
  flags.FLAGS(argv)


def run_main(argv, monkeypatch):
  """`python -m mixjax.main argv...` in this process (flags parsed, then main)."""
  from mixjax import main as main_lib  # pylint: disable=g-import-not-at-top
  parse_main_flags(argv, monkeypatch)
  main_lib.main(["mixjax.main"])


def one_line_error(capsys) -> str:
  """stderr of a failed command: exactly one non-empty line, no traceback."""
  err = capsys.readouterr().err
  lines = [l for l in err.splitlines() if l.strip()]
  assert len(lines) == 1 and "Traceback" not in err, err
  return lines[0]
