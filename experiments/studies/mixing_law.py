r"""Does a stronger mixing law regularize better? (docs/THEORY.md §6)

Trains, for each setting, ERM and mixup under many θ-laws (Beta(α, α), W-shaped,
RegMixup-equivalent, the σ²/θ̄²-optimal law, and discrete laws matched in θ̄ and σ² to a
Beta and a W-shaped law) over several seeds, and reports test accuracy, NLL and ECE,
with and without test-time rescaling (docs/THEORY.md §5) and with temperature scaling,
against σ²/θ̄² and γ²/θ̄².

Each setting is a config and a sweep of the one trainer (`get_config(setting)`,
`get_sweep(setting)`: laws × seeds), trained by `mixjax.studies.runs.train` in
`<out>/runs/<setting>/`: laws of one structure (e.g. the Beta(α) laws) and their seeds
form one vmapped program on the dense models; the CNN's runs go one after another on
CPU. The same runs come from the main entry:

  python -m mixjax.main --config=experiments/studies/mixing_law.py:mnist1d_mlp --sweep \
      --workdir=results/mixing_law/runs/mnist1d_mlp

  python -m experiments.studies.mixing_law --out results/mixing_law            # all
  python -m experiments.studies.mixing_law --out results/mixing_law --parts=mnist1d_mlp
  python -m experiments.studies.mixing_law --out results/mixing_law --mode=report
  python -m experiments.studies.mixing_law --out /tmp/ml --quick              # smoke test
"""
from __future__ import annotations

import math
import os
import sys
import time

import numpy as np

from experiments.studies import common
from mixjax import samplers as L
from mixjax.studies import analysis
from mixjax.studies import plots
from mixjax.studies import records
from mixjax.studies import runs as study_runs
from mixjax.train import sweeps

law = study_runs.law
# Equal-moment groups: laws with the same θ̄ and σ² (hence γ²) but different shapes.
_M_BETA1 = L.theta_moments(L.beta(1.0))
_M_W05 = L.theta_moments(L.w_shaped(0.5))
GROUPS = {
    "θ̄=3/4, σ²=1/48": [
        law("beta", alpha=1.0),
        law("matched_atoms", mean=_M_BETA1.mean, var=_M_BETA1.var, num_points=2,
            label="2 atoms ≡ Beta(1)"),
        law("matched_atoms", mean=_M_BETA1.mean, var=_M_BETA1.var, num_points=3,
            label="3 atoms ≡ Beta(1)")],
    "θ̄=3/4, σ²=1/32": [
        law("w_shaped", a=0.5),
        law("matched_atoms", mean=_M_W05.mean, var=_M_W05.var, num_points=2,
            label="2 atoms ≡ W(0.5)"),
        law("matched_atoms", mean=_M_W05.mean, var=_M_W05.var, num_points=3,
            label="3 atoms ≡ W(0.5)")],
}


def label(spec: dict) -> str:
  return study_runs.sampler_of(spec).label


def all_laws() -> list[dict]:
  """ERM, Beta(α, α), W-shaped, RegMixup-equivalent, optimal and matched laws (as the
  config overrides of `mixjax.studies.runs.law`)."""
  out = [law("erm")] + [law("beta", alpha=a) for a in (0.1, 0.2, 0.5, 1.0, 2.0, 10.0)]
  out += [law("w_shaped", a=0.5), law("w_shaped", a=0.2), law("w_shaped", a=0.3, b=0.6)]
  out += [law("regmixup", alpha=10.0, eta=1.0), law("regmixup", alpha=1.0, eta=1.0),
          law("regmixup", alpha=math.inf, eta=1.0)]
  out += [law("optimal")]
  for group in GROUPS.values():
    out += [l for l in group if label(l) not in {label(o) for o in out}]
  return out


def core_laws() -> list[dict]:
  """A smaller set for the more expensive CNN setting."""
  return [law("erm"), law("beta", alpha=0.2), law("beta", alpha=1.0),
          law("beta", alpha=2.0), law("w_shaped", a=0.5), law("regmixup", alpha=10.0, eta=1.0),
          law("regmixup", alpha=math.inf, eta=1.0), law("optimal")]


def quick_laws() -> list[dict]:
  return [law("erm"), law("beta", alpha=1.0), law("optimal")] + GROUPS["θ̄=3/4, σ²=1/48"][1:]


_TWO_MOONS_RF = dict(dataset="two_moons", model="random_features",
                     model_kwargs={"num_features": 256, "bandwidth": 0.5}, num_epochs=400,
                     lr=1e-2)
