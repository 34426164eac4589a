r"""Does a study point retrain bit for bit at a later code revision?

Retrain one point of the sweep alone, in a fresh workdir, then compare it with the
study's run and append the check to OUT/reproduction.json (which `report.py` shows):

  python -m mixjax.main --config=experiments/studies/support/config.py:overfit \
      --config.sampler.name=atoms \
      --config.sampler.params='{"points": [0.5, 1.0], "weights": [0.5, 0.5]}' \
      --config.seed=10 --config.dataset.data_dir=DIR --workdir=W
  python experiments/studies/support/reproduce.py --study_run=runs/support/<point> \
      --rerun=W --command='<the command above>' --out=results/support

summary.json and metrics.jsonl are compared value by value, bit for bit (floats as
written), but for the fields that differ between any two runs: the wall-clock time
("train_time_s", "steps_per_sec"), the code revision ("code") and where the run's
checkpoints are relative to its folder ("checkpoint": a sweep's point and a lone run
keep them in different places). Exit status 1 if anything else differs.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

IGNORED = ("train_time_s", "code", "checkpoint", "steps_per_sec")


def _diff(a, b, path: str = "") -> list[str]:
  """The paths where two JSON values differ (exactly; NaN equals NaN)."""
  if isinstance(a, dict) and isinstance(b, dict):
    out = []
    for k in sorted(set(a) | set(b)):
      if k in IGNORED:
        continue
      if k not in a or k not in b:
        out.append(f"{path}{k}: only in {'the rerun' if k in b else 'the study run'}")
      else:
        out += _diff(a[k], b[k], f"{path}{k}.")
    return out
  if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
    return [d for i, (x, y) in enumerate(zip(a, b)) for d in _diff(x, y, f"{path}{i}.")]
  same = a == b or (isinstance(a, float) and isinstance(b, float) and a != a and b != b)
  return [] if same else [f"{path.rstrip('.')}: {a!r} vs {b!r}"]


def compare(study_run: str, rerun: str) -> dict:
  """The differences between two run folders' summary.json and metrics.jsonl."""
  def load(folder):
    with open(os.path.join(folder, "summary.json")) as f:
      summary = json.load(f)
    with open(os.path.join(folder, "metrics.jsonl")) as f:
      metrics = [json.loads(line) for line in f if line.strip()]
    return summary, metrics
  (sa, ma), (sb, mb) = load(study_run), load(rerun)
  diffs = _diff(sa, sb)
  if len(ma) != len(mb):
    diffs.append(f"metrics.jsonl: {len(ma)} vs {len(mb)} records")
  diffs += _diff(ma[:len(mb)], mb[:len(ma)], "metrics.")
  return {"differences": diffs, "summary_keys": len(set(sa) - set(IGNORED)),
          "metrics_records": len(ma), "study_revision": sa["code"]["git_revision"],
          "revision": sb["code"]["git_revision"] + (" (dirty)" if sb["code"].get(
              "git_dirty") else "")}


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--study_run", required=True)
  p.add_argument("--rerun", required=True)
  p.add_argument("--command", required=True, help="how the rerun was trained")
  p.add_argument("--out", required=True, help="the study's results folder")
  a = p.parse_args()
  check = compare(a.study_run, a.rerun) | {
      "point": os.path.basename(os.path.normpath(a.study_run)), "command": a.command,
      "ignored": list(IGNORED)}
  path = os.path.join(a.out, "reproduction.json")
  rep = {"how": "One point of the sweep retrained alone in a fresh workdir at a later "
                "code revision and compared with the study's run "
                "(`experiments/studies/support/reproduce.py`).", "checks": []}
  if os.path.exists(path):
    with open(path) as f:
      rep = json.load(f)
  rep["checks"] = [c for c in rep["checks"] if c["point"] != check["point"]] + [check]
  os.makedirs(a.out, exist_ok=True)
  with open(path, "w") as f:
    json.dump(rep, f, indent=1, ensure_ascii=False)
  print("identical" if not check["differences"] else
        "differs:\n  " + "\n  ".join(check["differences"][:20]))
  return 1 if check["differences"] else 0


if __name__ == "__main__":
  sys.exit(main())
