r"""Runs the points of a config's `get_sweep()` one after the other (or prints them).

  python launch/sweep.py --config=experiments/mnist1d.py --workdir=runs/mnist1d_sweep
  python launch/sweep.py --config=experiments/cifar10.py --workdir=runs/c10 --dry_run
  python launch/sweep.py ... -- --config.num_epochs=10     (flags after -- go to every run)

For one process that runs every point itself, use `python -m mixjax.main --config=CONFIG
--workdir=WORKDIR --sweep` instead; this launcher is for one process per point (clusters).

Each point is a dict of overrides {"a.b": value}; it runs as
`python -m mixjax.main --config=CONFIG --workdir=WORKDIR/<point name> --config.a.b=value ...`
(dict values such as sampler.params become dict literals), so every point is resumable
and has its own config.json / metrics.jsonl / summary.json. With `--dry_run` the commands
are printed and nothing runs; on a cluster, submit each printed command as a job.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys

from absl import app
from absl import flags

from mixjax.train import sweeps


def _define_flags() -> None:
  """Defined only when run as a script, so that importing this module (tests) does not
  clash with mixjax.main's --config flag."""
  flags.DEFINE_string("config", None, "Config file with get_config()/get_sweep().")
  flags.DEFINE_string("workdir", None, "Parent directory of the runs' workdirs.")
  flags.DEFINE_bool("dry_run", False, "Print the commands, run nothing.")
  flags.DEFINE_string("python", sys.executable, "Python interpreter for the runs.")
  flags.mark_flags_as_required(["config", "workdir"])


load_sweep = sweeps.load_sweep
_flag_value = sweeps.flag_value


def sweep_commands(config_path: str, workdir: str, extra: list[str],
                   python: str = sys.executable) -> list[list[str]]:
  """One `mixjax.main` command (argv list) per sweep point."""
  cmds = []
  for i, overrides in enumerate(load_sweep(config_path)):
    run_dir = os.path.join(workdir, sweeps.point_name(i, overrides))
    cmd = [python, "-m", "mixjax.main", f"--config={config_path}", f"--workdir={run_dir}"]
    cmd += [f"--config.{k}={_flag_value(v)}" for k, v in overrides.items()]
    cmds.append(cmd + list(extra))
  return cmds


def main(argv) -> None:
  extra = argv[1:]
  f = flags.FLAGS
  cmds = sweep_commands(f.config, f.workdir, extra, f.python)
  failed = 0
  for cmd in cmds:
    print(shlex.join(cmd), flush=True)
    if not f.dry_run and subprocess.run(cmd, check=False).returncode != 0:
      failed += 1
      print(f"FAILED: {shlex.join(cmd)}", file=sys.stderr, flush=True)
  if failed:
    sys.exit(f"{failed} of {len(cmds)} sweep points failed.")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
