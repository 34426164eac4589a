"""Matplotlib (Agg) helpers for study figures: law families, error bars, smooth
reliability diagrams, metrics per corruption, saving."""
from __future__ import annotations

import os
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  pylint: disable=g-import-not-at-top
import numpy as np  # noqa: E402  pylint: disable=g-import-not-at-top

FAMILY_STYLE = {
    "ERM": ("black", "s"),
    "Beta": ("tab:blue", "o"),
    "W-shaped": ("tab:orange", "^"),
    "RegMixup": ("tab:green", "D"),
    "optimal": ("tab:red", "*"),
    "atoms": ("tab:purple", "v"),
    "other": ("tab:gray", "x"),
}


def family(label: str) -> str:
  """The family of a law label (`mixjax.samplers` labels: `sampler.label`)."""
  if label == "ERM":
    return "ERM"
  if label.startswith("Beta(") or label == "Uniform":
    return "Beta"
  if label.startswith("W("):
    return "W-shaped"
  if label.startswith("RegMixup"):
    return "RegMixup"
  if label == "optimal":
    return "optimal"
  if "atoms" in label or label.startswith("θ="):
    return "atoms"
  return "other"


def style(label: str) -> tuple[str, str]:
  """(color, marker) of a law label's family."""
  return FAMILY_STYLE[family(label)]


def new_figure(nrows: int = 1, ncols: int = 1, size: tuple[float, float] = (4.2, 3.4),
               **kw):
  fig, axes = plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows),
                           squeeze=False, **kw)
  return fig, axes


def errorbar_points(ax, x: Sequence[float], y: Sequence[float], yerr: Sequence[float],
                    labels: Sequence[str], *, hollow: bool = False, offset: float = 0.0,
                    alpha: float = 1.0, zorder: int = 3) -> None:
  """One point per law (colored/marked by family) with ±se error bars."""
  for xi, yi, ei, lab in zip(x, y, yerr, labels):
    c, m = style(lab)
    ax.errorbar(xi + offset, yi, yerr=ei if np.isfinite(ei) else None, fmt=m, color=c,
                mfc="white" if hollow else c, mec=c, ms=6 if m != "*" else 10,
                capsize=2.5, lw=1, alpha=alpha, zorder=zorder)


def family_legend(ax, labels: Sequence[str], *, extra: Sequence = (), loc: str = "best",
                  fontsize: int = 7, ncol: int = 1) -> None:
  """A legend (on an axes or a figure) with one entry per family among `labels`."""
  from matplotlib.lines import Line2D  # pylint: disable=g-import-not-at-top
  fams = []
  for lab in labels:
    f = family(lab)
    if f not in fams:
      fams.append(f)
  handles = [Line2D([], [], color=FAMILY_STYLE[f][0], marker=FAMILY_STYLE[f][1], ls="",
                    label=f) for f in fams]
  ax.legend(handles=handles + list(extra), loc=loc, fontsize=fontsize, framealpha=0.85,
            ncol=ncol)


