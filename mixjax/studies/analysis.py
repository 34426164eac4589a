"""Statistics and tables for study reports: means ± standard errors, slopes with
confidence intervals, paired comparisons, Markdown tables.

The statistics come from well-kept libraries (the `studies` extra): pandas for the
groupings and the law × seed tables, statsmodels for OLS and the repeated-measures
ANOVA (`AnovaRM`), SciPy for the paired t-test, Spearman's ρ and the bootstrap
(`scipy.stats.bootstrap`). What is kept here is the study-specific glue.

Conventions:
  * "± se" is the standard error of the mean over seeds, sd / √n (n = number of seeds).
  * Runs that share a seed share their initialization and data order (the trainer's
    common random numbers), so law-vs-law comparisons are *paired by seed*.
  * Slopes of a metric against a law statistic (σ²/θ̄² or γ²/θ̄²) are fit by ordinary
    least squares on the per-law means, with a t-based 95% interval (n_laws − 2 degrees
    of freedom), and checked by a *cluster bootstrap over seeds* (`scipy.stats.bootstrap`
    with `paired=True` over the laws' rows: whole seeds are resampled, keeping each
    seed's runs together, then the fit is redone on the resampled per-law means), whose
    percentile interval accounts for the seed-to-seed correlation between laws.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sp_stats
import statsmodels.api as sm
from statsmodels.stats.anova import AnovaRM
from statsmodels.stats.power import TTestPower


def frame(rows: Sequence[dict] | pd.DataFrame) -> pd.DataFrame:
  """The rows as a DataFrame, in their order. In numeric columns None and ±inf become
  NaN, so that the statistics below ignore them (a run whose loss diverged)."""
  df = rows.copy() if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
  for col in df.columns:
    if df[col].dtype == object:
      num = pd.to_numeric(df[col], errors="coerce")
      if num.notna().sum() == df[col].notna().sum() and num.notna().any():
        df[col] = num  # numbers with None: numeric with NaN
    if pd.api.types.is_float_dtype(df[col]):
      df[col] = df[col].replace([np.inf, -np.inf], np.nan)
  return df


def unique(rows: Sequence[dict] | pd.DataFrame, key: str) -> list[Any]:
  """Distinct values of `key`, in first-appearance order."""
  return list(pd.unique(frame(rows)[key]))


def mean_se(values: Iterable[float]) -> tuple[float, float, int]:
  """(mean, standard error of the mean, n) ignoring NaNs and infinities; se is NaN for
  n < 2."""
  v = frame([{"v": x} for x in values])
  v = v["v"].dropna() if "v" in v else pd.Series(dtype=np.float64)
  if v.empty:
    return math.nan, math.nan, 0
  return float(v.mean()), float(v.sem(ddof=1)) if len(v) > 1 else math.nan, int(len(v))


def fmt(mean: float, se: float | None = None, digits: int = 3, scale: float = 1.0) -> str:
  """'m ± se' with `digits` decimals (values multiplied by `scale`, e.g. 100 for %)."""
  if mean is None or not np.isfinite(mean):
    return "n/a"
  if se is None or not np.isfinite(se):
    return f"{mean * scale:.{digits}f}"
  return f"{mean * scale:.{digits}f} ± {se * scale:.{digits}f}"


def group_summary(rows: Sequence[dict] | pd.DataFrame, by: str | Sequence[str],
                  metrics: Sequence[str], keep: Sequence[str] = ()) -> pd.DataFrame:
  """Per value of `by` (a column or columns; groups in first-appearance order): the
  mean, standard error and count of each metric over the group's rows (e.g. seeds),
  NaNs and infinities ignored (`groupby().agg`).

  Returns a DataFrame indexed by `by` with columns `keep` (the group's first value),
  m, m + "_se" (NaN for fewer than 2 values) and m + "_n" for each metric m, and "n",
  the count of the first metric (unless `keep` has a column "n").
  """
  df = frame(rows)
  metrics = list(metrics)
  g = df.groupby(by, sort=False)
  stats = g[metrics].agg(["mean", "sem", "count"])
  out = g[list(keep)].first() if keep else pd.DataFrame(index=stats.index)
  for m in metrics:
    out[m] = stats[(m, "mean")]
    out[m + "_se"] = stats[(m, "sem")]
    out[m + "_n"] = stats[(m, "count")]
  if "n" not in out:
    out["n"] = out[metrics[0] + "_n"]
  return out


def linear_fit(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
  """OLS y = a + b x (statsmodels) with the t-based 95% CI of b and its two-sided
  p-value; r is the Pearson correlation."""
  x = np.asarray(x, np.float64)
  y = np.asarray(y, np.float64)
  ok = np.isfinite(x) & np.isfinite(y)
  x, y = x[ok], y[ok]
  n = len(x)
  if n < 3 or np.ptp(x) == 0:
    return {"slope": math.nan, "intercept": math.nan, "ci_low": math.nan,
            "ci_high": math.nan, "p": math.nan, "n": n, "r": math.nan}
  res = sm.OLS(y, sm.add_constant(x)).fit()
  lo, hi = res.conf_int(0.05)[1]
  return {"slope": float(res.params[1]), "intercept": float(res.params[0]),
          "ci_low": float(lo), "ci_high": float(hi), "p": float(res.pvalues[1]), "n": n,
          "r": float(np.sign(res.params[1]) * math.sqrt(max(res.rsquared, 0.0)))}


def law_seed_table(rows: Sequence[dict] | pd.DataFrame, metric: str, *,
                   law_key: str = "law", seed_key: str = "seed",
                   laws: Sequence[Any] | None = None) -> pd.DataFrame:
  """The metric as a laws × seeds DataFrame (laws in first-appearance order, or `laws`;
  NaN where a run is missing or its value is None)."""
  df = frame(rows)
  df["_m"] = pd.to_numeric(df[metric], errors="coerce").astype(np.float64)
  table = df.pivot_table(index=law_key, columns=seed_key, values="_m", aggfunc="first",
                         dropna=False, sort=False)
  return table.reindex(index=list(laws) if laws is not None else unique(df, law_key),
                       columns=unique(df, seed_key)).astype(np.float64)


def _law_values(rows, law_key: str, keys: Sequence[str]) -> np.ndarray:
  """(laws, len(keys)): each law's first value of the per-law statistics `keys`, laws in
  first-appearance order."""
  first = frame(rows).groupby(law_key, sort=False)[list(keys)].first()
  return first.to_numpy(np.float64)


def _nanmean(a: np.ndarray, axis: int) -> np.ndarray:
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)
    return np.nanmean(a, axis=axis)


def _seed_bootstrap(table: np.ndarray, fit: Callable[[np.ndarray], np.ndarray],
                    num_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Percentile 95% interval(s) of `fit(per-law means (..., laws)) -> (..., k)` under
  the cluster bootstrap over seeds: `scipy.stats.bootstrap` with the laws' rows as
  paired samples (the same seeds drawn for every law). Returns (low, high), each (k,)."""
  def statistic(*law_rows, axis=-1):
    return np.moveaxis(fit(np.stack([_nanmean(a, axis) for a in law_rows], axis=-1)),
                       -1, 0)

  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # degenerate resamples
    res = sp_stats.bootstrap(tuple(table), statistic, paired=True, vectorized=True,
                             n_resamples=num_boot, method="percentile",
                             random_state=np.random.default_rng(seed))
  dist = np.reshape(res.bootstrap_distribution, (-1, num_boot))
  return tuple(np.nanpercentile(dist, q, axis=1) for q in (2.5, 97.5))


def slope_vs(rows: Sequence[dict], x_key: str, metric: str, *, law_key: str = "law",
             seed_key: str = "seed", num_boot: int = 2000, seed: int = 0) -> dict[str, float]:
  """Slope of `metric` against a per-law statistic `x_key`, with two 95% intervals.

  The fit is OLS over the per-law mean metric (t interval, n_laws − 2 dof), and a cluster
  bootstrap over seeds (percentile interval; see the module docstring). Also returns the
  Spearman rank correlation of the per-law means. A law without any finite value drops
  out of both.
  """
  xs = _law_values(rows, law_key, [x_key])[:, 0]
  table = law_seed_table(rows, metric, law_key=law_key, seed_key=seed_key)
  means = table.mean(axis=1, skipna=True).to_numpy()
  fit = linear_fit(xs, means)
  ok = np.isfinite(xs) & np.isfinite(means)
  xc = xs[ok] - xs[ok].mean() if ok.any() else xs[ok]
  fit["boot_low"] = fit["boot_high"] = math.nan
  if len(xc) >= 3 and np.any(xc != 0) and table.shape[1] > 1:
    slope = lambda m: ((m - m.mean(-1, keepdims=True)) @ xc / (xc @ xc))[..., None]
    lo, hi = _seed_bootstrap(table.to_numpy()[ok], slope, num_boot, seed)
    fit["boot_low"], fit["boot_high"] = float(lo[0]), float(hi[0])
  rho = sp_stats.spearmanr(xs, means) if len(xs) > 2 else None
  fit["spearman"] = float(rho.statistic) if rho is not None else math.nan
  fit["spearman_p"] = float(rho.pvalue) if rho is not None else math.nan
  fit["num_seeds"] = int(table.shape[1])
  return fit


def regress_laws(rows: Sequence[dict], x_keys: Sequence[str], metric: str, *,
                 law_key: str = "law", seed_key: str = "seed", num_boot: int = 2000,
                 seed: int = 0) -> dict[str, dict[str, float]]:
  """Multiple regression (statsmodels OLS) of the per-law mean `metric` on per-law
  statistics `x_keys`.

  Returns {x_key: {coef, ci_low, ci_high (t, n_laws − 1 − k dof), boot_low, boot_high
  (cluster bootstrap over seeds), dof}}.
  """
  xmat = _law_values(rows, law_key, x_keys)
  table = law_seed_table(rows, metric, law_key=law_key, seed_key=seed_key)
  means = table.mean(axis=1, skipna=True).to_numpy()
  ok = np.isfinite(means)
  if ok.sum() < len(x_keys) + 2:  # no residual degree of freedom: nothing to estimate
    nan = {"coef": math.nan, "ci_low": math.nan, "ci_high": math.nan,
           "boot_low": math.nan, "boot_high": math.nan, "dof": int(ok.sum()) - len(x_keys) - 1}
    return {k: dict(nan) for k in x_keys}
  design = sm.add_constant(xmat[ok], has_constant="add")
  res = sm.OLS(means[ok], design).fit()
  ci = res.conf_int(0.05)
  pinv = np.linalg.pinv(design)
  lo, hi = _seed_bootstrap(table.to_numpy()[ok], lambda m: m @ pinv.T, num_boot, seed)
  return {k: {"coef": float(res.params[i]), "ci_low": float(ci[i, 0]),
              "ci_high": float(ci[i, 1]), "boot_low": float(lo[i]),
              "boot_high": float(hi[i]), "dof": int(res.df_resid)}
          for i, k in enumerate(x_keys, start=1)}


def paired_difference(rows: Sequence[dict], metric: str, law_a: str, law_b: str, *,
                      law_key: str = "law", seed_key: str = "seed") -> dict[str, float]:
  """mean over seeds of metric(law_a) − metric(law_b), its se, the sd of the per-seed
  differences, and the paired t-test's 95% CI and two-sided p-value
  (`scipy.stats.ttest_rel`); seeds missing either law are dropped."""
  table = law_seed_table(rows, metric, law_key=law_key, seed_key=seed_key,
                         laws=[law_a, law_b]).dropna(axis=1)
  a, b = table.to_numpy()
  n = a.size
  if n < 2:
    mu = float(np.mean(a - b)) if n else math.nan
    return {"diff": mu, "se": math.nan, "sd": math.nan, "n": n, "ci_low": math.nan,
            "ci_high": math.nan, "p": math.nan}
  test = sp_stats.ttest_rel(a, b)
  ci = test.confidence_interval(0.95)
  return {"diff": float(np.mean(a - b)), "se": float(sp_stats.sem(a - b)),
          "sd": float(np.std(a - b, ddof=1)), "n": n, "ci_low": float(ci.low),
          "ci_high": float(ci.high), "p": float(test.pvalue)}


def seed_slopes(rows: Sequence[dict] | pd.DataFrame, metric: str, laws: Sequence[str], *,
                x_key: str = "strength", law_key: str = "law", seed_key: str = "seed"
                ) -> dict[str, Any]:
  """The slope of `metric` against the per-law statistic `x_key` over `laws`, per seed.

  Within each seed s, the OLS slope b_s = Σ_k (x_k − x̄)(y_ks − ȳ_s) / Σ_k (x_k − x̄)²
  over the laws k (one run each); then the one-sample t-test of the b_s against 0 over
  seeds (`scipy.stats.ttest_1samp`): a paired analysis, where the laws' scatter around
  each seed's line counts as noise only through its seed-to-seed variation. Seeds
  missing a law are dropped.

  Returns {slope (mean of the b_s), se, sd, n (seeds), ci_low, ci_high (95% t), p
  (two-sided), slopes ({seed: b_s})}.
  """
  df = frame(rows)
  df = df[df[law_key].isin(laws)]
  xs = df.groupby(law_key, sort=False)[x_key].first().reindex(laws).to_numpy(np.float64)
  table = law_seed_table(df, metric, law_key=law_key, seed_key=seed_key,
                         laws=list(laws)).dropna(axis=1)
  y = table.to_numpy()
  xc = xs - xs.mean()
  slopes = (xc @ (y - y.mean(0))) / (xc @ xc)
  n = int(slopes.size)
  out = {"slope": float(np.mean(slopes)) if n else math.nan, "se": math.nan,
         "sd": math.nan, "n": n, "ci_low": math.nan, "ci_high": math.nan, "p": math.nan,
         "slopes": {s: float(b) for s, b in zip(table.columns, slopes)}}
  if n > 1:
    test = sp_stats.ttest_1samp(slopes, 0.0)
    ci = test.confidence_interval(0.95)
    out.update(se=float(sp_stats.sem(slopes)), sd=float(np.std(slopes, ddof=1)),
               ci_low=float(ci.low), ci_high=float(ci.high), p=float(test.pvalue))
  return out


def holm(pvalues: Sequence[float]) -> np.ndarray:
  """Holm's step-down adjusted p-values of one family of tests.

  With the m finite p-values sorted, p_(1) ≤ … ≤ p_(m), the adjusted value of the i-th
  is max_{j ≤ i} min(1, (m − j + 1) p_(j)); rejecting where it is below α controls the
  familywise error at α (Holm 1979). NaN p-values (a test that could not be run) are
  not counted in m and come back NaN.
  """
  p = np.asarray(pvalues, np.float64)
  out = np.full(p.shape, np.nan)
  ok = np.isfinite(p)
  q = p[ok]
  m = q.size
  order = np.argsort(q, kind="stable")
  adjusted = np.empty(m)
  adjusted[order] = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * q[order]))
  out[ok] = adjusted
  return out