# Each setting: the study config (`runs.study_config`) and its laws. Lengths chosen for
# a 2-core CPU.
SETTINGS = {
    "mnist1d_mlp": dict(
        config=dict(dataset="mnist1d", model="mlp", model_kwargs={"hidden_sizes": (256, 256)},
                    num_epochs=100, batch_size=128, lr=3e-3, num_evals=4),
        laws=all_laws),
    "mnist1d_cnn": dict(
        config=dict(dataset="mnist1d", model="lenet", input_shape=(40, 1, 1),
                    model_kwargs={"features": (16, 32), "kernel_size": 3,
                                  "dense_sizes": (64,)},
                    num_epochs=40, batch_size=128, lr=3e-3, num_evals=2),
        laws=core_laws),
    "digits_mlp": dict(
        config=dict(dataset="digits", model="mlp", model_kwargs={"hidden_sizes": (128,)},
                    num_epochs=100, batch_size=64, lr=1e-3, num_evals=4),
        laws=all_laws),
    "two_moons_rf": dict(
        config=dict(_TWO_MOONS_RF, dataset_kwargs={"feature_map": "none"}, val_fraction=0.0,
                    batch_size=32, num_evals=4),
        laws=all_laws),
    "two_moons_noisy_rf": dict(
        config=dict(_TWO_MOONS_RF, dataset_kwargs={"feature_map": "none", "noise": 0.25},
                    val_fraction=0.2, batch_size=30, num_evals=4),
        laws=all_laws),
}
DEFAULT_SEEDS = 8

METRICS = ["test_accuracy", "test_nll", "test_ece", "test_rs_accuracy", "test_rs_nll",
           "test_rs_ece", "test_ts_nll", "test_ts_ece", "test_rs_ts_ece", "temperature",
           "train_objective"]


def get_config(setting: str = "mnist1d_mlp"):
  """The trainer config of a setting (`python -m mixjax.main --config=<this file>:<setting>`)."""
  if setting not in SETTINGS:
    raise ValueError(f"Unknown setting {setting!r}; known: {', '.join(SETTINGS)}.")
  return study_runs.study_config(**SETTINGS[setting]["config"])


def get_sweep(setting: str = "mnist1d_mlp", seeds: int = DEFAULT_SEEDS) -> list[dict]:
  """The setting's points: every law × seeds 0..seeds−1 (law-major)."""
  return study_runs.points(SETTINGS[setting]["laws"](), range(seeds))


def run(args) -> None:
  for part in args.parts:
    cfg = get_config(part)
    pts = get_sweep(part, args.seeds)
    if args.quick:
      cfg = config_quick(cfg)
      pts = study_runs.points(quick_laws(), range(2))
    laws = list(dict.fromkeys(p["sampler.name"] + repr(p["sampler.params"]) for p in pts))
    print(f"[mixing_law/{part}] {len(laws)} laws x {len(pts) // len(laws)} seeds = "
          f"{len(pts)} runs, {cfg.num_epochs} epochs", flush=True)
    runs_dir = os.path.join(args.out, "runs", part)
    t0 = time.time()
    named = study_runs.train(cfg, pts, runs_dir)
    seconds = time.time() - t0
    data = common.load(cfg.dataset.name, val_fraction=cfg.dataset.val_fraction,
                       **dict(cfg.dataset.kwargs))
    law_specs = list({label(p): p for p in pts}.values())
    config = {"setting": part, "dataset": cfg.dataset.name,
              "dataset_kwargs": dict(cfg.dataset.kwargs),
              "train": study_runs.config_record(cfg), "lr": cfg.optimizer.lr,
              "seeds": sorted({p["seed"] for p in pts}),
              "laws": [L.describe(study_runs.sampler_of(l)) for l in law_specs],
              "groups": {g: [label(l) for l in ls] for g, ls in GROUPS.items()},
              "quick": bool(args.quick),
              "data_sizes": {k: int(np.asarray(getattr(data, k)).shape[0])
                             for k in ("train_x", "val_x", "test_x")}}
    records.save(args.out, part, config=config, runs=study_runs.rows(named, runs_dir),
                 info={"total_seconds": seconds})
    print(f"[mixing_law/{part}] {seconds:.0f}s", flush=True)


def config_quick(cfg):
  """2 epochs, one evaluation: the pipeline check of --quick."""
  from mixjax.train import config as config_lib  # pylint: disable=g-import-not-at-top
  return sweeps.sweep_config(cfg, {"num_epochs": 2, "eval.every_epochs": 0})


