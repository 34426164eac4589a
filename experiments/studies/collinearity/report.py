"""Collinearity (manifold intrusion, Chidambaram et al., ICLR 2022) against the law.

For each training point x_i of class k, D_i is the distance to the nearest mixup point
whose two source classes both differ from k (`mixjax.eval.collinearity`, in blocks on
device), over a Monte-Carlo sample of M = `mix_per_point`·N mixup points
(`mixjax.eval.make_mixup_points`). `measure` gives, per dataset, law and draw, min_i D_i
(the paper's number) and the 1% and 50% quantiles; `report_setting` tables and plots
them against α for the Beta(α, α) laws, the other laws as lines.
"""
from __future__ import annotations

import os
import time
import zlib
from typing import Sequence

import numpy as np

from mixjax import samplers
from mixjax.studies import analysis
from mixjax.studies import plots
from mixjax.studies import records


def measure(datasets: Sequence[tuple[str, np.ndarray, np.ndarray, str]],
            laws: Sequence[samplers.Sampler], seeds: Sequence[int], alphas: Sequence[float],
            mix_per_point: int) -> list[dict]:
  """One row per (dataset, law, seed): min, q01, q50 of D_i, the law's θ-moments, its α
  when it is a Beta(α, α) of `alphas`. `datasets`: (name, x, labels, note)."""
  import jax  # pylint: disable=g-import-not-at-top
  from mixjax import eval as eval_lib  # pylint: disable=g-import-not-at-top
  beta_alpha = {samplers.beta(a).label: a for a in alphas}
  rows = []
  for name, x, y, note in datasets:
    n = x.shape[0]
    scale = float(np.median(np.linalg.norm(x.reshape(n, -1) - x.reshape(n, -1).mean(0),
                                           axis=1)))
    for law in laws:
      described = samplers.describe(law)
      for seed in seeds:
        t0 = time.time()
        key = jax.random.fold_in(jax.random.key(seed),
                                 zlib.crc32(law.label.encode()) % (2**31))
        pts = eval_lib.make_mixup_points(key, x, y, law, mix_per_point * n)
        dist = np.asarray(eval_lib.collinearity(x, y, pts.points, pts.source_labels))
        dist = dist[np.isfinite(dist)]
        rows.append({"dataset": name, "law": law.label, "seed": seed, "n": n,
                     "m": mix_per_point * n, "note": note,
                     **{k: described[k] for k in ("mean", "var", "strength")},
                     "alpha": beta_alpha.get(law.label), "min": float(dist.min()),
                     "q01": float(np.quantile(dist, 0.01)),
                     "q50": float(np.quantile(dist, 0.5)), "data_scale": scale,
                     "seconds": time.time() - t0})
      print(f"[collinearity] {name} {law.label}: min D = "
            f"{np.mean([r['min'] for r in rows[-len(seeds):]]):.4f}", flush=True)
  return rows


def report_setting(out: str, setting: str) -> str:
  """The Markdown of the saved OUT/<setting>.json and its figure OUT/<setting>.png."""
  rec = records.load(out, setting)
  rows = analysis.frame(rec["runs"])
  summary = analysis.group_summary(rows, ["dataset", "law"], ["min", "q01", "q50"],
                                   keep=("alpha", "strength", "n", "m", "note",
                                         "data_scale"))
  datasets = analysis.unique(rows, "dataset")
  md = [f"## {setting}\n",
        f"D_i = distance from training point i to the nearest of M = "
        f"{rec['config']['mix_per_point']}·N sampled mixup points whose two source "
        "classes both differ from y_i, on standardized inputs; mean ± se over "
        f"{len(rec['config']['seeds'])} independent draws of the mixup points.\n"]
  if rec["extra"].get("skipped"):
    md.append(f"Skipped (not prepared locally, no download): "
              f"{', '.join(rec['extra']['skipped'])}.\n")
  if not datasets:
    return "\n".join(md)
  fig, axes = plots.new_figure(1, len(datasets), size=(4.2, 3.5))
  for ax, ds in zip(axes[0], datasets):
    sub = summary.loc[ds]
    beta = sub[sub["alpha"].notna()].sort_values("alpha")
    for key, name, color in (("min", "min_i D_i", "black"),
                             ("q01", "1% quantile", "tab:gray"), ("q50", "median", "tab:blue")):
      ax.errorbar(beta["alpha"], beta[key], yerr=beta[key + "_se"], marker="o", ms=4,
                  capsize=2, color=color, label=f"Beta(α, α): {name}")
    for law, r in sub[sub["alpha"].isna()].iterrows():
      ax.axhline(r["min"], color=plots.style(law)[0], ls=":", lw=1.2,
                 label=f"{law}: min_i D_i")
    ax.set(xscale="log", yscale="log", xlabel="α",
           ylabel="distance (standardized inputs, log scale)")
    ax.set_title(f"{ds} (N = {sub['n'].iloc[0]}, M = {sub['m'].iloc[0]})", fontsize=9)
    ax.grid(alpha=0.3)
    md.append(f"\n### {ds}\n\nN = {sub['n'].iloc[0]} points {sub['note'].iloc[0]}, M = "
              f"{sub['m'].iloc[0]} mixup points per draw; median distance of a point to "
              f"the data mean: {sub['data_scale'].iloc[0]:.2f}.\n")
    md.append(analysis.markdown_table(
        ["law", "σ²/θ̄²", "min_i D_i", "1% quantile", "median"],
        [[law, f"{r['strength']:.4f}"] + [analysis.fmt(r[k], r[k + "_se"], 3)
                                          for k in ("min", "q01", "q50")]
         for law, r in sub.iterrows()]))
  handles, labels = axes[0, -1].get_legend_handles_labels()
  fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=7)
  fig.suptitle("Distance to the nearest mixup point of two other classes (mean ± se over "
               "draws of the mixup points)", fontsize=10)
  fig.tight_layout(rect=(0, 0.07, 1, 1))
  f = plots.save(fig, os.path.join(out, f"{setting}.png"), tight=False)
  md.append(f"\n![{setting}]({os.path.basename(f)})\n")
  return "\n".join(md)
