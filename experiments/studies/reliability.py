r"""Reliability diagrams for ERM, mixup (Beta(1, 1)) and the best law found.

The "best law" is read from the mixing-law study's saved MNIST-1D MLP results
(`--mixing_law results/mixing_law`), chosen by the mean *validation* accuracy with
test-time rescaling (never by a test metric); `--best_law` overrides it with a law
label. The three laws are retrained with the mixing-law study's MNIST-1D MLP setting
(`mixing_law.get_config("mnist1d_mlp")`, through the one trainer; each run's
predictions.npz keeps its test logits), and the diagrams pool the
15-bin `mixjax.eval.metric_sums` over seeds (`mixjax.eval.reliability_curve`), with the
per-seed spread of each bin's accuracy as error bars; plain, test-time rescaled, and
temperature-scaled (validation-fit) predictions.

  python -m experiments.studies.reliability --out results/reliability
  python -m experiments.studies.reliability --out results/reliability --mode=report
"""
from __future__ import annotations

import argparse
import os
import sys

import jax.numpy as jnp
import numpy as np

from experiments.studies import common
from experiments.studies import mixing_law
from mixjax import eval as mj_eval
from mixjax.studies import analysis
from mixjax.studies import plots
from mixjax.studies import records
from mixjax.studies import runs as study_runs
from mixjax.train import sweeps

PART = "mnist1d_mlp"
MIN_BIN_COUNT = 10  # bins with fewer pooled test predictions are not drawn


def _all_laws_by_label() -> dict[str, dict]:
  return {mixing_law.label(l): l for l in mixing_law.all_laws()}


def pick_best_law(mixing_dir: str) -> tuple[str, str]:
  """(label, reason): the mixup law with the best mean validation accuracy (rescaled)."""
  rec = records.load(mixing_dir, PART)
  summary = analysis.group_summary(rec["runs"], "law", ["val_rs_accuracy", "val_accuracy"])
  cands = [r for r in summary if r["law"] != "ERM"]
  best = max(cands, key=lambda r: r["val_rs_accuracy"])
  return best["law"], (f"best mean validation accuracy with rescaling in {mixing_dir}/"
                       f"{PART}.json ({best['val_rs_accuracy'] * 100:.2f}% over "
                       f"{best['n']} seeds)")


def run(args) -> None:
  known = _all_laws_by_label()
  if args.best_law:
    if args.best_law not in known:
      raise ValueError(f"--best_law {args.best_law!r} unknown; known: {', '.join(known)}.")
    best, reason = args.best_law, "given by --best_law"
  else:
    best, reason = pick_best_law(args.mixing_law)
  labels = ["ERM", "Beta(1)"] + ([best] if best not in ("ERM", "Beta(1)") else [])
  cfg = mixing_law.get_config(PART)
  from mixjax.train import config as config_lib  # pylint: disable=g-import-not-at-top
  cfg = sweeps.sweep_config(cfg, {"eval.every_epochs": 0})
  seeds = list(range(args.seeds))
  if args.quick:
    cfg, seeds = mixing_law.config_quick(cfg), seeds[:2]
  pts = study_runs.points([known[l] for l in labels], seeds)
  print(f"[reliability] laws {labels} (best: {reason}), {len(seeds)} seeds", flush=True)
  runs_dir = os.path.join(args.out, "runs")
  named = study_runs.train(cfg, pts, runs_dir)
  arrays = {"logits_test": study_runs.predictions(named, runs_dir, "test_logits"),
            "logits_test_rs": study_runs.predictions(named, runs_dir,
                                                     "test_logits_rescaled")}
  with np.load(os.path.join(runs_dir, named[0][0], "predictions.npz")) as z:
    arrays["test_labels"] = np.asarray(z["test_labels"])
  records.save(args.out, "reliability", config={
      "setting": PART, "train": study_runs.config_record(cfg), "lr": cfg.optimizer.lr,
      "seeds": seeds, "laws": labels, "best_law": best, "best_reason": reason,
      "quick": bool(args.quick)}, runs=study_runs.rows(named, runs_dir), arrays=arrays)


def _curves(logits: np.ndarray, labels: np.ndarray):
  """Pooled reliability curve over seeds and the per-seed bin accuracies."""
  per = [mj_eval.metric_sums(jnp.asarray(lg), jnp.asarray(labels)) for lg in logits]
  pooled = sum(per[1:], per[0])
  curve = mj_eval.reliability_curve(pooled)
  seed_acc = np.stack([np.asarray(mj_eval.reliability_curve(p).accuracy) for p in per])
  ece = [mj_eval.finalize_metrics(p)["ece"] for p in per]
  return curve, seed_acc, ece


