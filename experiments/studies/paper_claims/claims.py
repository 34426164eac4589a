"""The paper's claims as sweeps and reports: test-time rescaling on/off per law, and
training variants (ERM, ERM on transformed data, sampled mixup, the approximate risk
with chosen terms) compared under a few laws.

A variant is (label, method, approx terms); `variant_points` makes its sweep points
(ERM with its own law only) and `variant_of` names a trained run's variant from its
config, so the rows carry a "variant" column.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from scipy import stats as sp_stats

from mixjax.studies import analysis
from mixjax.studies import laws
from mixjax.studies import plots
from mixjax.studies import records
from mixjax.studies import runs as runs_lib

Variant = tuple[str, str, tuple[str, ...]]


def variant_points(variants: Sequence[Variant], law_list: Sequence[dict],
                   seeds: Sequence[int]) -> list[dict]:
  """The points of every (variant, law, seed); a variant of method "erm" trains once,
  under the ERM law."""
  pts = []
  for _, method, terms in variants:
    vlaws = [laws.law("erm")] if method == "erm" else list(law_list)
    pts += runs_lib.points(vlaws, seeds, method__name=method, method__terms=tuple(terms))
  return pts


def variant_of(config, variants: Sequence[Variant]) -> str:
  """The label of the variant (method, terms) a run's config trained."""
  key = (config.method.name, tuple(config.method.terms))
  return next(label for label, method, terms in variants if (method, tuple(terms)) == key)


def _interval(d: np.ndarray, scale: float, digits: int) -> str:
  """'mean [low, high]' of paired differences: the t-interval (scipy.stats)."""
  d = d[np.isfinite(d)] * scale
  if len(d) < 2:
    return "n/a"
  half = sp_stats.t.ppf(0.975, len(d) - 1) * sp_stats.sem(d)
  lo, hi = d.mean() - half, d.mean() + half
  return f"{d.mean():+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]"


