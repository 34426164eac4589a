"""The report of a mixing-law setting: test metrics against the law's strength.

For one saved setting (`records.load`): the per-law table of test metrics (mean ± se
over seeds; plain, test-time rescaled, temperature-scaled), the slopes of each metric
against σ²/θ̄² and γ²/θ̄² over the mixup laws (`analysis.slope_vs`, `regress_laws`), the
equal-moment comparisons (`analysis.within_group_test`), the best law against ERM
(`analysis.paired_difference`), and two figures: metric vs strength, and the laws of
equal θ-moments side by side. Used by the mixing-law and Fashion-MNIST studies.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import pandas as pd

from mixjax.studies import analysis
from mixjax.studies import plots
from mixjax.studies import records

METRICS = ["test_accuracy", "test_nll", "test_ece", "test_rs_accuracy", "test_rs_nll",
           "test_rs_ece", "test_ts_nll", "test_ts_ece", "test_rs_ts_ece", "temperature",
           "train_objective"]
PANELS = [("test_accuracy", "test accuracy", "higher"), ("test_nll", "test NLL", "lower"),
          ("test_ece", "test ECE (15 bins)", "lower")]
_SLOPES = PANELS + [("test_rs_accuracy", "test accuracy (rs)", "higher"),
                    ("test_rs_ece", "test ECE (rs)", "lower"),
                    ("test_ts_nll", "test NLL (TS)", "lower")]
_STRENGTHS = [("strength", "σ²/θ̄²"), ("global_strength", "γ²/θ̄²")]


def summarize(rows) -> pd.DataFrame:
  """Per law (in first-appearance order): θ̄, the strengths and METRICS' mean, se."""
  return analysis.group_summary(rows, "law", METRICS,
                                keep=("theta_bar", "strength", "global_strength"))


def _figure_vs(summary: pd.DataFrame, setting: str, out: str) -> str:
  fig, axes = plots.new_figure(2, 3, size=(4.3, 3.4))
  mix = summary[summary.index != "ERM"]
  erm = summary.loc["ERM"] if "ERM" in summary.index else None
  labels = list(mix.index)
  for row_i, (xkey, xname) in enumerate(_STRENGTHS):
    xs = mix[xkey].to_numpy(np.float64)
    span = np.ptp(xs) if len(xs) else 1.0
    for col, (m, name, _) in enumerate(PANELS):
      ax = axes[row_i, col]
      rs = m.replace("test_", "test_rs_")
      plots.errorbar_points(ax, xs, mix[m], mix[m + "_se"], labels)
      plots.errorbar_points(ax, xs, mix[rs], mix[rs + "_se"], labels, hollow=True,
                            offset=0.012 * (span or 1.0), alpha=0.8)
      vals = np.concatenate([mix[k] + sgn * np.nan_to_num(mix[k + "_se"])
                             for k in (m, rs) for sgn in (-1, 1)])
      lo, hi = np.nanmin(vals), np.nanmax(vals)
      pad = 0.12 * (hi - lo) + 1e-4
      ax.set_ylim(lo - pad, hi + pad)
      if erm is not None:  # ERM: a horizontal band (mean ± se), or a note when off scale.
        e, se = erm[m], erm[m + "_se"]
        if lo - pad <= e <= hi + pad:
          ax.axhline(e, color="k", lw=1, ls=":")
          ax.axhspan(e - se, e + se, color="k", alpha=0.08)
        else:
          ax.text(0.02, 0.97 if e > hi else 0.03, f"ERM: {e:.3f} ± {se:.3f} (off scale)",
                  transform=ax.transAxes, fontsize=7, va="top" if e > hi else "bottom")
      fit = analysis.linear_fit(xs, mix[m].to_numpy(np.float64))
      if np.isfinite(fit["slope"]):
        xx = np.linspace(xs.min(), xs.max(), 10)
        ax.plot(xx, fit["intercept"] + fit["slope"] * xx, color="gray", lw=1, ls="--",
                zorder=1)
      ax.set_xlabel(xname)
      ax.set_ylabel(name)
      ax.grid(alpha=0.3)
  from matplotlib.lines import Line2D  # pylint: disable=g-import-not-at-top
  extra = [Line2D([], [], color="k", marker="o", ls="", label="plain"),
           Line2D([], [], color="k", marker="o", mfc="white", ls="", label="rescaled"),
           Line2D([], [], color="gray", ls="--", label="OLS fit (mixup laws, plain)"),
           Line2D([], [], color="k", ls=":", label="ERM (± se band)")]
  plots.family_legend(fig, labels, extra=extra, fontsize=8, loc="lower center",
                      ncol=len(set(plots.family(l) for l in labels)) + len(extra))
  fig.suptitle(f"{setting}: metric vs regularization strength (mean ± se over seeds)",
               fontsize=10)
  fig.tight_layout(rect=(0, 0.05, 1, 1))
  return plots.save(fig, os.path.join(out, f"{setting}_vs_strength.png"), tight=False)