def save(fig, path: str, dpi: int = 130, tight: bool = True) -> str:
  """Saves a PNG (creating the directory) and closes the figure."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  if tight:
    fig.tight_layout()
  fig.savefig(path, dpi=dpi)
  plt.close(fig)
  return path


# ----------------------------------------------------------- calibration and shift


def smooth_reliability_diagram(ax, confidence, correct, *, color: str = "tab:red",
                               label: str | None = None, show_density: bool = True,
                               show_value: bool = True):
  """relplot's smooth reliability diagram (Błasiok & Nakkiran) on `ax`.

  The curve is `mixjax.eval.smooth_reliability`: the kernel-smoothed accuracy
  E[correct | confidence = t] at the SmoothECE bandwidth σ*, drawn as line segments whose
  width and opacity grow with the kernel density δ(t) of the confidences (∫δ = 1), as
  relplot does with its density-sized markers (width 0.4 + 1.6 min(√(δ/2), 2) points,
  opacity clip(0.3 δ, 0.05, 1)): where few predictions fall the estimate is unreliable
  and fades out. The density is shaded along the bottom (scaled to its maximum), the
  diagonal is perfect calibration, and smECE is printed.

  Args:
    ax: a matplotlib Axes.
    confidence, correct: (N,) top-label confidences and 0/1 correctness
      (`mixjax.eval.top_label(logits, labels)`).

  Returns:
    The `SmoothReliability` drawn (mesh, accuracy, density, sigma, smooth_ece).
  """
  from matplotlib.collections import LineCollection  # pylint: disable=g-import-not-at-top
  from mixjax.eval import pooled  # pylint: disable=g-import-not-at-top
  curve = pooled.smooth_reliability(confidence, correct)
  t, acc, dens = curve.mesh, curve.accuracy, curve.density
  ax.plot([0, 1], [0, 1], "k--", lw=1, alpha=0.3)
  if show_density:
    ax.fill_between(t, 0, 0.15 * dens / dens.max(), color="gray", alpha=0.3, lw=0)
  points = np.stack([t, acc], axis=1)
  segments = np.stack([points[:-1], points[1:]], axis=1)
  mid = 0.5 * (dens[:-1] + dens[1:])
  rgba = np.tile(matplotlib.colors.to_rgba(color), (mid.size, 1))
  rgba[:, 3] = np.clip(0.3 * mid, 0.05, 1.0)
  widths = 0.4 + 1.6 * np.minimum(np.sqrt(mid / 2), 2.0)
  ax.add_collection(LineCollection(segments, colors=rgba, linewidths=widths,
                                   capstyle="round", label=label))
  if show_value:
    ax.text(0.04, 0.92, f"smECE {curve.smooth_ece:.3f}", transform=ax.transAxes,
            fontsize=8)
  ax.set_xlim(0, 1)
  ax.set_ylim(0, 1)
  ax.set_aspect("equal")
  ax.set_xlabel("confidence")
  ax.set_ylabel("accuracy (smoothed)")
  return curve


def smooth_reliability_figure(predictions, path: str, *, ncols: int = 4) -> str:
  """One smooth reliability diagram per run: `predictions` maps a title (e.g. a law's
  label) to (logits (N, c), labels (N,)). Saves a PNG at `path` and returns it."""
  from mixjax.eval import pooled  # pylint: disable=g-import-not-at-top
  names = list(predictions)
  ncols = min(ncols, len(names))
  nrows = -(-len(names) // ncols)
  fig, axes = new_figure(nrows, ncols, size=(3.2, 3.2))
  for ax, name in zip(axes.flat, names):
    smooth_reliability_diagram(ax, *pooled.top_label(*predictions[name]),
                               color=style(name)[0])
    ax.set_title(name, fontsize=9)
  for ax in list(axes.flat)[len(names):]:
    ax.axis("off")
  return save(fig, path)


def shift_bars(ax, results, metric: str, *, corruptions=None):
  """Grouped bars of `metric` per corruption, one bar per run in each group.

  Args:
    ax: a matplotlib Axes.
    results: {run label: {corruption: {metric: value}}}, e.g. each run's
      `mixjax.eval.evaluate_shift` output (its "mean" entry is a group like the others).
    metric: e.g. "accuracy", "ece", "smooth_ece".
    corruptions: the groups, in order (default: the first run's keys).

  Returns:
    {run label: the BarContainer of its bars} (heights = the values, in group order).
  """
  runs = list(results)
  groups = list(corruptions or next(iter(results.values())))
  width = 0.8 / len(runs)
  x = np.arange(len(groups))
  bars = {}
  for k, run in enumerate(runs):
    values = [results[run][g][metric] for g in groups]
    bars[run] = ax.bar(x - 0.4 + width * (k + 0.5), values, width, label=run,
                       color=f"C{k}")
  ax.set_xticks(x, [g.replace("_", " ") for g in groups], rotation=60, ha="right",
                fontsize=7)
  ax.set_ylabel(metric.replace("_", " "))
  ax.legend(fontsize=7, ncol=min(len(runs), 4), loc="lower center",
            bbox_to_anchor=(0.5, 1.0), frameon=False)
  return bars


def shift_figure(results, path: str, *, metrics=("accuracy", "ece"),
                 corruptions=None) -> str:
  """`shift_bars` for each metric, one panel per metric stacked; saves a PNG at `path`."""
  groups = list(corruptions or next(iter(results.values())))
  fig, axes = new_figure(len(metrics), 1, size=(max(6.0, 0.45 * len(groups) + 1.5), 2.8))
  for ax, metric in zip(axes[:, 0], metrics):
    shift_bars(ax, results, metric, corruptions=groups)
  return save(fig, path)
