"""Matplotlib (Agg) helpers for study figures: law families, error bars, saving."""
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
