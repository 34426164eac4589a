"""Statistics and tables for study reports: means ± standard errors, slopes with
confidence intervals, paired comparisons, Markdown tables.

Conventions:
  * "± se" is the standard error of the mean over seeds, sd / √n (n = number of seeds).
  * Runs that share a seed share their initialization and data order (the engine's
    common random numbers), so law-vs-law comparisons are *paired by seed*.
  * Slopes of a metric against a law statistic (σ²/θ̄² or γ²/θ̄²) are fit by ordinary
    least squares on the per-law means, with a t-based 95% interval (n_laws − 2 degrees
    of freedom), and checked by a *cluster bootstrap over seeds* (resampling whole seeds,
    keeping each seed's runs together, then refitting on the resampled per-law means),
    whose percentile interval accounts for the seed-to-seed correlation between laws.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from scipy import stats as sp_stats


def select(rows: Sequence[dict], **where: Any) -> list[dict]:
  """Rows whose fields equal the given values."""
  return [r for r in rows if all(r.get(k) == v for k, v in where.items())]


def unique(rows: Sequence[dict], key: str) -> list[Any]:
  """Distinct values of `key`, in first-appearance order."""
  seen, out = set(), []
  for r in rows:
    v = r.get(key)
    if v not in seen:
      seen.add(v)
      out.append(v)
  return out


def mean_se(values: Iterable[float]) -> tuple[float, float, int]:
  """(mean, standard error of the mean, n) ignoring NaNs; se is NaN for n < 2."""
  v = np.asarray([x for x in values if x is not None], np.float64)
  v = v[np.isfinite(v)]
  n = len(v)
  if n == 0:
    return math.nan, math.nan, 0
  se = float(np.std(v, ddof=1) / math.sqrt(n)) if n > 1 else math.nan
  return float(np.mean(v)), se, n


def fmt(mean: float, se: float | None = None, digits: int = 3, scale: float = 1.0) -> str:
  """'m ± se' with `digits` decimals (values multiplied by `scale`, e.g. 100 for %)."""
  if mean is None or not np.isfinite(mean):
    return "n/a"
  if se is None or not np.isfinite(se):
    return f"{mean * scale:.{digits}f}"
  return f"{mean * scale:.{digits}f} ± {se * scale:.{digits}f}"


def group_summary(rows: Sequence[dict], by: str, metrics: Sequence[str],
                  keep: Sequence[str] = ()) -> list[dict]:
  """Per value of `by`: mean, se and n of each metric over its rows (e.g. seeds).

  Returns rows {by: value, **{k: first row's k for k in keep}, metric: mean,
  metric + '_se': se, 'n': n}.
  """
  out = []
  for v in unique(rows, by):
    sub = select(rows, **{by: v})
    row = {by: v, **{k: sub[0].get(k) for k in keep}}
    for m in metrics:
      mu, se, n = mean_se(r.get(m) for r in sub)
      row[m], row[m + "_se"], row["n"] = mu, se, n
    out.append(row)
  return out


def linear_fit(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
  """OLS y = a + b x with the t-based 95% CI of b and its two-sided p-value."""
  x = np.asarray(x, np.float64)
  y = np.asarray(y, np.float64)
  ok = np.isfinite(x) & np.isfinite(y)
  x, y = x[ok], y[ok]
  n = len(x)
  if n < 3 or np.ptp(x) == 0:
    return {"slope": math.nan, "intercept": math.nan, "ci_low": math.nan,
            "ci_high": math.nan, "p": math.nan, "n": n, "r": math.nan}
  res = sp_stats.linregress(x, y)
  t = sp_stats.t.ppf(0.975, n - 2)
  return {"slope": float(res.slope), "intercept": float(res.intercept),
          "ci_low": float(res.slope - t * res.stderr),
          "ci_high": float(res.slope + t * res.stderr),
          "p": float(res.pvalue), "n": n, "r": float(res.rvalue)}


def slope_vs(rows: Sequence[dict], x_key: str, metric: str, *, law_key: str = "law",
             seed_key: str = "seed", num_boot: int = 2000, seed: int = 0) -> dict[str, float]:
  """Slope of `metric` against a per-law statistic `x_key`, with two 95% intervals.

  The fit is OLS over the per-law mean metric (t interval, n_laws − 2 dof), and a cluster
  bootstrap over seeds (percentile interval; see the module docstring). Also returns the
  Spearman rank correlation of the per-law means.
  """
  laws = unique(rows, law_key)
  seeds = unique(rows, seed_key)
  xs = np.asarray([select(rows, **{law_key: l})[0][x_key] for l in laws], np.float64)
  table = _law_seed_table(rows, metric, laws, seeds, law_key, seed_key)
  means = _row_means(table)
  fit = linear_fit(xs, means)
  boot_means = _bootstrap_means(table, num_boot, seed)  # (n_laws, num_boot)
  ok = np.isfinite(xs) & np.isfinite(means)  # a law without any finite value drops out
  xc = xs[ok] - xs[ok].mean()
  if len(xc) >= 3 and np.any(xc != 0):
    mb = boot_means[ok]
    boots = (xc @ (mb - mb.mean(0))) / (xc @ xc)
    boots = boots[np.isfinite(boots)]
  else:
    boots = np.asarray([])
  if boots.size:
    fit["boot_low"], fit["boot_high"] = (float(np.percentile(boots, 2.5)),
                                         float(np.percentile(boots, 97.5)))
  else:
    fit["boot_low"] = fit["boot_high"] = math.nan
  rho = sp_stats.spearmanr(xs, means) if len(xs) > 2 else None
  fit["spearman"] = float(rho.statistic) if rho is not None else math.nan
  fit["spearman_p"] = float(rho.pvalue) if rho is not None else math.nan
  fit["num_seeds"] = len(seeds)
  return fit


def _law_seed_table(rows, metric, laws, seeds, law_key, seed_key) -> np.ndarray:
  table = np.full((len(laws), len(seeds)), np.nan)
  for i, l in enumerate(laws):
    for j, s in enumerate(seeds):
      sub = select(rows, **{law_key: l, seed_key: s})
      if sub and sub[0].get(metric) is not None:
        table[i, j] = sub[0][metric]
  return table


def _row_means(table: np.ndarray) -> np.ndarray:
  """Per-law means over seeds ignoring NaNs (NaN for a law without values)."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)
    return np.nanmean(table, axis=1)


def _bootstrap_means(table: np.ndarray, num_boot: int, seed: int) -> np.ndarray:
  """Per-law means over seeds resampled with replacement (whole seeds), (n_laws, B)."""
  rng = np.random.default_rng(seed)
  n_seeds = table.shape[1]
  pick = rng.integers(0, n_seeds, (num_boot, n_seeds))
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)
    return np.nanmean(table[:, pick], axis=2)


