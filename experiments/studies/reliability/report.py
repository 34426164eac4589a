"""Reliability diagrams of trained runs, pooled over seeds.

`measure` keeps each run's test logits (plain and test-time rescaled, from its
predictions.npz) as the record's arrays; `report_setting` pools the 15-bin
`mixjax.eval.metric_sums` of a law's seeds (`mixjax.eval.reliability_curve`) for plain,
rescaled and temperature-scaled (validation-fit T) predictions, with the per-seed spread
of each bin's accuracy as error bars. `best_law` picks a law from a saved mixing-law
record by its mean validation accuracy with rescaling (never by a test metric).
"""
from __future__ import annotations

import os
from typing import Sequence

import jax.numpy as jnp
import numpy as np

from mixjax import eval as eval_lib
from mixjax.studies import analysis
from mixjax.studies import plots
from mixjax.studies import records
from mixjax.studies import runs as runs_lib

MIN_BIN_COUNT = 10  # bins with fewer pooled test predictions are not drawn


def best_law(out: str, setting: str) -> tuple[str, str]:
  """(label, reason): the mixup law of the saved OUT/<setting>.json with the best mean
  validation accuracy under test-time rescaling."""
  rec = records.load(out, setting)
  summary = analysis.group_summary(rec["runs"], "law", ["val_rs_accuracy"])
  summary = summary.drop(index="ERM", errors="ignore")
  best = summary["val_rs_accuracy"].idxmax()
  return best, (f"best mean validation accuracy with rescaling in "
                f"{os.path.relpath(os.path.join(out, setting))}.json "
                f"({summary.loc[best, 'val_rs_accuracy'] * 100:.2f}% over "
                f"{summary.loc[best, 'n']} seeds)")


def measure(runs: Sequence) -> dict:
  """The runs' (`study.Run`) test logits, plain and rescaled, (R, N, c), and the test
  labels (N,), as a record's arrays."""
  named = [(r.name, r.config) for r in runs]
  root = runs[0].root
  with np.load(os.path.join(runs[0].dir, "predictions.npz")) as z:
    labels = np.asarray(z["test_labels"])
  return {"arrays": {"logits_test": runs_lib.predictions(named, root, "test_logits"),
                     "logits_test_rs": runs_lib.predictions(named, root,
                                                            "test_logits_rescaled"),
                     "test_labels": labels}}


def _curves(logits: np.ndarray, labels: np.ndarray):
  """Pooled reliability curve over seeds, the per-seed bin accuracies and ECEs."""
  per = [eval_lib.metric_sums(jnp.asarray(lg), jnp.asarray(labels)) for lg in logits]
  pooled = sum(per[1:], per[0])
  curve = eval_lib.reliability_curve(pooled)
  seed_acc = np.stack([np.asarray(eval_lib.reliability_curve(p).accuracy) for p in per])
  ece = [eval_lib.finalize_metrics(p)["ece"] for p in per]
  return curve, seed_acc, ece


def _panel(ax, curve, seed_acc, title: str) -> None:
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
  ax.set_title(title, fontsize=8)
  ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy")
  ax.grid(alpha=0.3)
  ax2 = ax.twinx()
  ax2.plot(centers[ok], curve.count[ok] / curve.count.sum(), color="gray", lw=1, ls=":")
  ax2.set_ylim(0, 1)
  ax2.set_ylabel("fraction of examples", fontsize=7, color="gray")
  ax2.tick_params(labelsize=6, colors="gray")


def report_setting(out: str, setting: str) -> str:
  """The Markdown section of the saved OUT/<setting>.json: the ECE table and the
  diagrams (OUT/reliability.png), one column per law, one row per kind of prediction."""
  rec = records.load(out, setting)
  rows, arrays, cfg = analysis.frame(rec["runs"]), rec["arrays"], rec["config"]
  labels = np.asarray(arrays["test_labels"]).astype(np.int32)
  best = rec["extra"].get("best_law", cfg.get("best_law"))
  reason = rec["extra"].get("best_reason", cfg.get("best_reason"))
  kinds = [("plain", "logits_test", False), ("rescaled", "logits_test_rs", False),
           ("temperature-scaled", "logits_test", True)]
  by_law = rows.groupby("law", sort=False)
  fig, axes = plots.new_figure(len(kinds), by_law.ngroups, size=(3.4, 3.3))
  body = []
  for j, (law, sub) in enumerate(by_law):
    for i, (kind, key, scaled) in enumerate(kinds):
      lg = np.asarray(arrays[key])[sub.index.to_numpy()]
      if scaled:
        lg = lg / sub["temperature"].to_numpy()[:, None, None]
      curve, seed_acc, ece = _curves(lg, labels)
      m, se, _ = analysis.mean_se(ece)
      _panel(axes[i, j], curve, seed_acc, f"{law} — {kind}\nECE {m:.3f} ± {se:.3f}")
      body.append([law, kind, analysis.fmt(m, se, 3)])
  from matplotlib.lines import Line2D  # pylint: disable=g-import-not-at-top
  h, _ = axes[0, 0].get_legend_handles_labels()
  h += [Line2D([], [], color="gray", ls=":", label="fraction of examples (right axis)"),
        Line2D([], [], color="k", ls="--", label="perfect calibration")]
  fig.legend(handles=h, loc="lower center", ncol=len(h), fontsize=8)
  fig.suptitle("Reliability diagrams (test set; pooled over seeds; bins with "
               f"< {MIN_BIN_COUNT} predictions not drawn)", fontsize=10)
  fig.tight_layout(rect=(0, 0.03, 1, 1))
  f = plots.save(fig, os.path.join(out, "reliability.png"), tight=False)
  return "\n".join([
      f"## {setting}\n",
      f"{cfg['train']['num_epochs']} epochs, {len(cfg['seeds'])} seeds, 15 bins. Best law: "
      f"**{best}** ({reason}). Temperature scaling is fit on the validation split. Bars: "
      "pooled accuracy per confidence bin (all seeds' test predictions); error bars: ± se "
      "of the bin accuracy over seeds; the gap to the diagonal is the miscalibration.\n",
      analysis.markdown_table(["law", "prediction", "ECE (mean ± se over seeds)"], body),
      f"\n![reliability]({os.path.basename(f)})\n"])
