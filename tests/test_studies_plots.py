"""mixjax.studies.plots: the smooth reliability diagram and the per-corruption bars.

The figures are written as PNGs (checked to decode, with the expected size), and what
they draw is checked against a recomputation: the smooth curve against relplot's own
kernel smoother at relplot's SmoothECE bandwidth, the bars against the values passed in.
"""
from __future__ import annotations

from matplotlib.collections import LineCollection
import numpy as np
import PIL.Image
import relplot
from relplot import estimators as relplot_estimators
from relplot import kernels as relplot_kernels

from mixjax.studies import plots


def predictions(seed, n=1500, c=10, temperature=0.5):
  """Over-confident logits (labels ~ softmax(z), logits z / T) and labels."""
  rng = np.random.default_rng(seed)
  z = 2.0 * rng.normal(size=(n, c))
  labels = np.argmax(z + rng.gumbel(size=(n, c)), axis=1).astype(np.int32)
  return (z / temperature).astype(np.float32), labels


def png_size(path):
  with PIL.Image.open(path) as img:
    img.verify()
  with PIL.Image.open(path) as img:
    return img.format, img.size


def test_smooth_reliability_diagram_draws_relplots_curve(tmp_path):
  logits, labels = predictions(0)
  conf, correct = relplot.multiclass_logits_to_confidences(logits.astype(np.float64),
                                                           labels)
  fig, axes = plots.new_figure(1, 1)
  ax = axes[0, 0]
  curve = plots.smooth_reliability_diagram(ax, conf, correct)
  (lines,) = [c for c in ax.collections if isinstance(c, LineCollection)]
  segments = np.array(lines.get_segments())
  x = np.r_[segments[:, 0, 0], segments[-1, 1, 0]]
  y = np.r_[segments[:, 0, 1], segments[-1, 1, 1]]
  # Recomputed with relplot: its bandwidth, its reflected kernel and smoother.
  value, sigma = relplot.smECE(conf, correct, return_width=True)
  kernel = relplot_kernels.ReflectedGaussianKernel(sigma)
  want = relplot_estimators.KernelSmoother(kernel).fit(conf[:, None], correct).predict(
      x[:, None])
  np.testing.assert_allclose(x, np.linspace(0, 1, 200))
  np.testing.assert_allclose(y, want, atol=1e-9)
  assert abs(curve.smooth_ece - value) < 1e-6 and curve.sigma == sigma
  # Over-confident: the curve lies below the diagonal at high confidence.
  assert np.all(y[x > 0.6] < x[x > 0.6])
  # Width and opacity grow with the density of the confidences (at the segments' ends).
  density = 0.5 * (kernel.kde(conf, x[:-1]) + kernel.kde(conf, x[1:]))
  order = np.argsort(density)
  for v in (np.asarray(lines.get_linewidths()), lines.get_colors()[:, 3]):
    assert np.all(np.diff(v[order]) >= -1e-12) and v.max() > 2 * v.min()
  assert any(f"smECE {value:.3f}" == t.get_text() for t in ax.texts)
  path = plots.save(fig, str(tmp_path / "one.png"))
  assert png_size(path)[0] == "PNG"


def test_smooth_reliability_figure_writes_one_panel_per_run(tmp_path):
  runs = {"ERM": predictions(1, temperature=0.5), "Beta(1, 1)": predictions(2, 500,
                                                                           temperature=1.5)}
  path = plots.smooth_reliability_figure(runs, str(tmp_path / "d" / "rel.png"))
  fmt, (w, h) = png_size(path)
  assert fmt == "PNG" and w > 1.8 * h  # two panels side by side


def test_shift_bars_heights_are_the_values(tmp_path):
  corruptions = ("shot_noise", "stripe", "fog", "mean")
  rng = np.random.default_rng(3)
  results = {run: {c: {"accuracy": rng.uniform(0.3, 0.9), "ece": rng.uniform(0, 0.3)}
                   for c in corruptions} for run in ("ERM", "Beta(0.2, 0.2)", "W(0.5, 0.5)")}
  fig, axes = plots.new_figure(1, 1)
  bars = plots.shift_bars(axes[0, 0], results, "ece")
  assert list(bars) == list(results)
  for run, container in bars.items():
    heights = [p.get_height() for p in container.patches]
    np.testing.assert_allclose(heights, [results[run][c]["ece"] for c in corruptions])
  centres = np.array([[p.get_x() + p.get_width() / 2 for p in c.patches]
                      for c in bars.values()])
  assert np.all(np.diff(centres, axis=0) > 0)  # runs side by side within each group
  labels = [t.get_text() for t in axes[0, 0].get_xticklabels()]
  assert labels == ["shot noise", "stripe", "fog", "mean"]
  plots.save(fig, str(tmp_path / "bars.png"))
  path = plots.shift_figure(results, str(tmp_path / "shift.png"))
  fmt, (w, h) = png_size(path)
  assert fmt == "PNG" and h > w / 3  # two stacked panels