def _t_test_power(effect: float, n: int, alpha: float) -> float:
  """The power of a two-sided one-sample t-test at level alpha with n observations
  against a standardized effect: with T = (Z + nc)/√(V/df), nc = effect·√n, df = n − 1,
  V ~ χ²_df, P(|T| > c) = E_Z[F_χ²_df(df (Z + nc)²/c²)] (c the t quantile), integrated
  over Z (scipy.integrate.quad), where the noncentral t's tail underflows."""
  from scipy import integrate  # pylint: disable=g-import-not-at-top
  df = n - 1
  c = sp_stats.t.ppf(1 - alpha / 2, df)
  nc = effect * math.sqrt(n)
  f = lambda z: sp_stats.norm.pdf(z) * sp_stats.chi2.cdf(df * (z + nc) ** 2 / c ** 2, df)
  return float(integrate.quad(f, -12.0, 12.0, points=[-nc] if abs(nc) < 12 else None,
                              limit=200, epsabs=1e-12)[0])


def seeds_needed(diff: float, sd: float, power: float = 0.8, alpha: float = 0.05) -> float:
  """The seeds a two-sided paired t-test at level `alpha` needs to detect a mean
  difference `diff` with `power`, per-seed differences of standard deviation `sd`
  (statsmodels `TTestPower`, the one-sample t-test on the differences); inf for
  diff = 0, NaN when sd is unknown. A planning figure, as noisy as diff itself."""
  if not (np.isfinite(diff) and np.isfinite(sd)) or sd <= 0:
    return math.nan if diff else math.inf
  if diff == 0:
    return math.inf
  effect, test = abs(diff) / sd, TTestPower()

  def enough(n: int) -> bool:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      p = float(test.power(effect, nobs=n, alpha=alpha, alternative="two-sided"))
    if not np.isfinite(p):  # NaN where the noncentral t's tail underflows
      p = _t_test_power(effect, n, alpha)
    return p >= power

  # The smallest n ≥ 2 with enough power, searched upwards from just below the normal
  # approximation (which the t-test's n always exceeds); statsmodels' solve_power can
  # return n < 2 or fail where the t distribution has few degrees of freedom.
  z = sp_stats.norm.ppf(1 - alpha / 2) + sp_stats.norm.ppf(power)
  n = max(2, int((z / effect) ** 2) - 1)
  if n > 10**6:
    return float(n)
  while not enough(n):
    n += 1
  return float(n)


def within_group_test(rows: Sequence[dict], metric: str, laws: Sequence[str], *,
                      law_key: str = "law", seed_key: str = "seed") -> dict[str, float]:
  """Do laws with equal θ-moments differ? Repeated-measures one-way ANOVA over seeds
  (statsmodels `AnovaRM`, seeds as subjects; the runs of one seed share initialization
  and data order). Seeds missing any of the laws are dropped (balanced data). Also the
  range of the per-law means."""
  table = law_seed_table(rows, metric, law_key=law_key, seed_key=seed_key,
                         laws=list(laws)).dropna(axis=1)
  k, s = table.shape
  if k < 2 or s < 2:
    return {"F": math.nan, "p": math.nan, "k": k, "seeds": s}
  long = table.rename_axis(index="law", columns="seed").stack().rename("m").reset_index()
  long["law"] = long["law"].astype(str)
  long["seed"] = long["seed"].astype(str)
  res = AnovaRM(long, depvar="m", subject="seed", within=["law"]).fit().anova_table
  return {"F": float(res["F Value"].iloc[0]), "p": float(res["Pr > F"].iloc[0]), "k": k,
          "seeds": s, "range_of_means": float(np.ptp(table.mean(axis=1).to_numpy()))}


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