# ----------------------------------------------------------------------------------------
# Report.

_PANELS = [("test_accuracy", "test accuracy", "higher"), ("test_nll", "test NLL", "lower"),
           ("test_ece", "test ECE (15 bins)", "lower")]


def _figure_vs(rows, summary, part: str, out: str) -> str:
  fig, axes = plots.new_figure(2, 3, size=(4.3, 3.4))
  labels = [r["law"] for r in summary]
  for row_i, (xkey, xname) in enumerate([("strength", "σ²/θ̄²"),
                                         ("global_strength", "γ²/θ̄²")]):
    xs = np.asarray([r[xkey] for r in summary])
    span = np.ptp(xs) or 1.0
    for col, (m, name, _) in enumerate(_PANELS):
      ax = axes[row_i, col]
      rs = m.replace("test_", "test_rs_")
      mix = [i for i, r in enumerate(summary) if r["law"] != "ERM"]
      erm = [i for i, r in enumerate(summary) if r["law"] == "ERM"]
      plots.errorbar_points(ax, xs[mix], [summary[i][m] for i in mix],
                            [summary[i][m + "_se"] for i in mix], [labels[i] for i in mix])
      plots.errorbar_points(ax, xs[mix], [summary[i][rs] for i in mix],
                            [summary[i][rs + "_se"] for i in mix], [labels[i] for i in mix],
                            hollow=True, offset=0.012 * span, alpha=0.8)
      vals = [summary[i][k] + sgn * np.nan_to_num(summary[i][k + "_se"])
              for i in mix for k in (m, rs) for sgn in (-1, 1)]
      lo, hi = min(vals), max(vals)
      pad = 0.12 * (hi - lo) + 1e-4
      ax.set_ylim(lo - pad, hi + pad)
      for i in erm:  # ERM: a horizontal band (mean ± se), or a note when off scale.
        e, se = summary[i][m], summary[i][m + "_se"]
        if lo - pad <= e <= hi + pad:
          ax.axhline(e, color="k", lw=1, ls=":")
          ax.axhspan(e - se, e + se, color="k", alpha=0.08)
        else:
          ax.text(0.02, 0.97 if e > hi else 0.03, f"ERM: {e:.3f} ± {se:.3f} (off scale)",
                  transform=ax.transAxes, fontsize=7, va="top" if e > hi else "bottom")
      mix = [r for r in rows if r["law"] != "ERM"]
      fit = analysis.linear_fit(
          [r[xkey] for r in summary if r["law"] != "ERM"],
          [r[m] for r in summary if r["law"] != "ERM"])
      if np.isfinite(fit["slope"]) and mix:
        xx = np.linspace(min(r[xkey] for r in mix), max(r[xkey] for r in mix), 10)
        ax.plot(xx, fit["intercept"] + fit["slope"] * xx, color="gray", lw=1, ls="--",
                zorder=1)
      ax.set_xlabel(xname)
      ax.set_ylabel(name)
      ax.grid(alpha=0.3)
  from matplotlib.lines import Line2D  # pylint: disable=g-import-not-at-top
  extra = [Line2D([], [], color="k", marker="o", ls="", label="plain"),
           Line2D([], [], color="k", marker="o", mfc="white", ls="", label="rescaled"),
           Line2D([], [], color="gray", ls="--", label="OLS fit (mixup laws, plain)")]
  extra.append(Line2D([], [], color="k", ls=":", label="ERM (± se band)"))
  mix_labels = [l for l in labels if l != "ERM"]
  plots.family_legend(fig, mix_labels, extra=extra, fontsize=8, loc="lower center",
                      ncol=len(set(plots.family(l) for l in mix_labels)) + len(extra))
  fig.suptitle(f"{part}: metric vs regularization strength (mean ± se over seeds)",
               fontsize=10)
  fig.tight_layout(rect=(0, 0.05, 1, 1))
  return plots.save(fig, os.path.join(out, f"{part}_vs_strength.png"), tight=False)