def _ols(xmat: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
  """Coefficients and their standard errors of y = X b (X with an intercept column)."""
  ok = np.isfinite(y)
  xmat, y = xmat[ok], y[ok]
  n, k = xmat.shape
  coef, *_ = np.linalg.lstsq(xmat, y, rcond=None)
  resid = y - xmat @ coef
  dof = n - k
  if dof <= 0:
    return coef, np.full(k, np.nan), dof
  s2 = resid @ resid / dof
  cov = s2 * np.linalg.pinv(xmat.T @ xmat)
  return coef, np.sqrt(np.maximum(np.diag(cov), 0)), dof


def regress_laws(rows: Sequence[dict], x_keys: Sequence[str], metric: str, *,
                 law_key: str = "law", seed_key: str = "seed", num_boot: int = 2000,
                 seed: int = 0) -> dict[str, dict[str, float]]:
  """Multiple regression of the per-law mean `metric` on per-law statistics `x_keys`.

  Returns {x_key: {coef, ci_low, ci_high (t, n_laws − 1 − k dof), boot_low, boot_high
  (cluster bootstrap over seeds)}}.
  """
  laws = unique(rows, law_key)
  seeds = unique(rows, seed_key)
  xmat = np.asarray([[1.0] + [select(rows, **{law_key: l})[0][k] for k in x_keys]
                     for l in laws], np.float64)
  table = _law_seed_table(rows, metric, laws, seeds, law_key, seed_key)
  coef, se, dof = _ols(xmat, _row_means(table))
  t = sp_stats.t.ppf(0.975, dof) if dof > 0 else math.nan
  boot_means = _bootstrap_means(table, num_boot, seed)
  ok = np.all(np.isfinite(boot_means), axis=1)
  boots = (np.linalg.pinv(xmat[ok]) @ boot_means[ok]).T  # (num_boot, 1 + k)
  out = {}
  for i, k in enumerate(x_keys, start=1):
    out[k] = {"coef": float(coef[i]), "ci_low": float(coef[i] - t * se[i]),
              "ci_high": float(coef[i] + t * se[i]),
              "boot_low": float(np.percentile(boots[:, i], 2.5)),
              "boot_high": float(np.percentile(boots[:, i], 97.5)), "dof": dof}
  return out


def paired_difference(rows: Sequence[dict], metric: str, law_a: str, law_b: str, *,
                      law_key: str = "law", seed_key: str = "seed") -> dict[str, float]:
  """mean over seeds of metric(law_a) − metric(law_b), its se and t-based 95% CI."""
  diffs = []
  for s in unique(rows, seed_key):
    a = select(rows, **{law_key: law_a, seed_key: s})
    b = select(rows, **{law_key: law_b, seed_key: s})
    if a and b and a[0].get(metric) is not None and b[0].get(metric) is not None:
      diffs.append(a[0][metric] - b[0][metric])
  mu, se, n = mean_se(diffs)
  t = sp_stats.t.ppf(0.975, n - 1) if n > 1 else math.nan
  return {"diff": mu, "se": se, "n": n, "ci_low": mu - t * se, "ci_high": mu + t * se}


def within_group_test(rows: Sequence[dict], metric: str, laws: Sequence[str], *,
                      law_key: str = "law", seed_key: str = "seed") -> dict[str, float]:
  """Do laws with equal θ-moments differ? Repeated-measures one-way ANOVA over seeds.

  F = MS_law / MS_error with seeds as blocks (the runs of one seed share initialization
  and data order); p from F(k − 1, (k − 1)(s − 1)). Also the largest |paired difference|.
  """
  seeds = unique(rows, seed_key)
  table = _law_seed_table(rows, metric, list(laws), seeds, law_key, seed_key)
  table = table[:, np.all(np.isfinite(table), axis=0)]
  k, s = table.shape
  if k < 2 or s < 2:
    return {"F": math.nan, "p": math.nan, "k": k, "seeds": s}
  grand = table.mean()
  ss_law = s * np.sum((table.mean(1) - grand) ** 2)
  ss_seed = k * np.sum((table.mean(0) - grand) ** 2)
  ss_tot = np.sum((table - grand) ** 2)
  ss_err = ss_tot - ss_law - ss_seed
  df1, df2 = k - 1, (k - 1) * (s - 1)
  f = (ss_law / df1) / max(ss_err / df2, 1e-300)
  return {"F": float(f), "p": float(sp_stats.f.sf(f, df1, df2)), "k": k, "seeds": s,
          "range_of_means": float(np.ptp(table.mean(1)))}


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]],
                   align: str | None = None) -> str:
  """A GitHub Markdown table (align: one of 'l', 'r', 'c' per column; default l then r)."""
  align = align or ("l" + "r" * (len(header) - 1))
  marks = {"l": ":---", "r": "---:", "c": ":---:"}
  lines = ["| " + " | ".join(str(h) for h in header) + " |",
           "| " + " | ".join(marks[a] for a in align) + " |"]
  for r in rows:
    lines.append("| " + " | ".join(str(c) for c in r) + " |")
  return "\n".join(lines) + "\n"


