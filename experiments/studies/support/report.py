"""The support study's measurements and report (`config.py` of this folder, issue 26).

`measure` keeps, per run, the Fashion-MNIST-C metrics of its summary.json: accuracy,
NLL and ECE on each corruption and their mean, plain and test-time rescaled. `write`
computes the pre-registered analysis of `config.py`'s docstring from the saved rows
(results/support/overfit.json) and writes results/support/report.md and its figures:

  * F1, the trend: `analysis.seed_slopes` over the symmetric two-atom family (δ = 0 …
    0.25, the constant law as δ = 0) against σ²/θ̄², one slope per seed, t-test over
    seeds;
  * F2, three atoms − W(0.5), and F3, δ = 0.25 − δ = 0.20: `analysis.paired_difference`
    (paired t over seeds);
  * each family's 11 tests (`METRICS`) corrected by Holm (`analysis.holm`); a contrast
    is separated where its Holm-adjusted p < 0.05, and for the others the seeds an
    80%-power paired test at α = 0.05/11 would need (`analysis.seeds_needed`);
  * exploratory, uncorrected and labelled so: the slope without the constant arm, the
    step δ = 0.10 − constant, every arm against ERM, the rescaled metrics.
"""
from __future__ import annotations

import math
import os
from typing import Any, Sequence

import numpy as np

from mixjax.studies import analysis
from mixjax.studies import plots
from mixjax.studies import records
from mixjax.studies import study

# The commit that stated the analysis before any run (config.py's docstring).
PREREGISTRATION = "db9963d23fdd4f6e6fd9b82ee342fbbd31d52d4d"
SETTING = "overfit"
CORRUPTIONS = ("shot_noise", "glass_blur", "rotate", "fog", "canny_edges")
ALPHA = 0.05
TRAIN = ("python -m mixjax.main --config=experiments/studies/support/config.py:overfit "
         "--sweep --workdir=runs/support --config.dataset.data_dir=DIR")
COLLECT = ("python -m mixjax.studies --config=experiments/studies/support/config.py:overfit "
           "--workdir=runs/support --out=results/support")

# The family's metrics, in the pre-registered order: row key -> (name, higher is
# better, scale for printing, decimals).
METRICS = {
    "test_accuracy": ("accuracy (%)", True, 100, 2),
    "test_nll": ("NLL", False, 1, 4),
    "test_ts_nll": ("NLL (TS)", False, 1, 4),
    "test_ece": ("ECE", False, 1, 4),
    "test_ts_ece": ("ECE (TS)", False, 1, 4),
    "shift_accuracy": ("C accuracy, mean (%)", True, 100, 2),
    **{f"shift_{c}_accuracy": (f"C accuracy, {c.replace('_', ' ')} (%)", True, 100, 2)
       for c in CORRUPTIONS},
}
# Exploratory columns (not in any family).
EXPLORATORY = {
    "test_rs_accuracy": ("accuracy (rs, %)", True, 100, 2),
    "test_rs_nll": ("NLL (rs)", False, 1, 4),
    "test_rs_ece": ("ECE (rs)", False, 1, 4),
    "shift_nll": ("C NLL", False, 1, 3),
    "shift_ece": ("C ECE", False, 1, 4),
    "shift_rs_accuracy": ("C accuracy (rs, %)", True, 100, 2),
    "temperature": ("temperature", False, 1, 3),
    "train_objective": ("train objective", False, 1, 3),
}
ALL = {**METRICS, **EXPLORATORY}

CONSTANT, THREE, W05, ERM = "θ=0.75", "atoms{0.5,0.75,1}", "W(0.5)", "ERM"
FAMILY = {0.0: CONSTANT, 0.10: "atoms{0.65,0.85}", 0.15: "atoms{0.6,0.9}",
          0.20: "atoms{0.55,0.95}", 0.25: "atoms{0.5,1}"}
PER = 1 / 9  # slopes are printed as the change over σ²/θ̄² = 0 → 1/9 (δ = 0 → 0.25)


# ---------------------------------------------------------------------- measurements


def measure(trained: Sequence) -> dict[str, Any]:
  """Per run: C accuracy on each corruption, and the mean accuracy, NLL and ECE over
  them, plain and test-time rescaled (a run without a law: its plain values)."""
  metrics = {}
  for r in trained:
    s = r.summary or {}
    plain = s.get("shift") or {}
    rescaled = s.get("shift_rescaled") or plain
    m = {f"shift_{c}_accuracy": (plain.get(c) or {}).get("accuracy") for c in CORRUPTIONS}
    for k in ("accuracy", "nll", "ece"):
      m[f"shift_{k}"] = (plain.get("mean") or {}).get(k)
    m["shift_rs_accuracy"] = (rescaled.get("mean") or {}).get("accuracy")
    metrics[r.name] = {k: math.nan if v is None else float(v) for k, v in m.items()}
  return {"extra": {"metrics": metrics}}