def _figure_groups(summary_by_law: dict, part: str, out: str) -> str:
  fig, axes = plots.new_figure(1, 3, size=(4.3, 3.6))
  for col, (m, name, _) in enumerate(_PANELS):
    ax = axes[0, col]
    pos, ticks, tick_labels = 0, [], []
    for gi, (gname, group) in enumerate(GROUPS.items()):
      for law in group:
        r = summary_by_law.get(label(law))
        if r is None:
          continue
        c, _ = plots.style(label(law))
        ax.bar(pos, r[m], yerr=r[m + "_se"], color=c, alpha=0.75, capsize=3,
               edgecolor="k", lw=0.5)
        ticks.append(pos)
        tick_labels.append(label(law))
        pos += 1
      pos += 0.8
    ax.set_xticks(ticks)
    ax.set_xticklabels(tick_labels, rotation=40, ha="right", fontsize=7)
    vals = [summary_by_law[label(l)][m] for g in GROUPS.values() for l in g
            if label(l) in summary_by_law]
    if vals:
      lo, hi = min(vals), max(vals)
      pad = 0.6 * (hi - lo) + 1e-3
      ax.set_ylim(lo - pad, hi + pad)
    ax.set_ylabel(name)
    ax.grid(alpha=0.3, axis="y")
  fig.suptitle(f"{part}: laws with equal θ̄ and σ² (left: 3/4, 1/48; right: 3/4, 1/32), "
               "mean ± se", fontsize=9)
  return plots.save(fig, os.path.join(out, f"{part}_equal_moments.png"))