def verdict_from_slope(fit: dict[str, float], *, better: str, what: str, x_name: str
                       ) -> str:
  """A one-sentence reading of a slope fit (`better`: 'higher' or 'lower' is better).

  Two intervals answer two questions. The t-interval over laws treats the laws' scatter
  around the line as noise: it excludes 0 only if `x_name` explains the ranking of the
  laws. The seed bootstrap keeps the laws fixed and resamples only training noise: it
  excludes 0 when the least-squares trend through *these* laws is not a seed artefact,
  even if the laws scatter widely around it.
  """
  lo, hi = fit.get("boot_low", math.nan), fit.get("boot_high", math.nan)
  tlo, thi = fit.get("ci_low", math.nan), fit.get("ci_high", math.nan)
  if not (np.isfinite(lo) and np.isfinite(hi) and np.isfinite(tlo)):
    return f"{what}: not enough laws/seeds to fit a slope against {x_name}."
  sign = 1 if better == "higher" else -1
  direction = "improves" if (fit["slope"] > 0) == (sign > 0) else "worsens"
  desc = (f"slope {fit['slope']:.3g}, t-CI over laws [{tlo:.3g}, {thi:.3g}], seed-bootstrap "
          f"CI [{lo:.3g}, {hi:.3g}], Spearman ρ = {fit.get('spearman', math.nan):.2f}")
  if tlo > 0 or thi < 0:
    return f"{what} {direction} with {x_name}, significantly across laws ({desc})."
  if lo > 0 or hi < 0:
    return (f"{what} {direction} with {x_name} on average over these laws, but the laws "
            f"scatter too much around the line to call it a law-level effect ({desc}).")
  return f"{what}: no detectable linear trend in {x_name} ({desc})."


def apply_rows(rows: Sequence[dict], fn: Callable[[dict], dict]) -> list[dict]:
  """Returns [dict(r, **fn(r))] (derived columns)."""
  return [{**r, **fn(r)} for r in rows]