def rows_of(rec: dict) -> list[dict[str, Any]]:
  """A saved setting's rows with `measure`'s metrics merged in."""
  extra = (rec.get("extra") or {}).get("metrics") or {}
  return [{**r, **extra.get(r["point"], {})} for r in rec["runs"]]


# ------------------------------------------------------------------------ statistics


def _family(tests: list[dict]) -> list[dict]:
  """Holm over one family: adds p_holm, separated (p_holm < α), and for the others the
  seeds a paired test at α/m would need for 80% power at the observed difference."""
  adjusted = analysis.holm([t["p"] for t in tests])
  m = int(np.isfinite([t["p"] for t in tests]).sum())
  for t, q in zip(tests, adjusted):
    t["p_holm"] = float(q)
    t["separated"] = bool(q < ALPHA)
    t["seeds_needed"] = (math.nan if t["separated"] else
                         analysis.seeds_needed(t["diff"], t["sd"], alpha=ALPHA / max(m, 1)))
  return tests


def trend(rows, metric: str, laws: Sequence[str]) -> dict:
  """The per-seed slope over `laws` against σ²/θ̄², as a test (diff = slope)."""
  s = analysis.seed_slopes(rows, metric, list(laws))
  return {**s, "metric": metric, "diff": s["slope"]}


def families(rows) -> dict[str, list[dict]]:
  """The three pre-registered families, each Holm-corrected over its 11 metrics."""
  return {
      "F1": _family([trend(rows, m, FAMILY.values()) for m in METRICS]),
      "F2": _family([{**analysis.paired_difference(rows, m, THREE, W05), "metric": m}
                     for m in METRICS]),
      "F3": _family([{**analysis.paired_difference(rows, m, FAMILY[0.25], FAMILY[0.20]),
                      "metric": m} for m in METRICS]),
  }


# ---------------------------------------------------------------------------- report


def _num(x: float, metric: str, per: float = 1.0, sign: bool = True) -> str:
  _, _, scale, digits = ALL[metric]
  if not np.isfinite(x):
    return "n/a"
  return f"{x * scale * per:{'+' if sign else ''}.{digits}f}"


def _ci(t: dict, metric: str, per: float = 1.0) -> str:
  return (f"{_num(t['diff'], metric, per)} [{_num(t['ci_low'], metric, per)}, "
          f"{_num(t['ci_high'], metric, per)}]")


def _p(p: float) -> str:
  if not np.isfinite(p):
    return "n/a"
  return f"{p:.2g}" if p >= 1e-3 else f"{p:.1e}"


def _direction(t: dict) -> str:
  higher = ALL[t["metric"]][1]
  return "better" if (t["diff"] > 0) == higher else "worse"


def _seeds(n: float) -> str:
  return f"{n:,.0f}" if np.isfinite(n) else ("∞" if n > 0 else "–")


def _family_table(tests: list[dict], per: float = 1.0) -> str:
  body = []
  for t in tests:
    m = t["metric"]
    verdict = (f"separated: {_direction(t)}" if t["separated"] else "undecided")
    body.append([ALL[m][0], _ci(t, m, per), _p(t["p"]), _p(t["p_holm"]), verdict,
                 "" if t["separated"] else _seeds(t["seeds_needed"]), str(t["n"])])
  return analysis.markdown_table(
      ["metric", "estimate [95% CI]", "p", "Holm p", "verdict",
       "seeds for 80% at α = 0.05/11", "seeds"], body)


def _arm_table(rows, laws: Sequence[str], keys: Sequence[str]) -> str:
  s = analysis.group_summary(rows, "law", list(keys), keep=["theta_bar", "strength"])
  body = []
  for law in laws:
    if law not in s.index:
      continue
    r = s.loc[law]
    line = [law, f"{r['theta_bar']:.3f}", "–" if law == ERM else f"{r['strength']:.4f}"]
    for k in keys:
      _, _, scale, digits = ALL[k]
      line.append(analysis.fmt(r[k], r[k + "_se"], digits, scale))
    body.append(line)
  return analysis.markdown_table(["arm", "θ̄", "σ²/θ̄²"] + [ALL[k][0] for k in keys], body)


