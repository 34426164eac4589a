"""Decision boundaries of trained two-dimensional models (two moons).

`measure` evaluates each trained run (`mixjax.train.TrainedRun`) on a GRID × GRID grid
over the normalized input box and keeps the logits per tag (e.g. the training variant)
as the record's arrays, "<tag>|grid" (seeds, GRID², 2), with the grid, the training
points and the normalization; `report_setting` draws P(class 1) of seed 0 with every
seed's 0.5 contour, one panel per tag.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from mixjax.studies import analysis
from mixjax.studies import plots
from mixjax.studies import records

GRID = 120


def measure(runs: Sequence, tags: Sequence[str]) -> dict:
  """Each run's (`study.Run`) logits on the grid, stacked per tag (module docstring)."""
  import jax  # pylint: disable=g-import-not-at-top
  from mixjax.train import trained  # pylint: disable=g-import-not-at-top
  ds, grid, apply, arrays = None, None, None, {}
  for r, tag in zip(runs, tags):
    run = trained.TrainedRun(r.dir, ds=ds)
    if ds is None:  # every run trains the same model on the same data
      ds = run.ds
      x = np.concatenate([ds.train_x, ds.test_x])
      lo, hi = x.min(0) - 0.5, x.max(0) + 0.5
      g0, g1 = np.meshgrid(np.linspace(lo[0], hi[0], GRID), np.linspace(lo[1], hi[1], GRID))
      grid = np.stack([g0.ravel(), g1.ravel()], 1).astype(np.float32)
      apply = jax.jit(lambda v, g, m=run.model: m.apply(v, g, train=False))
    arrays.setdefault(f"{tag}|grid", []).append(np.asarray(apply(run.variables(), grid),
                                                           np.float32))
    run.close()
  arrays = {k: np.stack(v) for k, v in arrays.items()}
  arrays["grid"] = grid
  return {"arrays": arrays,
          "extra": {"train_points": ds.extras["train_points"].tolist(),
                    "train_labels": np.asarray(ds.train_y).tolist(),
                    "norm_mean": np.asarray(ds.norm_mean).tolist(),
                    "norm_std": np.asarray(ds.norm_std).tolist()}}


def _p1(logits: np.ndarray) -> np.ndarray:
  """P(class 1) on the grid, (GRID, GRID)."""
  return np.exp(logits[:, 1] - np.logaddexp(logits[:, 0], logits[:, 1])).reshape(GRID, GRID)


def report_setting(out: str, setting: str, tag: str = "variant") -> str:
  """The Markdown of the saved OUT/<setting>.json: test metrics per tag and the figure
  OUT/<setting>.png."""
  rec = records.load(out, setting)
  arrays, extra = rec["arrays"], rec["extra"]
  rows = analysis.frame(rec["runs"])
  metrics = (("test_accuracy", 1, 100, "acc"), ("test_nll", 3, 1, "NLL"),
             ("test_ece", 3, 1, "ECE"), ("test_rs_nll", 3, 1, "NLL (rs)"))
  summary = analysis.group_summary(rows, tag, [m for m, *_ in metrics])
  raw = arrays["grid"] * np.asarray(extra["norm_std"]) + np.asarray(extra["norm_mean"])
  g0, g1 = raw[:, 0].reshape(GRID, GRID), raw[:, 1].reshape(GRID, GRID)
  pts, lab = np.asarray(extra["train_points"]), np.asarray(extra["train_labels"])
  fig, axes = plots.new_figure(1, len(summary), size=(3.4, 3.4), layout="constrained")
  for ax, (name, r) in zip(axes[0], summary.iterrows()):
    seeds = arrays[f"{name}|grid"]
    cf = ax.contourf(g0, g1, _p1(seeds[0]), levels=np.linspace(0, 1, 11), cmap="RdBu_r",
                     alpha=0.75)
    ax.contour(g0, g1, _p1(seeds[0]), levels=[0.5], colors="k", linewidths=1.5)
    for other in seeds[1:]:
      ax.contour(g0, g1, _p1(other), levels=[0.5], colors="k", linewidths=0.6, alpha=0.4,
                 linestyles="--")
    ax.scatter(pts[:, 0], pts[:, 1], c=lab, cmap="bwr", s=8, edgecolor="k", lw=0.3)
    ax.set_title(f"{name}\nacc {r['test_accuracy'] * 100:.1f}%, NLL {r['test_nll']:.3f}",
                 fontsize=8)
    ax.set(xlabel="x₁", ylabel="x₂")
  fig.colorbar(cf, ax=axes[0].tolist(), label="P(class 1)", shrink=0.85)
  fig.suptitle("Two moons (n = 300, noise 0.01), random Fourier features: colour = "
               "P(class 1) of seed 0; solid line = its 0.5 contour, dashed = other seeds; "
               "dots = training points", fontsize=9)
  f = plots.save(fig, os.path.join(out, f"{setting}.png"), tight=False)
  cfg = rec["config"]
  body = [[name] + [analysis.fmt(r[m], r[m + "_se"], d, s) for m, d, s, _ in metrics]
          for name, r in summary.iterrows()]
  return "\n".join([
      "## (c) Two moons: decision boundaries\n",
      f"{cfg['train']['num_epochs']} epochs, Adam lr {cfg['lr']}, batch "
      f"{cfg['train']['batch_size']}, {len(cfg['seeds'])} seeds; mixup and approx use "
      "λ ~ Beta(1, 1). Test metrics (mean ± se):\n",
      analysis.markdown_table([tag] + [n for *_, n in metrics], body),
      f"\n![two moons]({os.path.basename(f)})\n"])