def report(args) -> None:
  rec = records.load(args.out, "reliability")
  rows, arrays, cfg = rec["runs"], rec["arrays"], rec["config"]
  labels = np.asarray(arrays["test_labels"]).astype(np.int32)
  laws = cfg["laws"]
  kinds = [("plain", "logits_test", None), ("rescaled", "logits_test_rs", None),
           ("temperature-scaled", "logits_test", "temperature")]
  fig, axes = plots.new_figure(len(kinds), len(laws), size=(3.4, 3.3))
  md = ["# Reliability diagrams\n",
        f"MNIST-1D MLP setting of the mixing-law study ({cfg['train']['num_epochs']} "
        f"epochs, {len(cfg['seeds'])} seeds, 15 bins). Best law: **{cfg['best_law']}** "
        f"({cfg['best_reason']}). Temperature scaling is fit on the validation split. "
        "Bars: pooled accuracy per confidence bin (all seeds' test predictions); error "
        "bars: ± se of the bin accuracy over seeds; the gap to the diagonal is the "
        "miscalibration. Generated by `python -m experiments.studies.reliability --out "
        f"{args.out} --mode=report`.\n"]
  body = []
  for j, law in enumerate(laws):
    idx = [i for i, r in enumerate(rows) if r["law"] == law]
    for i, (kind, key, temp_key) in enumerate(kinds):
      lg = np.asarray(arrays[key])[idx]
      if temp_key is not None:
        t = np.asarray([rows[k][temp_key] for k in idx])
        lg = lg / t[:, None, None]
      curve, seed_acc, ece = _curves(lg, labels)
      ax = axes[i, j]
      edges = curve.bin_edges
      centers = 0.5 * (edges[1:] + edges[:-1])
      ok = curve.count >= MIN_BIN_COUNT
      se = np.nanstd(seed_acc, axis=0, ddof=1) / np.sqrt(np.sum(np.isfinite(seed_acc), 0))
      ax.bar(centers[ok], curve.accuracy[ok], width=edges[1] - edges[0], color="tab:blue",
             alpha=0.6, edgecolor="k", lw=0.4, label="accuracy")
      ax.errorbar(centers[ok], curve.accuracy[ok], yerr=se[ok], fmt="none", ecolor="k",
                  capsize=2, lw=0.8)
      ax.plot(curve.confidence[ok], curve.confidence[ok], "o", color="tab:red", ms=3,
              label="mean confidence")
      ax.plot([0, 1], [0, 1], "k--", lw=0.8)
      m, s_, _ = analysis.mean_se(ece)
      ax.set_title(f"{law} — {kind}\nECE {m:.3f} ± {s_:.3f}", fontsize=8)
      ax.set_xlim(0, 1)
      ax.set_ylim(0, 1)
      ax.set_xlabel("confidence")
      ax.set_ylabel("accuracy")
      ax.grid(alpha=0.3)
      ax2 = ax.twinx()
      ax2.plot(centers[ok], curve.count[ok] / curve.count.sum(), color="gray", lw=1,
               ls=":", label="fraction of examples")
      ax2.set_ylim(0, 1)
      ax2.set_ylabel("fraction of examples", fontsize=7, color="gray")
      ax2.tick_params(labelsize=6, colors="gray")
      body.append([law, kind, analysis.fmt(m, s_, 3)])
  from matplotlib.lines import Line2D  # pylint: disable=g-import-not-at-top
  h, _ = axes[0, 0].get_legend_handles_labels()
  h = h + [Line2D([], [], color="gray", ls=":", label="fraction of examples (right axis)"),
           Line2D([], [], color="k", ls="--", label="perfect calibration")]
  fig.legend(handles=h, loc="lower center", ncol=len(h), fontsize=8)
  fig.suptitle("Reliability diagrams on MNIST-1D (test set; pooled over seeds; bins with "
               f"< {MIN_BIN_COUNT} predictions not drawn)", fontsize=10)
  fig.tight_layout(rect=(0, 0.03, 1, 1))
  f = plots.save(fig, os.path.join(args.out, "reliability.png"), tight=False)
  md.append(analysis.markdown_table(["law", "prediction", "ECE (mean ± se over seeds)"], body))
  md.append(f"\n![reliability]({os.path.basename(f)})\n")
  with open(os.path.join(args.out, "report.md"), "w") as fh:
    fh.write("\n".join(md))


def main(argv=None) -> None:
  extra = argparse.ArgumentParser(add_help=False)
  extra.add_argument("--mixing_law", default="results/mixing_law")
  extra.add_argument("--best_law", default=None)
  known, rest = extra.parse_known_args(argv)
  args = common.parse_args(__doc__.splitlines()[0], [PART], rest)
  args.mixing_law, args.best_law = known.mixing_law, known.best_law
  common.main(args, run, report)


if __name__ == "__main__":
  main(sys.argv[1:])