def _say(t: dict, per: float = 1.0, unit_slope: bool = False) -> str:
  m = t["metric"]
  name = ALL[m][0]
  s = f"{name} {_ci(t, m, per)}"
  s += " per 1/9 of σ²/θ̄²" if unit_slope else ""
  if t["separated"]:
    return s + f" (Holm p = {_p(t['p_holm'])}: {_direction(t)})"
  return s + f" (Holm p = {_p(t['p_holm'])}: undecided; ~{_seeds(t['seeds_needed'])} seeds)"


def _answers(fam: dict[str, list[dict]], explore: dict[str, list[dict]]) -> list[str]:
  out = []
  by = {k: {t["metric"]: t for t in v} for k, v in fam.items()}
  sep = {k: [t for t in v if t["separated"]] for k, v in fam.items()}

  def listing(tests, per=1.0, slope=False):
    return "; ".join(_say(t, per, slope) for t in tests) or "none"

  f1 = sep["F1"]
  f3 = sep["F3"]
  out.append(
      "**(1) A trend in σ²/θ̄² at fixed θ̄ and fixed support size, or a step?** "
      f"F1, the per-seed slope over δ = 0, 0.10, 0.15, 0.20, 0.25 (as the change over "
      f"σ²/θ̄² = 0 → 1/9), separated after Holm on {len(f1)} of {len(fam['F1'])} metrics: "
      + listing(f1, PER, True) + ". F3, δ = 0.25 − δ = 0.20, separated on "
      f"{len(f3)} of {len(fam['F3'])}: " + listing(f3) + ". Exploratory (uncorrected): "
      "the slope without the constant arm (δ = 0.10 … 0.25) and the step δ = 0.10 − "
      "constant, on accuracy, mean C accuracy and the metrics where F1 is separated: "
      + "; ".join(f"{ALL[m][0]}: slope {_ci(explore['slope_without_constant'][m], m, PER)}"
                  f", step {_ci(explore['step'][m], m)}" for m in dict.fromkeys(
                      ["test_accuracy", "shift_accuracy"] + [t["metric"] for t in f1]))
      + ". A trend shows as a slope that stays without the constant arm; a step as a "
      "slope carried by δ = 0.10 − constant alone.")
  f2 = sep["F2"]
  out.append(
      "**(2) Does the support matter at equal moments?** F2, three atoms {½, ¾, 1} − "
      f"W(0.5) (equal θ̄, σ², γ²), separated after Holm on {len(f2)} of "
      f"{len(fam['F2'])} metrics: " + listing(f2) + ". On the corruptions where atoms "
      "{½, 1} gained in the regimes study: " + "; ".join(
          _say(by["F2"][f"shift_{c}_accuracy"]) for c in ("fog", "canny_edges")) + ".")
  ts = []
  for fam_name, per in (("F1", PER), ("F2", 1.0), ("F3", 1.0)):
    for raw, scaled in (("test_nll", "test_ts_nll"), ("test_ece", "test_ts_ece")):
      a, b = by[fam_name][raw], by[fam_name][scaled]
      ts.append(f"{fam_name} {ALL[raw][0]}: {'separated' if a['separated'] else 'undecided'}"
                f" raw {_ci(a, raw, per)}, {'separated' if b['separated'] else 'undecided'}"
                f" after temperature scaling {_ci(b, scaled, per)}")
  out.append("**(3) Which effects survive temperature scaling?** " + "; ".join(ts) + ".")
  return out