def _figure_groups(summary: pd.DataFrame, groups: dict[str, list[str]], setting: str,
                   out: str) -> str:
  fig, axes = plots.new_figure(1, 3, size=(4.3, 3.6))
  shown = [[l for l in g if l in summary.index] for g in groups.values()]
  for col, (m, name, _) in enumerate(PANELS):
    ax = axes[0, col]
    pos, ticks = 0.0, []
    for group in shown:
      for lab in group:
        ax.bar(pos, summary.loc[lab, m], yerr=summary.loc[lab, m + "_se"],
               color=plots.style(lab)[0], alpha=0.75, capsize=3, edgecolor="k", lw=0.5)
        ticks.append(pos)
        pos += 1
      pos += 0.8
    labels = [l for g in shown for l in g]
    ax.set_xticks(ticks)
    ax.set_xticklabels(labels, rotation=40, ha="right", fontsize=7)
    if labels:
      vals = summary.loc[labels, m]
      pad = 0.6 * (vals.max() - vals.min()) + 1e-3
      ax.set_ylim(vals.min() - pad, vals.max() + pad)
    ax.set_ylabel(name)
    ax.grid(alpha=0.3, axis="y")
  fig.suptitle(f"{setting}: laws with equal θ̄ and σ² ({'; '.join(groups)}), mean ± se",
               fontsize=9)
  return plots.save(fig, os.path.join(out, f"{setting}_equal_moments.png"))


def _header(rec: dict, setting: str) -> str:
  cfg, info = rec["config"], rec["info"]
  train, sizes = cfg["train"], cfg["data_sizes"]
  seconds = info.get("train_seconds", info.get("total_seconds", float("nan")))
  return (f"## {setting}\n\nDataset `{cfg['dataset']}` (train/val/test = "
          f"{sizes['train_x']}/{sizes['val_x']}/{sizes['test_x']}), model "
          f"`{train['model']['name']}` {train['model']['kwargs'] or ''}, "
          f"{train['optimizer']['name']} lr {cfg['lr']} ({train['optimizer']['schedule']}), "
          f"batch {train['batch_size']}, {train['num_epochs']} epochs, "
          f"{len(cfg['seeds'])} seeds × {len(cfg['laws'])} laws = {len(rec['runs'])} runs "
          "(one vmapped program per law structure where `group_mode` auto vmaps: dense "
          "models and convolutions over 1-D signals; one after another for convolutions "
          f"over images on CPU): {seconds:.0f} s of training on {rec['provenance']['cpu_count']} "
          f"CPU cores ({rec['provenance']['jax_backend']}).\n")