def report_part(out: str, part: str, header: str | None = None) -> str:
  """The Markdown section of one saved part (tables, slopes, equal-moment tests, figures).

  `header` replaces the setting's description (studies trained with another recipe)."""
  rec = records.load(out, part)
  rows = rec["runs"]
  summary = analysis.group_summary(rows, "law", METRICS,
                                   keep=("theta_bar", "strength", "global_strength"))
  by_law = {r["law"]: r for r in summary}
  cfg = rec["config"]
  info = rec["info"]
  md = [header] if header is not None else [f"## {part}\n",
        f"Dataset `{cfg['dataset']}` (train/val/test = "
        f"{cfg['data_sizes']['train_x']}/{cfg['data_sizes']['val_x']}/"
        f"{cfg['data_sizes']['test_x']}), model `{cfg['train']['model']['name']}` "
        f"{cfg['train']['model']['kwargs'] or ''}, {cfg['train']['optimizer']['name']} lr "
        f"{cfg['lr']} ({cfg['train']['optimizer']['schedule']}), batch "
        f"{cfg['train']['batch_size']}, {cfg['train']['num_epochs']} epochs, "
        f"{len(cfg['seeds'])} seeds × {len(cfg['laws'])} laws = {len(rows)} runs "
        "(one vmapped program per law structure for the dense models, one after another "
        "for the CNN): "
        f"{info.get('total_seconds', float('nan')):.0f} s on "
        f"{rec['provenance']['cpu_count']} CPU cores ({rec['provenance']['jax_backend']}).\n"]
  header = ["law", "θ̄", "σ²/θ̄²", "γ²/θ̄²", "acc", "NLL", "ECE", "acc (rs)", "NLL (rs)",
            "ECE (rs)", "ECE (TS)", "T"]
  body = []
  for r in summary:
    body.append([r["law"], f"{r['theta_bar']:.3f}", f"{r['strength']:.4f}",
                 f"{r['global_strength']:.3f}",
                 analysis.fmt(r["test_accuracy"], r["test_accuracy_se"], 2, 100),
                 analysis.fmt(r["test_nll"], r["test_nll_se"], 3),
                 analysis.fmt(r["test_ece"], r["test_ece_se"], 3),
                 analysis.fmt(r["test_rs_accuracy"], r["test_rs_accuracy_se"], 2, 100),
                 analysis.fmt(r["test_rs_nll"], r["test_rs_nll_se"], 3),
                 analysis.fmt(r["test_rs_ece"], r["test_rs_ece_se"], 3),
                 analysis.fmt(r["test_ts_ece"], r["test_ts_ece_se"], 3),
                 analysis.fmt(r["temperature"], None, 2)])
  md.append("Test metrics, mean ± se over seeds (accuracy in %; rs = test-time rescaling; "
            "TS = temperature scaling fit on the validation split; T = fitted "
            "temperature):\n")
  md.append(analysis.markdown_table(header, body))

  mix_rows = [r for r in rows if r["law"] != "ERM"]
  md.append("\nSlopes over the mixup laws (ERM excluded), per-law means; t = OLS t-interval "
            "over laws (do the laws follow the line?), boot = cluster bootstrap over seeds "
            "(is the fitted trend more than seed noise?), both 95%; ρ = Spearman rank "
            "correlation; partial = coefficient in the joint fit on σ²/θ̄² and γ²/θ̄²:\n")
  sh = ["metric", "vs", "slope", "t 95% CI", "boot 95% CI", "ρ", "partial coef. (both)",
        "t 95% CI (partial)", "boot 95% CI (partial)"]
  sb, verdicts = [], []
  for m, name, better in _PANELS + [("test_rs_accuracy", "test accuracy (rs)", "higher"),
                                    ("test_rs_ece", "test ECE (rs)", "lower"),
                                    ("test_ts_nll", "test NLL (TS)", "lower")]:
    both = analysis.regress_laws(mix_rows, ["strength", "global_strength"], m)
    for xkey, xname in [("strength", "σ²/θ̄²"), ("global_strength", "γ²/θ̄²")]:
      f = analysis.slope_vs(mix_rows, xkey, m)
      b = both[xkey]
      sb.append([name, xname, f"{f['slope']:.3g}", f"[{f['ci_low']:.3g}, {f['ci_high']:.3g}]",
                 f"[{f['boot_low']:.3g}, {f['boot_high']:.3g}]", f"{f['spearman']:.2f}",
                 f"{b['coef']:.3g}", f"[{b['ci_low']:.3g}, {b['ci_high']:.3g}]",
                 f"[{b['boot_low']:.3g}, {b['boot_high']:.3g}]"])
      if m in ("test_accuracy", "test_nll", "test_ece"):
        verdicts.append("- " + analysis.verdict_from_slope(f, better=better, what=name,
                                                            x_name=xname))
  md.append(analysis.markdown_table(sh, sb))
  md.append("\nAutomatic reading of the simple slopes (mixup laws only):\n")
  md += [v + "\n" for v in verdicts]

  md.append("\nEqual θ-moments, different shapes (repeated-measures ANOVA over seeds; "
            "a small p says the moments alone do not determine the outcome):\n")
  gh = ["group", "laws", "metric", "means", "F", "p"]
  gb = []
  for gname, group in GROUPS.items():
    labels = [label(l) for l in group if label(l) in by_law]
    if len(labels) < 2:
      continue
    for m, name, _ in _PANELS:
      t = analysis.within_group_test(rows, m, labels)
      scale = 100 if "accuracy" in m else 1
      means = ", ".join(analysis.fmt(by_law[l][m], by_law[l][m + "_se"],
                                     2 if scale == 100 else 3, scale) for l in labels)
      gb.append([gname, " / ".join(labels), name, means, f"{t['F']:.2f}", f"{t['p']:.3g}"])
  md.append(analysis.markdown_table(gh, gb) if gb else
            "(no laws with equal θ-moments in this setting)\n")
  erm = by_law.get("ERM")
  if erm is not None:
    best = max((r for r in summary if r["law"] != "ERM"), key=lambda r: r["test_accuracy"])
    d = analysis.paired_difference(rows, "test_accuracy", best["law"], "ERM")
    md.append(f"\nBest law by mean test accuracy: {best['law']} "
              f"({analysis.fmt(best['test_accuracy'], best['test_accuracy_se'], 2, 100)}%); "
              f"paired difference to ERM {d['diff'] * 100:+.2f} points, 95% CI "
              f"[{d['ci_low'] * 100:+.2f}, {d['ci_high'] * 100:+.2f}] (selected as the best "
              "of many laws, so optimistic).\n")
  f1 = _figure_vs(rows, summary, part, out)
  f2 = _figure_groups(by_law, part, out)
  md.append(f"\n![{part} vs strength]({os.path.basename(f1)})\n\n"
            f"![{part} equal moments]({os.path.basename(f2)})\n")
  return "\n".join(md)


def report(args) -> None:
  parts = [p for p in SETTINGS if os.path.exists(os.path.join(args.out, f"{p}.json"))]
  if not parts:
    raise ValueError(f"No saved results in {args.out}; run the study first.")
  md = ["# Mixing-law study: does a stronger mixing law regularize better?\n",
        "Generated by `python -m experiments.studies.mixing_law --out "
        f"{args.out} --mode=report` from the saved JSON files (no retraining).\n"]
  for part in parts:
    md.append(report_part(args.out, part))
  with open(os.path.join(args.out, "report.md"), "w") as f:
    f.write("\n".join(md))


def main(argv=None) -> None:
  args = common.parse_args(__doc__.splitlines()[0], list(SETTINGS), argv)
  common.main(args, run, report)


if __name__ == "__main__":
  main(sys.argv[1:])