def _figure_family(rows, out: str) -> str:
  """Each family metric against σ²/θ̄² over the two-atom family: one line per seed, the
  mean in black; three atoms and W(0.5) at 1/18 (offset), ERM as a dashed line."""
  df = analysis.frame(rows)
  laws = list(FAMILY.values())
  keys = list(METRICS)
  fig, axes = plots.new_figure(3, 4, size=(3.3, 2.7))
  xs = df.groupby("law")["strength"].first().reindex(laws).to_numpy()
  for ax, m in zip(axes.flat, keys):
    name, _, scale, _ = ALL[m]
    table = analysis.law_seed_table(df, m, laws=laws) * scale
    for seed in table.columns:
      ax.plot(xs, table[seed], color="gray", lw=0.7, alpha=0.6)
    ax.plot(xs, table.mean(axis=1), color="black", lw=2, marker="o", ms=3,
            label="two atoms, mean")
    for law, color, dx in ((THREE, "tab:purple", -0.002), (W05, "tab:orange", 0.002)):
      v = df.loc[df["law"] == law, m].to_numpy(np.float64) * scale
      if v.size:
        ax.errorbar(1 / 18 + dx, np.nanmean(v), yerr=np.nanstd(v, ddof=1) / np.sqrt(v.size),
                    fmt="D", color=color, ms=4, label=law)
    v = df.loc[df["law"] == ERM, m].to_numpy(np.float64) * scale
    if v.size:
      ax.axhline(np.nanmean(v), color="black", ls="--", lw=0.8, label="ERM")
    ax.set_title(name, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.set_xlabel("σ²/θ̄²", fontsize=7)
  axes.flat[-1].axis("off")
  handles, labels = axes.flat[0].get_legend_handles_labels()
  axes.flat[-1].legend(handles, labels, fontsize=8, loc="center")
  fig.suptitle("θ̄ = 3/4: two atoms 3/4 ± δ (δ = 0 … 0.25; each seed a gray line), "
               "three atoms {½, ¾, 1} and W(0.5) at 1/18 (mean ± se)", fontsize=9)
  return plots.save(fig, os.path.join(out, f"{SETTING}_seeds.png"))


def _figure_support(rows, out: str) -> str:
  """Three atoms against W(0.5), one line per seed (paired), for each family metric."""
  df = analysis.frame(rows)
  fig, axes = plots.new_figure(3, 4, size=(2.6, 2.5))
  for ax, m in zip(axes.flat, METRICS):
    name, _, scale, _ = ALL[m]
    table = analysis.law_seed_table(df, m, laws=[W05, THREE]) * scale
    for seed in table.columns:
      ax.plot([0, 1], table[seed], color="gray", lw=0.8, marker="o", ms=2)
    ax.plot([0, 1], table.mean(axis=1), color="black", lw=2)
    ax.set_xticks([0, 1], ["W(0.5)", "3 atoms"], fontsize=7)
    ax.set_xlim(-0.3, 1.3)
    ax.set_title(name, fontsize=8)
    ax.tick_params(labelsize=7)
  axes.flat[-1].axis("off")
  fig.suptitle("Equal θ̄, σ²: W(0.5) against three atoms {½, ¾, 1}, paired by seed",
               fontsize=9)
  return plots.save(fig, os.path.join(out, f"{SETTING}_support.png"))


def _header(rec: dict) -> str:
  cfg, rows = rec["config"], rec["runs"]
  times = [r["train_time_s"] for r in rows if r.get("train_time_s")]
  codes = sorted({(r.get("code") or "unknown") + (" (dirty)" if r.get("code_dirty") else "")
                  for r in rows})
  prov = rec["provenance"]
  return (
      f"### {SETTING}\n\nFashion-MNIST, the first {cfg['train']['dataset']['num_train']:,} "
      f"training images (clean labels) × {cfg['train']['num_epochs']} epochs, validation / "
      f"test {cfg['data_sizes']['val_x']:,} / {cfg['data_sizes']['test_x']:,}; the recipe "
      f"CNN, SGD Nesterov lr {cfg['lr']} cosine, batch {cfg['train']['batch_size']}, no "
      f"augmentation, no weight decay, folded λ; seeds {cfg['seeds'][0]}–{cfg['seeds'][-1]}"
      f" ({len(cfg['seeds'])}), {len(rows)} runs one after another: "
      f"{rec['info'].get('train_seconds', math.nan):,.0f} s in the training loops (median "
      f"{np.median(times):.0f} s a run) on {prov['cpu_count']} CPU cores shared with other "
      f"work. Trained at code revision {', '.join(codes)}; collected at "
      f"{prov.get('git_revision')}.\n")


def section(rec: dict, out: str) -> str:
  rows = rows_of(rec)
  laws = analysis.unique(rows, "law")
  fam = families(rows)
  explore = {
      "slope_without_constant": {m: trend(rows, m, list(FAMILY.values())[1:])
                                 for m in METRICS},
      "step": {m: analysis.paired_difference(rows, m, FAMILY[0.10], CONSTANT)
               for m in METRICS},
  }
  md = [_header(rec)]
  md.append("Test split and Fashion-MNIST-C, mean ± se over seeds (accuracy in %; TS: "
            "temperature scaled on the validation split):\n")
  md.append(_arm_table(rows, laws, ["test_accuracy", "test_nll", "test_ts_nll", "test_ece",
                                    "test_ts_ece", "temperature", "train_objective"]))
  md.append("")
  md.append(_arm_table(rows, laws, ["shift_accuracy"] + [f"shift_{c}_accuracy"
                                                         for c in CORRUPTIONS]))
  md.append("\n#### Pre-registered families (Holm within each family of 11)\n")
  md.append("Two-sided tests over the seeds; p: nominal; Holm p: Holm-adjusted within the "
            "family; a contrast is separated where its Holm p < 0.05. For an undecided "
            "contrast, the seeds a paired t-test at α = 0.05/11 (Holm's strictest step) "
            "would need for 80% power at the observed mean and sd (a planning figure, as "
            "noisy as the estimate).\n")
  md.append("**F1: per-seed slope in σ²/θ̄² over the symmetric two-atom family** (δ = 0, "
            "0.10, 0.15, 0.20, 0.25; σ²/θ̄² = 16δ²/9), as the change over σ²/θ̄² = 0 → "
            "1/9:\n")
  md.append(_family_table(fam["F1"], PER))
  md.append("**F2: three atoms {½, ¾, 1} − W(0.5)** (equal θ̄ = 3/4 and σ²/θ̄² = 1/18), "
            "paired by seed:\n")
  md.append(_family_table(fam["F2"]))
  md.append("**F3: δ = 0.25 − δ = 0.20** (atoms {½, 1} − atoms {0.55, 0.95}), paired by "
            "seed:\n")
  md.append(_family_table(fam["F3"]))
  md.append("#### Answers (computed from the rows)\n")
  md += [a + "\n" for a in _answers(fam, explore)]
  md.append("#### Exploratory (not pre-registered as primary; nominal 95% CIs, no "
            "correction)\n")
  body = []
  for m in METRICS:
    s, st = explore["slope_without_constant"][m], explore["step"][m]
    body.append([ALL[m][0], _ci(s, m, PER), _p(s["p"]), _ci(st, m), _p(st["p"])])
  md.append("The two-atom slope without the constant arm (δ = 0.10 … 0.25, per 1/9 of "
            "σ²/θ̄²) and the step δ = 0.10 − constant, paired by seed:\n")
  md.append(analysis.markdown_table(
      ["metric", "slope without constant [CI]", "p", "δ = 0.10 − constant [CI]", "p"], body))
  keys = list(METRICS) + ["test_rs_accuracy", "test_rs_nll", "shift_ece"]
  body = [[law] + [_ci({**analysis.paired_difference(rows, m, law, ERM), "metric": m}, m)
                   for m in keys] for law in laws if law != ERM]
  md.append("Each arm − ERM, paired by seed (rs: test-time rescaled):\n")
  md.append(analysis.markdown_table(["arm − ERM"] + [ALL[m][0] for m in keys], body))
  figs = [_figure_family(rows, out), _figure_support(rows, out)]
  md.append("\n".join(f"![{SETTING}]({os.path.basename(f)})" for f in figs) + "\n")
  return "\n".join(md)


def reproduction_section(out: str) -> str | None:
  """OUT/reproduction.json, if saved: points retrained in a fresh workdir at a later code
  revision and compared with the study's runs (summary.json and metrics.jsonl value by
  value, bit for bit, but for the fields it names as ignored)."""
  path = os.path.join(out, "reproduction.json")
  if not os.path.exists(path):
    return None
  import json  # pylint: disable=g-import-not-at-top
  with open(path) as f:
    rep = json.load(f)
  lines = ["#### Reproduction\n", rep["how"] + "\n"]
  for c in rep["checks"]:
    lines.append(f"- point `{c['point']}`, retrained by `{c['command']}` at revision "
                 f"{c['revision']} (the study's run: {c['study_revision']}): "
                 + ("summary.json and metrics.jsonl bit-identical" if not c["differences"]
                    else "differs: " + "; ".join(c["differences"]))
                 + f" ({c['summary_keys']} summary entries and {c['metrics_records']} "
                 f"metrics records compared; ignored: {', '.join(c['ignored'])}).")
  return "\n".join(lines) + "\n"


def write(out: str, intro: Sequence[str] = ()) -> str:
  """OUT/report.md: the pre-registration, then the saved setting's analysis (or the
  commands that would train and collect it)."""
  md = ["# Support: the law's support against its strength at fixed θ̄ = 3/4\n",
        f"Generated by `python -m mixjax.studies --config=experiments/studies/support/"
        f"config.py --out={out}` from the saved JSON (no retraining). Question, arms and "
        f"analysis: `experiments/studies/support/` (its `config.py` and `report.py`). "
        f"**Pre-registered** in commit {PREREGISTRATION} (the contrasts, metrics and "
        "correction stated in `config.py`'s docstring before any run); everything not in "
        "the three families below is exploratory. Trained and collected by\n\n```\n"
        f"{TRAIN}\n{COLLECT}\n```\n", *intro]
  if os.path.exists(os.path.join(out, f"{SETTING}.json")):
    md.append(section(records.load(out, SETTING), out))
    md.append(reproduction_section(out) or "")
  else:
    md.append(f"### Not yet trained\n\n`{TRAIN}`, then `{COLLECT}`.\n")
  return study.write_report(out, md)