def report_setting(out: str, setting: str, groups: dict[str, Sequence[str]], *,
                   header: str | None = None) -> str:
  """The Markdown section of one saved setting OUT/<setting>.json, its figures written
  to OUT. `groups`: {name: labels of laws with equal θ-moments}; `header` replaces the
  setting's description (studies trained with another recipe)."""
  rec = records.load(out, setting)
  rows = analysis.frame(rec["runs"])
  summary = summarize(rows)
  md = [header if header is not None else _header(rec, setting)]
  body = [[law, f"{r['theta_bar']:.3f}", f"{r['strength']:.4f}",
           f"{r['global_strength']:.3f}"]
          + [analysis.fmt(r[m], r[m + "_se"], 2 if "acc" in m else 3,
                          100 if "acc" in m else 1)
             for m in ("test_accuracy", "test_nll", "test_ece", "test_rs_accuracy",
                       "test_rs_nll", "test_rs_ece", "test_ts_ece")]
          + [analysis.fmt(r["temperature"], None, 2)]
          for law, r in summary.iterrows()]
  md.append("Test metrics, mean ± se over seeds (accuracy in %; rs = test-time rescaling; "
            "TS = temperature scaling fit on the validation split; T = fitted "
            "temperature):\n")
  md.append(analysis.markdown_table(
      ["law", "θ̄", "σ²/θ̄²", "γ²/θ̄²", "acc", "NLL", "ECE", "acc (rs)", "NLL (rs)",
       "ECE (rs)", "ECE (TS)", "T"], body))

  mix_rows = rows[rows["law"] != "ERM"]
  md.append("\nSlopes over the mixup laws (ERM excluded), per-law means; t = OLS t-interval "
            "over laws (do the laws follow the line?), boot = cluster bootstrap over seeds "
            "(is the fitted trend more than seed noise?), both 95%; ρ = Spearman rank "
            "correlation; partial = coefficient in the joint fit on σ²/θ̄² and γ²/θ̄²:\n")
  body, verdicts = [], []
  for m, name, better in _SLOPES:
    both = analysis.regress_laws(mix_rows, [k for k, _ in _STRENGTHS], m)
    for xkey, xname in _STRENGTHS:
      f, b = analysis.slope_vs(mix_rows, xkey, m), both[xkey]
      body.append([name, xname, f"{f['slope']:.3g}", f"[{f['ci_low']:.3g}, {f['ci_high']:.3g}]",
                   f"[{f['boot_low']:.3g}, {f['boot_high']:.3g}]", f"{f['spearman']:.2f}",
                   f"{b['coef']:.3g}", f"[{b['ci_low']:.3g}, {b['ci_high']:.3g}]",
                   f"[{b['boot_low']:.3g}, {b['boot_high']:.3g}]"])
      if (m, name, better) in PANELS:
        verdicts.append("- " + analysis.verdict_from_slope(f, better=better, what=name,
                                                            x_name=xname))
  md.append(analysis.markdown_table(
      ["metric", "vs", "slope", "t 95% CI", "boot 95% CI", "ρ", "partial coef. (both)",
       "t 95% CI (partial)", "boot 95% CI (partial)"], body))
  md.append("\nAutomatic reading of the simple slopes (mixup laws only):\n")
  md += [v + "\n" for v in verdicts]

  md.append("\nEqual θ-moments, different shapes (repeated-measures ANOVA over seeds; "
            "a small p says the moments alone do not determine the outcome):\n")
  body = []
  for gname, group in groups.items():
    labels = [l for l in group if l in summary.index]
    if len(labels) < 2:
      continue
    for m, name, _ in PANELS:
      t = analysis.within_group_test(rows, m, labels)
      acc = "accuracy" in m
      means = ", ".join(analysis.fmt(summary.loc[l, m], summary.loc[l, m + "_se"],
                                     2 if acc else 3, 100 if acc else 1) for l in labels)
      body.append([gname, " / ".join(labels), name, means, f"{t['F']:.2f}", f"{t['p']:.3g}"])
  md.append(analysis.markdown_table(["group", "laws", "metric", "means", "F", "p"], body)
            if body else "(no laws with equal θ-moments in this setting)\n")
  if "ERM" in summary.index and len(summary) > 1:
    best = summary.drop(index="ERM")["test_accuracy"].idxmax()
    b = summary.loc[best]
    d = analysis.paired_difference(rows, "test_accuracy", best, "ERM")
    md.append(f"\nBest law by mean test accuracy: {best} "
              f"({analysis.fmt(b['test_accuracy'], b['test_accuracy_se'], 2, 100)}%); "
              f"paired difference to ERM {d['diff'] * 100:+.2f} points, 95% CI "
              f"[{d['ci_low'] * 100:+.2f}, {d['ci_high'] * 100:+.2f}] (selected as the best "
              "of many laws, so optimistic).\n")
  f1 = _figure_vs(summary, setting, out)
  f2 = _figure_groups(summary, {g: list(ls) for g, ls in groups.items()}, setting, out)
  md.append(f"\n![{setting} vs strength]({os.path.basename(f1)})\n\n"
            f"![{setting} equal moments]({os.path.basename(f2)})\n")
  return "\n".join(md)


def recipe_header(out: str, setting: str) -> str:
  """The description of a setting trained with a recipe's config (config["train"]; a
  record of the earlier layout: config["recipe"]), for `report_setting(header=...)`."""
  rec = records.load(out, setting)
  cfg, rows = rec["config"], rec["runs"]
  r = cfg.get("train") or cfg["recipe"]
  seconds = rec["info"].get("train_seconds") or sum(x.get("train_time_s") or 0
                                                     for x in rows)
  times = [x["train_time_s"] for x in rows if x.get("train_time_s")]
  return (f"## {setting}\n\nDataset `{r['dataset']['name']}` (training examples used: "
          f"{r['dataset']['num_train'] or 'all'}; validation fraction "
          f"{r['dataset']['val_fraction']}), model `{r['model']['name']}` "
          f"{r['model']['kwargs']}, {r['optimizer']['name']} lr {r['optimizer']['lr']} "
          f"({r['optimizer']['schedule']}), batch {r['batch_size']}, {r['num_epochs']} "
          f"epochs, crop + flip, {len(cfg['seeds'])} seeds × {len(cfg['laws'])} laws = "
          f"{len(rows)} runs, one after another: {seconds:.0f} s of training in all "
          f"(median {np.median(times):.0f} s a run) on {rec['provenance']['cpu_count']} "
          f"CPU cores ({rec['provenance']['jax_backend']}).\n")