def report_rescaling(out: str, setting: str) -> str:
  """Rescaled vs plain test metrics per law, paired by seed; figure OUT/rescaling.png."""
  rec = records.load(out, setting)
  rows = analysis.frame(rec["runs"])
  metrics = (("accuracy", 100, 2, "Δ test accuracy (points)"), ("nll", 1, 3, "Δ test NLL"),
             ("ece", 1, 3, "Δ test ECE"))
  for m, *_ in metrics:
    rows[f"delta_{m}"] = rows[f"test_rs_{m}"] - rows[f"test_{m}"]
  cols = [f"{p}_{m}" for m, *_ in metrics for p in ("test", "test_rs", "delta")]
  summary = analysis.group_summary(rows, "law", cols, keep=("theta_bar",))
  body = []
  for law, sub in rows.groupby("law", sort=False):
    r = summary.loc[law]
    cells = [law, f"{r['theta_bar']:.3f}"]
    for m, scale, dig, _ in metrics:
      cells += [analysis.fmt(r[f"test_{m}"], r[f"test_{m}_se"], dig, scale),
                analysis.fmt(r[f"test_rs_{m}"], r[f"test_rs_{m}_se"], dig, scale),
                _interval(sub[f"delta_{m}"].to_numpy(np.float64), scale, dig)]
    body.append(cells)
  fig, axes = plots.new_figure(1, 3, size=(4.2, 3.4))
  mix = summary[summary.index != "ERM"]
  for ax, (m, scale, _, name) in zip(axes[0], metrics):
    ys, es = mix[f"delta_{m}"] * scale, mix[f"delta_{m}_se"] * scale
    plots.errorbar_points(ax, mix["theta_bar"], ys, es, list(mix.index))
    for x, y, lab in zip(mix["theta_bar"], ys, mix.index):
      ax.annotate(lab, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.axhline(0, color="k", lw=0.8)
    ax.set(xlabel="θ̄ of the law", ylabel=f"{name}, rescaled − plain")
    ax.grid(alpha=0.3)
  fig.suptitle("Effect of test-time rescaling (paired by seed; mean ± se)", fontsize=10)
  f = plots.save(fig, os.path.join(out, "rescaling.png"))
  cfg = rec["config"]
  return "\n".join([
      "## (a) Test-time rescaling on/off per law\n",
      f"MNIST-1D, MLP {tuple(cfg['train']['model']['kwargs']['hidden_sizes'])}, Adam lr "
      f"{cfg['lr']}, {cfg['train']['num_epochs']} epochs, {len(cfg['seeds'])} seeds. "
      "Rescaled: f_test(x) = ȳ + (f(x̄ + θ̄(x − x̄)) − ȳ)/θ̄ (docs/THEORY.md §5). Δ = "
      "rescaled − plain, paired by seed, mean with 95% t-interval.\n",
      analysis.markdown_table(
          ["law", "θ̄", "acc plain", "acc rescaled", "Δ acc (pts)", "NLL plain",
           "NLL rescaled", "Δ NLL", "ECE plain", "ECE rescaled", "Δ ECE"], body),
      f"\n![rescaling]({os.path.basename(f)})\n"])


_APPROX_METRICS = (("test_accuracy", 100, 2, "acc"), ("test_nll", 1, 3, "NLL"),
                   ("test_ece", 1, 3, "ECE"), ("test_rs_accuracy", 100, 2, "acc (rs)"),
                   ("test_rs_ece", 1, 3, "ECE (rs)"))


def report_approx(out: str, setting: str) -> str:
  """Each (law, variant): test metrics and the last epoch's training objective (mean ±
  se over seeds); figure OUT/approx.png."""
  rec = records.load(out, setting)
  cfg, raw = rec["config"], analysis.frame(rec["runs"])
  rows = raw.copy()
  rows["nonfinite"] = ~np.isfinite(raw["train_objective"].astype(np.float64))
  summary = analysis.group_summary(rows, ["law", "variant"],
                                   [m for m, *_ in _APPROX_METRICS] + ["train_objective"])
  nonfinite = rows.groupby(["law", "variant"], sort=False)["nonfinite"].sum()
  variants = analysis.unique(rows, "variant")
  body = []
  for law in analysis.unique(rows, "law"):  # law-major, variants in their order
    for var in variants:
      if (law, var) not in summary.index:
        continue
      r = summary.loc[(law, var)]
      bad = int(nonfinite[(law, var)])
      body.append([var, law] + [analysis.fmt(r[m], r[m + "_se"], d, s)
                                for m, s, d, _ in _APPROX_METRICS]
                  + [analysis.fmt(r["train_objective"], r["train_objective_se"], 3)
                     + (f" ({bad} non-finite)" if bad else "")])
  fig, axes = plots.new_figure(1, 3, size=(5.0, 3.8))
  mix_laws = [l for l in analysis.unique(rows, "law") if l != "ERM"]
  width = 0.8 / max(len(mix_laws), 1)
  for ax, (m, name) in zip(axes[0], (("test_accuracy", "test accuracy"),
                                     ("test_nll", "test NLL"), ("test_ece", "test ECE"))):
    if ("ERM", "ERM") in summary.index:  # ERM does not depend on the law: one gray bar.
      e = summary.loc[("ERM", "ERM")]
      ax.bar([variants.index("ERM")], [e[m]], width=0.8 * width * len(mix_laws),
             yerr=[e[m + "_se"]], color="tab:gray", alpha=0.75, capsize=2, edgecolor="k",
             lw=0.4, label="ERM")
    for li, law in enumerate(mix_laws):
      sub = summary.loc[law]
      xs = [variants.index(v) + (li - (len(mix_laws) - 1) / 2) * width for v in sub.index]
      ax.bar(xs, sub[m], width=width, yerr=sub[m + "_se"],
             color=("tab:blue", "tab:red", "tab:green")[li % 3], alpha=0.75, capsize=2,
             label=f"law {law}", edgecolor="k", lw=0.4)
    if m == "test_nll":  # collapsed variants reach NLL ≫ 1: log scale
      ax.set_yscale("log")
      name += " (log scale)"
    else:
      ax.set_ylim(0, 1.1 * np.nanmax(summary[m]))
    ax.set_xticks(range(len(variants)))
    ax.set_xticklabels(variants, rotation=40, ha="right", fontsize=7)
    ax.set_ylabel(name)
    ax.grid(alpha=0.3, axis="y")
  axes[0, 0].legend(fontsize=7)
  fig.suptitle("Approximate mixup vs sampled mixup vs ERM variants (mean ± se over seeds)",
               fontsize=10)
  f = plots.save(fig, os.path.join(out, "approx.png"))
  seconds = rec["info"].get("train_seconds", rec["info"].get("total_seconds", np.nan))
  return "\n".join([
      "## (b) Approximate mixup as a training objective\n",
      f"MNIST-1D, MLP {tuple(cfg['train']['model']['kwargs']['hidden_sizes'])} tanh, Adam lr "
      f"{cfg['lr']}, {cfg['train']['num_epochs']} epochs, {len(cfg['seeds'])} seeds; "
      "approx = ERM on transformed data + the selected terms of Theorem 3 with the exact "
      "estimator (full Jacobians and Hessians per example) on each minibatch, with the "
      f"training set's statistics. Training time of all variants: {seconds:.0f} s.\n",
      analysis.markdown_table(["variant", "law"] + [n for *_, n in _APPROX_METRICS]
                              + ["training objective, last epoch"], body),
      "\nA negative training objective means the optimizer found parameters where the "
      "quadratic risk is below the cross-entropy floor: the hessian term (and, without the "
      "jacobian term, the cross term) is unbounded below, so the truncated expansion is "
      "not a valid objective on its own.\n",
      "\n(ERM is trained once and listed under the ERM law.)\n",
      f"\n![approx]({os.path.basename(f)})\n"])
