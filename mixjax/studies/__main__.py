r"""The report step of a study: rows from the trained runs, then tables and figures.

  # 1. train a setting (the one way to train: the main entry's sweep)
  python -m mixjax.main --config=experiments/studies/mixing_law/config.py:mnist1d_mlp \
      --sweep --workdir=runs/mixing_law/mnist1d_mlp
  # 2. its rows (and the study's measurements) into results/mixing_law/mnist1d_mlp.json,
  #    then the report of every saved setting (report.md, figures)
  python -m mixjax.studies --config=experiments/studies/mixing_law/config.py:mnist1d_mlp \
      --workdir=runs/mixing_law/mnist1d_mlp --out=results/mixing_law
  # the report alone, from the saved JSON files (no setting named: nothing is collected)
  python -m mixjax.studies --config=experiments/studies/mixing_law/config.py \
      --out=results/mixing_law
  # does a rerun reproduce the recorded rows? (bit for bit; exit status 1 if not)
  python -m mixjax.studies --config=experiments/studies/mixing_law/config.py:mnist1d_mlp \
      --workdir=runs/rerun --out=/tmp/rerun --compare_to=results/mixing_law/mnist1d_mlp.json

A study that trains nothing (collinearity) computes its setting in step 2, without
--workdir. See `mixjax.studies.study` for what a study file holds. Bad input (an unknown
setting, a workdir whose runs have not finished) exits with one line naming the fix.
"""
from __future__ import annotations

import os
import sys
import time

from absl import app
from absl import flags

from mixjax import errors
from mixjax.studies import records
from mixjax.studies import study

_CONFIG = flags.DEFINE_string(
    "config", None, "The study's config, experiments/studies/<study>/config.py, with "
    ":<setting> to collect that setting before the report.", required=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Where `python -m mixjax.main --config=<same> --sweep` trained the "
    "setting.")
_OUT = flags.DEFINE_string("out", None, "The study's results folder (results/<study>).",
                           required=True)
_COMPARE_TO = flags.DEFINE_string(
    "compare_to", None, "A saved record (results/<study>/<setting>.json) the collected rows "
    "must equal, value by value (wall-clock times aside); exit status 1 if they do not.")


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  try:
    module, setting = study.load(_CONFIG.value)
    os.makedirs(_OUT.value, exist_ok=True)
    if setting is not None:
      t0 = time.time()
      path = study.collect(_CONFIG.value, _WORKDIR.value, _OUT.value)
      print(f"[studies] {path} written in {time.time() - t0:.0f} s", flush=True)
    module.report(_OUT.value)
    print(f"[studies] {os.path.join(_OUT.value, 'report.md')} written", flush=True)
    if _COMPARE_TO.value:
      if setting is None:
        raise errors.ConfigError("--compare_to needs a setting to collect, "
                                 f"--config={_CONFIG.value}:<setting>.")
      ref = os.path.splitext(_COMPARE_TO.value)
      diffs = records.compare_rows(
          records.load(_OUT.value, setting)["runs"],
          records.load(os.path.dirname(ref[0]) or ".", os.path.basename(ref[0]))["runs"])
      print("\n".join(diffs) + f"\n[studies] {len(diffs)} rows differ from "
            f"{_COMPARE_TO.value}" if diffs else
            f"[studies] every row equals {_COMPARE_TO.value}", flush=True)
      if diffs:
        sys.exit(1)
  except errors.MixjaxError as e:
    print(f"{e.prefix}: {e}" if e.prefix else str(e), file=sys.stderr)
    sys.exit(e.exit_code)


if __name__ == "__main__":
  app.run(main)
