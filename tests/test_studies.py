"""Tests for mixjax.studies: a study file trained by the main entry's sweep and read
back (`study.collect`), the statistics and the report step (the laws' moments and draws
are tested in test_samplers.py)."""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest
from scipy import stats as sp_stats

from helpers import ROOT, parse_main_flags, run_main  # pylint: disable=g-bad-import-order
from mixjax import samplers
from mixjax import samplers as L
from mixjax.errors import ConfigError
from mixjax.studies import analysis
from mixjax.studies import laws
from mixjax.studies import records
from mixjax.studies import runs as study_runs
from mixjax.studies import study
from mixjax.train import sweeps
from mixjax.train import validate

STUDIES = os.path.join(ROOT, "experiments", "studies")

# A study file as experiments/studies/ holds them: a 1-epoch digits setting, five laws
# (three sampler structures) × 2 seeds, and a report.
_TINY_STUDY = """
from mixjax.studies import laws, runs, study

SETTINGS = ("tiny",)
LAWS = [laws.law("erm"), laws.law("beta", alpha=0.2), laws.law("beta", alpha=1.0),
        laws.law("optimal"),
        laws.law("matched_atoms", mean=0.75, var=1 / 48, num_points=2, label="2 atoms")]


def get_config(setting="tiny"):
  return runs.study_config(dataset="digits", model="mlp", model_kwargs={"hidden_sizes": (16,)},
                           num_epochs=1, batch_size=64, lr=3e-3)


def get_sweep(setting="tiny"):
  return runs.points(LAWS, (0, 1))


def columns(setting, config):
  return {"tag": config.sampler.name}


def report(out):
  study.write_report(out, ["# tiny", *study.saved_settings(SETTINGS, out)])
"""


def test_study_file_trains_by_main_sweep_and_is_collected_from_the_summaries(
    tmp_path, monkeypatch):
  """A study setting trained by `python -m mixjax.main --config=<study>:<setting> --sweep`
  (its points grouped by sampler structure: ERM; the Beta laws; the two-atom laws) is
  read back by `study.collect`: one row per point from its summary.json, the law's
  exact θ-moments, the study's extra columns, the command line's overrides; the ERM
  law's rescaling is the identity (θ̄ = 1). A rerun trains nothing; a workdir whose run
  has not finished is refused, naming the training command."""
  path = tmp_path / "tiny.py"
  path.write_text(_TINY_STUDY)
  workdir, out = str(tmp_path / "runs"), str(tmp_path / "results")
  argv = [f"--config={path}:tiny", "--sweep", f"--workdir={workdir}",
          "--config.log_every_steps=4"]
  run_main(argv, monkeypatch)
  module, setting = study.load(f"{path}:tiny")
  pts = module.get_sweep(setting)
  names = [sweeps.point_name(i, p) for i, p in enumerate(pts)]
  assert sorted(d for d in os.listdir(workdir) if d.startswith("group_")) == [
      "group_000_2", "group_002_4", "group_006_4"]

  json_path = study.collect(f"{path}:tiny", workdir, out)
  rec = records.load(out, "tiny")
  rows = rec["runs"]
  assert json_path == os.path.join(out, "tiny.json")
  assert [r["point"] for r in rows] == names
  assert [r["law"] for r in rows] == [l for l in ("ERM", "Beta(0.2)", "Beta(1)", "optimal",
                                                  "2 atoms") for _ in (0, 1)]
  assert [r["seed"] for r in rows] == [0, 1] * 5
  assert [r["tag"] for r in rows] == [p["sampler.name"] for p in pts]
  for r, p, name in zip(rows, pts, names):
    with open(os.path.join(workdir, name, "summary.json")) as f:
      summary = json.load(f)
    assert r["status"] == "ok" and r["test_accuracy"] == summary["test"]["accuracy"]
    assert r["code"] == summary["code"]["git_revision"] and r["code"] is not None
    assert r["code_dirty"] == summary["code"]["git_dirty"]
    assert r["test_rs_nll"] == summary["test_rescaled"]["nll"]
    assert r["temperature"] == summary["val"]["temperature"] > 0
    m = L.theta_moments(laws.sampler_of(p))
    assert (r["theta_bar"], r["strength"]) == (m.mean, m.strength)
    assert np.isfinite(r["train_objective"])
  assert rows[0]["test_rs_accuracy"] == rows[0]["test_accuracy"]
  assert rows[6]["theta_bar"] == pytest.approx(2 / 3)
  assert rec["config"]["command_line_overrides"] == {"log_every_steps": [8, 4]}
  assert rec["config"]["seeds"] == [0, 1] and len(rec["config"]["laws"]) == 5
  # The base config shows what the points train, not its own (unused) law and seed.
  train = rec["config"]["train"]
  assert train["sampler"] == {"name": study_runs.SWEPT, "params": study_runs.SWEPT}
  assert train["seed"] == study_runs.SWEPT and train["num_epochs"] == 1
  assert [a.get("label") for a in rec["config"]["arms"]] == [
      "ERM", "Beta(0.2)", "Beta(1)", "optimal", "2 atoms"]
  assert rec["config"]["arms"][1]["overrides"] == {"sampler.name": "beta",
                                                   "sampler.params": {"alpha": 0.2}}
  assert rec["provenance"]["packages"]["jax"] == jax.__version__
  with open(json_path) as f:  # no path of this machine: the workdir is tmp_path's
    assert str(tmp_path) not in f.read()
  named = [(n, study.read_config(os.path.join(workdir, n))) for n in names]
  logits = study_runs.predictions(named, workdir, "test_logits_rescaled")
  chex.assert_shape(logits, (10, 359, 10))
  # Rerunning the same command trains nothing: every point has its summary.
  mtime = os.path.getmtime(os.path.join(workdir, names[0], "summary.json"))
  run_main(argv, monkeypatch)
  assert os.path.getmtime(os.path.join(workdir, names[0], "summary.json")) == mtime
  os.remove(os.path.join(workdir, names[3], "summary.json"))
  with pytest.raises(ConfigError, match=re.escape(f"{names[3]} has not finished")):
    study.collect(f"{path}:tiny", workdir, out)
  with pytest.raises(ConfigError, match="unknown setting 'big'; known: tiny"):
    study.collect(f"{path}:big", workdir, out)


def _study_settings():
  """(study file relative to experiments/studies/, setting) of every study: a file
  <study>.py, or <study>/config.py in a study's own folder."""
  out = []
  for name in sorted(os.listdir(STUDIES)):
    file = os.path.join(name, "config.py") if os.path.isdir(os.path.join(STUDIES, name)) \
        else name
    if file.endswith(".py") and os.path.exists(os.path.join(STUDIES, file)):
      module = sweeps.load_config_module(os.path.join(STUDIES, file))
      if hasattr(module, "get_sweep"):
        out += [(file, s) for s in module.SETTINGS]
  return out


@pytest.mark.parametrize("file,setting", _study_settings())
def test_every_study_setting_is_a_valid_sweep(file, setting):
  """Each setting of each study file is what `python -m mixjax.main --sweep` accepts:
  every point's config passes validation (before anything would train), point folders
  are distinct, and the file holds its report step."""
  path = os.path.join(STUDIES, file)
  module = sweeps.load_config_module(path)
  base = module.get_config(setting)
  pts = sweeps.load_sweep(f"{path}:{setting}", module)
  assert pts and callable(module.report)
  for p in pts:
    c = sweeps.sweep_config(base, p)
    # Whether the data is prepared is not this test's question (tests/test_main.py).
    validate.validate_config(c, num_devices=1, check_data=False)
  assert len({sweeps.point_name(i, p) for i, p in enumerate(pts)}) == len(pts)


@pytest.mark.parametrize("file,setting", _study_settings())
def test_every_study_setting_takes_a_data_dir_from_the_command_line(file, setting,
                                                                     monkeypatch):
  """The documented `--config.dataset.data_dir=DIR` parses for every setting (a config
  built by `sweeps.sweep_config` keeps the recipe's placeholder), and the value reaches
  each point's config."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from mixjax import main as main_lib  # pylint: disable=g-import-not-at-top,unused-import
  path = os.path.join(STUDIES, file)
  parse_main_flags([f"--config={path}:{setting}", "--workdir=/unused",
                    "--config.dataset.data_dir=/some/dir"], monkeypatch)
  config = flags.FLAGS.config
  assert config.dataset.data_dir == "/some/dir"
  point = sweeps.load_sweep(f"{path}:{setting}")[0]
  assert sweeps.sweep_config(config, point).dataset.data_dir == "/some/dir"


def test_reliability_trains_the_mixing_laws_config_without_reading_its_results():
  """The reliability study's config is the mixing-law study's config of the setting,
  evaluated at the end only, written out (not read from a saved result)."""
  rel = sweeps.load_config_module(os.path.join(STUDIES, "reliability", "config.py"))
  mix = sweeps.load_config_module(os.path.join(STUDIES, "mixing_law", "config.py"))
  for setting in rel.SETTINGS:
    want = sweeps.sweep_config(mix.get_config(setting), {"eval.every_epochs": 0})
    assert rel.get_config(setting).to_dict() == want.to_dict()
  text = open(os.path.join(STUDIES, "reliability", "config.py")).read()
  assert "records.load" not in text and "import records" not in text


def test_study_config_sets_the_shared_training_explicitly():
  cfg = study_runs.study_config(dataset="digits", model="mlp", num_epochs=8, batch_size=32,
                                lr=1e-3, num_evals=4, method__terms=("jacobian",))
  assert (cfg.optimizer.name, cfg.optimizer.schedule, cfg.optimizer.weight_decay) == (
      "adam", "cosine", 0.0)
  assert cfg.mixing.fold and cfg.method.estimator == "exact" and not cfg.tensorboard
  assert cfg.eval.every_epochs == 2 and tuple(cfg.method.terms) == ("jacobian",)
  with pytest.raises(ValueError, match="no such config key"):
    study_runs.study_config(dataset="digits", model="mlp", num_epochs=1, batch_size=8,
                            lr=1e-3, method__term=("jacobian",))


def test_compare_rows_is_bit_for_bit_but_for_wall_clock_times_and_revisions():
  rows = [{"point": "00_a", "test_nll": 0.25, "test_ts_nll": None, "train_time_s": 3.0,
           "code": "abc", "code_dirty": False},
          {"point": "01_b", "test_nll": float("nan"), "test_ts_nll": 1.0}]
  same = [dict(r) for r in rows]
  same[0]["train_time_s"], same[0]["test_ts_nll"] = 9.0, float("nan")
  same[0]["code"], same[0]["code_dirty"] = "def", True
  assert records.compare_rows(same, rows) == []
  moved = [dict(r) for r in rows]
  moved[1]["test_ts_nll"] = float(np.nextafter(1.0, 2.0))  # one ulp
  assert records.compare_rows(moved, rows) == [
      "01_b: test_ts_nll 1.0 -> 1.0000000000000002"]
  assert records.compare_rows(rows[:1], rows) == ["1 rows against 2"]


def test_studies_entry_refuses_an_unknown_setting_in_one_line():
  res = subprocess.run(
      [sys.executable, "-m", "mixjax.studies",
       "--config=experiments/studies/mixing_law/config.py:mnist1d", "--out=/tmp/unused"],
      cwd=ROOT, capture_output=True, text=True, timeout=120,
      env=dict(os.environ, JAX_PLATFORMS="cpu"))
  lines = [l for l in res.stderr.splitlines() if l.strip() and "libtpu" not in l
           and "xla_bridge" not in l]
  assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
  assert lines == ["Invalid config: --config=experiments/studies/mixing_law/config.py:mnist1d: "
                   "unknown setting 'mnist1d'; known: mnist1d_mlp, mnist1d_cnn, digits_mlp, "
                   "two_moons_rf, two_moons_noisy_rf."], res.stderr


# ----------------------------------------------------------------------------------------
# Analysis and the report step.


def test_slope_and_group_statistics_against_closed_forms():
  # Per-law means exactly linear in x: slope recovered, zero-width t interval.
  rows = [{"law": f"l{i}", "seed": s, "x": float(i), "m": 2.0 * i + 1.0}
          for i in range(4) for s in range(3)]
  fit = analysis.slope_vs(rows, "x", "m", num_boot=50)
  assert fit["slope"] == pytest.approx(2.0)
  assert fit["ci_low"] == pytest.approx(2.0) and fit["ci_high"] == pytest.approx(2.0)
  m, se, n = analysis.mean_se([1.0, 2.0, 3.0, 4.0])
  assert (m, n) == (2.5, 4) and se == pytest.approx(np.std([1, 2, 3, 4], ddof=1) / 2)
  d = analysis.paired_difference(rows, "m", "l3", "l1")
  assert d["diff"] == pytest.approx(4.0)


def _report_cells(text: str, first: str) -> list[str]:
  """The cells of the report.md table row whose first cell is `first`."""
  line = next(l for l in text.splitlines() if l.startswith(f"| {first} |"))
  return [c.strip() for c in line.strip("|").split("|")]


def test_report_step_on_tiny_saved_result(tmp_path):
  """The mixing-law study's report from saved rows (`python -m mixjax.studies` without
  a setting), checked against statistics recomputed here with NumPy and SciPy: each
  law's mean ± se, the best law's paired difference to ERM and its paired-t 95% CI
  (`scipy.stats.ttest_rel`), and the OLS slope of the per-law mean NLL against σ²/θ̄²
  with its t-interval (`scipy.stats.linregress`)."""
  module = sweeps.load_config_module(os.path.join(STUDIES, "mixing_law", "config.py"))
  law_list = [laws.law("erm"), laws.law("beta", alpha=0.2), laws.law("beta", alpha=2.0)] + [
      l for g in laws.EQUAL_MOMENT_GROUPS.values() for l in g]
  rng = np.random.default_rng(0)
  runs, values = [], {}
  for spec in law_list:
    law, m_ = laws.sampler_of(spec), L.theta_moments(laws.sampler_of(spec))
    effect = rng.normal(0, 0.05)
    for seed in range(4):
      row = {"law": law.label, "seed": seed, "theta_bar": m_.mean, "sigma2": m_.var,
             "gamma2": m_.gamma2, "strength": m_.strength,
             "global_strength": m_.global_strength}
      for m in ("test_accuracy", "test_nll", "test_ece", "test_rs_accuracy", "test_rs_nll",
                "test_rs_ece", "test_ts_nll", "test_ts_ece", "test_rs_ts_ece",
                "temperature", "train_objective"):
        row[m] = float(rng.uniform(0.3, 0.9) + effect + 0.02 * seed)
      runs.append(row)
      values.setdefault(law.label, []).append(row)
  config = {"setting": "digits_mlp", "dataset": "digits", "lr": 1e-3, "seeds": [0, 1, 2, 3],
            "laws": [L.describe(laws.sampler_of(l)) for l in law_list],
            "train": study_runs.config_record(module.get_config("digits_mlp")),
            "data_sizes": {"train_x": 10, "val_x": 2, "test_x": 3}}
  records.save(str(tmp_path), "digits_mlp", runs=runs, config=config,
               info={"train_seconds": 1.0})
  module.report(str(tmp_path))
  for f in ("digits_mlp_vs_strength.png", "digits_mlp_equal_moments.png"):
    assert os.path.getsize(tmp_path / f) > 1000, f
  text = (tmp_path / "report.md").read_text()

  acc = {l: np.asarray([r["test_accuracy"] for r in rs]) for l, rs in values.items()}
  for label, a in acc.items():  # the table: mean ± se over seeds, in %
    cells = _report_cells(text, label)
    assert cells[4] == f"{a.mean() * 100:.2f} ± {sp_stats.sem(a) * 100:.2f}", label
  best = max((l for l in acc if l != "ERM"), key=lambda l: acc[l].mean())
  d = acc[best] - acc["ERM"]
  ci = sp_stats.ttest_rel(acc[best], acc["ERM"]).confidence_interval(0.95)
  assert (f"Best law by mean test accuracy: {best} ({acc[best].mean() * 100:.2f} ± "
          f"{sp_stats.sem(acc[best]) * 100:.2f}%); paired difference to ERM "
          f"{d.mean() * 100:+.2f} points, 95% CI [{ci.low * 100:+.2f}, "
          f"{ci.high * 100:+.2f}]") in text
  mix = [l for l in values if l != "ERM"]
  x = np.asarray([values[l][0]["strength"] for l in mix])
  y = np.asarray([np.mean([r["test_nll"] for r in values[l]]) for l in mix])
  fit = sp_stats.linregress(x, y)
  half = sp_stats.t.ppf(0.975, len(mix) - 2) * fit.stderr
  cells = _report_cells(text, "test NLL")  # its first row: the slope against σ²/θ̄²
  assert cells[1] == "σ²/θ̄²" and cells[2:4] == [f"{fit.slope:.3g}",
                        f"[{fit.slope - half:.3g}, {fit.slope + half:.3g}]"], cells
  assert "3 atoms ≡ W(0.5)" in text and "p |" in text


# ----------------------------------------------------------------------------------------
# analysis.py's statistics against statsmodels and SciPy, on data with a known answer.


def _law_seed_rows(slopes=(3.0,), n_laws=8, n_seeds=10, law_sd=0.05, seed_sd=0.3,
                   noise_sd=0.1, missing=(), seed=0):
  """Rows {law, seed, x1.., m}: m = 2 + Σ b_j x_j + law effect + seed effect (shared by
  all laws of a seed: the engine's common random numbers) + noise; `missing` lists
  (law, seed) cells whose metric is None."""
  rng = np.random.default_rng(seed)
  xs = rng.uniform(0, 1, (n_laws, len(slopes)))
  law_eff = rng.normal(0, law_sd, n_laws)
  seed_eff = rng.normal(0, seed_sd, n_seeds)
  rows = []
  for i in range(n_laws):
    for s in range(n_seeds):
      m = 2 + xs[i] @ np.asarray(slopes) + law_eff[i] + seed_eff[s] + rng.normal(0, noise_sd)
      rows.append({"law": f"l{i}", "seed": s, **{f"x{j + 1}": float(xs[i, j])
                                                  for j in range(len(slopes))},
                   "m": None if (i, s) in missing else float(m)})
  return rows


def _per_law_means(rows, x_keys):
  import pandas as pd  # pylint: disable=g-import-not-at-top
  df = pd.DataFrame(rows)
  g = df.groupby("law", sort=False).agg({**{k: "first" for k in x_keys}, "m": "mean"})
  return g[list(x_keys)].to_numpy(np.float64), g["m"].to_numpy(np.float64)


def test_linear_fit_matches_statsmodels_ols():
  import statsmodels.api as sm  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(1)
  x = rng.uniform(-1, 1, 400)
  y = 2 + 3 * x + rng.normal(0, 0.5, 400)
  fit = analysis.linear_fit(x, y)
  ols = sm.OLS(y, sm.add_constant(x)).fit()
  lo, hi = ols.conf_int(alpha=0.05)[1]
  assert fit["slope"] == pytest.approx(ols.params[1], rel=1e-10)
  assert fit["intercept"] == pytest.approx(ols.params[0], rel=1e-10)
  assert (fit["ci_low"], fit["ci_high"]) == pytest.approx((lo, hi), rel=1e-8)
  assert fit["p"] == pytest.approx(ols.pvalues[1], rel=1e-6, abs=1e-300)
  assert fit["r"] ** 2 == pytest.approx(ols.rsquared, rel=1e-10)
  # The known slope: within the interval, whose half-width is t·σ/(√n·sd(x)) ≈ 0.086.
  assert fit["ci_low"] < 3 < fit["ci_high"]
  assert fit["ci_high"] - fit["ci_low"] == pytest.approx(
      2 * sp_stats.t.ppf(0.975, 398) * 0.5 / (math.sqrt(400) * np.std(x)), rel=0.1)


def _boot_cdf_at(dist, value):
  return float(np.mean(np.asarray(dist) <= value))


def test_slope_vs_against_statsmodels_scipy_spearman_and_bootstrap():
  """slope_vs on 8 laws × 10 seeds with shared seed effects and two missing cells: the
  t-interval is statsmodels' OLS interval on the per-law means (pandas), Spearman is
  scipy's on those means, and the cluster-bootstrap percentile interval is SciPy's
  paired (whole-seed) bootstrap's: each of our endpoints sits at the 2.5% / 97.5%
  point of SciPy's bootstrap distribution, to the Monte-Carlo error of both. (The seed
  effects, 3× the noise, are shared by the laws of a seed: a bootstrap that resampled
  each law's seeds independently would be several times wider and fail.)"""
  import statsmodels.api as sm  # pylint: disable=g-import-not-at-top
  rows = _law_seed_rows(missing={(2, 3), (5, 0)})
  num_boot = 4000
  fit = analysis.slope_vs(rows, "x1", "m", num_boot=num_boot, seed=3)
  xm, means = _per_law_means(rows, ["x1"])
  ols = sm.OLS(means, sm.add_constant(xm[:, 0])).fit()
  assert fit["slope"] == pytest.approx(ols.params[1], rel=1e-10)
  assert (fit["ci_low"], fit["ci_high"]) == pytest.approx(tuple(ols.conf_int(0.05)[1]),
                                                          rel=1e-8)
  assert fit["ci_low"] < 3 < fit["ci_high"]
  rho = sp_stats.spearmanr(xm[:, 0], means)
  assert fit["spearman"] == pytest.approx(rho.statistic, rel=1e-12)
  assert fit["spearman_p"] == pytest.approx(rho.pvalue, rel=1e-9)
  assert fit["num_seeds"] == 10

  # SciPy's paired bootstrap over seeds of the same statistic (NaN cells skipped).
  table = np.full((8, 10), np.nan)
  for r in rows:
    if r["m"] is not None:
      table[int(r["law"][1:]), r["seed"]] = r["m"]
  xc = xm[:, 0] - xm[:, 0].mean()

  def slope(*law_rows, axis=-1):
    m = np.stack([np.nanmean(a, axis=axis) for a in law_rows], axis=-1)  # (..., laws)
    return (m - m.mean(-1, keepdims=True)) @ xc / (xc @ xc)

  ref_boot = 40000
  ref = sp_stats.bootstrap(tuple(table), slope, paired=True, vectorized=True,
                           n_resamples=ref_boot, method="percentile",
                           random_state=np.random.default_rng(5))
  dist = ref.bootstrap_distribution
  # Binomial Monte-Carlo error of a 2.5% point: ours (4000) and SciPy's (40000), 4 sd.
  tol = 4 * math.sqrt(0.025 * 0.975 * (1 / num_boot + 1 / ref_boot))
  assert abs(_boot_cdf_at(dist, fit["boot_low"]) - 0.025) < tol
  assert abs(_boot_cdf_at(dist, fit["boot_high"]) - 0.975) < tol


def test_regress_laws_against_statsmodels_and_scipy_bootstrap():
  import statsmodels.api as sm  # pylint: disable=g-import-not-at-top
  rows = _law_seed_rows(slopes=(3.0, -1.5), n_laws=10, n_seeds=8, seed=2)
  num_boot = 4000
  out = analysis.regress_laws(rows, ["x1", "x2"], "m", num_boot=num_boot, seed=1)
  xm, means = _per_law_means(rows, ["x1", "x2"])
  ols = sm.OLS(means, sm.add_constant(xm)).fit()
  ci = ols.conf_int(0.05)
  table = np.asarray([[r["m"] for r in rows if r["law"] == f"l{i}"] for i in range(10)])
  design = sm.add_constant(xm)
  ref_boot = 40000
  tol = 4 * math.sqrt(0.025 * 0.975 * (1 / num_boot + 1 / ref_boot))
  for j, (k, true) in enumerate((("x1", 3.0), ("x2", -1.5)), start=1):
    assert out[k]["coef"] == pytest.approx(ols.params[j], rel=1e-9)
    assert (out[k]["ci_low"], out[k]["ci_high"]) == pytest.approx(tuple(ci[j]), rel=1e-8)
    assert out[k]["dof"] == ols.df_resid == 7
    assert out[k]["ci_low"] < true < out[k]["ci_high"]

    def coef(*law_rows, axis=-1, j=j):
      m = np.stack([np.mean(a, axis=axis) for a in law_rows], axis=-1)
      return (m @ np.linalg.pinv(design).T)[..., j]

    ref = sp_stats.bootstrap(tuple(table), coef, paired=True, vectorized=True,
                             n_resamples=ref_boot, method="percentile",
                             random_state=np.random.default_rng(6))
    assert abs(_boot_cdf_at(ref.bootstrap_distribution, out[k]["boot_low"]) - 0.025) < tol
    assert abs(_boot_cdf_at(ref.bootstrap_distribution, out[k]["boot_high"]) - 0.975) < tol


def test_paired_difference_is_scipy_paired_t():
  rows = _law_seed_rows(n_laws=3, n_seeds=9, seed=4, missing={(0, 2)})
  d = analysis.paired_difference(rows, "m", "l0", "l1")
  a = [r["m"] for r in rows if r["law"] == "l0" and r["seed"] != 2]
  b = [r["m"] for r in rows if r["law"] == "l1" and r["seed"] != 2]
  res = sp_stats.ttest_rel(a, b)
  ci = res.confidence_interval(0.95)
  assert d["n"] == 8 and d["diff"] == pytest.approx(np.mean(np.subtract(a, b)), rel=1e-12)
  assert (d["ci_low"], d["ci_high"]) == pytest.approx((ci.low, ci.high), rel=1e-9)
  assert d["diff"] / d["se"] == pytest.approx(res.statistic, rel=1e-9)
  # p-value and sd against statsmodels: OLS of the differences on a constant.
  import statsmodels.api as sm  # pylint: disable=g-import-not-at-top
  fit = sm.OLS(np.subtract(a, b), np.ones(len(a))).fit()
  assert d["p"] == pytest.approx(float(fit.pvalues[0]), rel=1e-9)
  assert d["sd"] == pytest.approx(float(np.std(np.subtract(a, b), ddof=1)), rel=1e-12)


@pytest.mark.parametrize("m", [1, 2, 5, 11, 30])
def test_holm_is_statsmodels_multipletests(m):
  """Holm-adjusted p-values equal statsmodels' `multipletests(method="holm")` on random
  families (with ties and p-values near 1); NaNs are left out of the family."""
  from statsmodels.stats.multitest import multipletests  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(m)
  for _ in range(6):  # multipletests takes ~0.15 s a call
    p = rng.uniform(size=m) ** rng.uniform(0.2, 3)
    if m > 2:
      p[1] = p[0]  # a tie
    want = multipletests(p, method="holm")[1]
    np.testing.assert_allclose(analysis.holm(p), want, rtol=1e-12, atol=0)
    with_nan = np.insert(p, 0, np.nan)
    got = analysis.holm(with_nan)
    assert np.isnan(got[0])
    np.testing.assert_allclose(got[1:], want, rtol=1e-12)
  reject = analysis.holm([0.01, 0.02, 0.04]) < 0.05  # 0.03, 0.04, 0.04: all rejected
  assert reject.all() and not (analysis.holm([0.01, 0.03, 0.04]) < 0.05)[1:].any()


def test_seed_slopes_are_statsmodels_ols_per_seed():
  """Each seed's slope is statsmodels' OLS slope over its laws; the mean's 95% interval
  and p-value are those of OLS on a constant over the seeds' slopes; a seed missing a
  law is dropped."""
  import statsmodels.api as sm  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(3)
  xs = {"a": 0.0, "b": 0.02, "c": 0.05, "d": 0.11}
  rows = [{"law": l, "seed": s, "strength": x,
           "m": 0.3 + 0.4 * x + 0.01 * s + 0.02 * rng.normal()}
          for s in range(7) for l, x in xs.items()]
  rows[5]["m"] = None  # seed 1, law b
  rows.append({"law": "other", "seed": 0, "strength": 0.5, "m": 9.0})
  got = analysis.seed_slopes(rows, "m", list(xs))
  want = {}
  for s in range(7):
    if s == 1:
      continue
    y = [r["m"] for r in rows if r["seed"] == s and r["law"] in xs]
    want[s] = float(sm.OLS(y, sm.add_constant(list(xs.values()))).fit().params[1])
  assert list(got["slopes"]) == list(want) and got["n"] == 6
  np.testing.assert_allclose(list(got["slopes"].values()), list(want.values()), rtol=1e-10)
  fit = sm.OLS(list(want.values()), np.ones(6)).fit()
  assert got["slope"] == pytest.approx(float(fit.params[0]), rel=1e-12)
  assert (got["ci_low"], got["ci_high"]) == pytest.approx(tuple(fit.conf_int(0.05)[0]),
                                                          rel=1e-9)
  assert got["p"] == pytest.approx(float(fit.pvalues[0]), rel=1e-9)
  assert got["se"] == pytest.approx(float(fit.bse[0]), rel=1e-9)


def test_seeds_needed_reaches_the_power_by_the_noncentral_t():
  """At the returned n, a two-sided paired t-test at level α has power ≥ 0.8 against
  the difference, and at n − 1 less, at α = 0.05 and at a Bonferroni level 0.05/11.
  The reference power is not statsmodels': the noncentral t written as an integral over
  the χ² of the variance, P(|Z + nc| > c √(V/df)) = E_V[Φ(nc − c√(V/df)) +
  Φ(−nc − c√(V/df))], V ~ χ²_df (scipy.integrate.quad)."""
  from scipy import integrate  # pylint: disable=g-import-not-at-top

  def power(n, effect, alpha):
    df = n - 1
    crit = sp_stats.t.ppf(1 - alpha / 2, df)
    nc = effect * math.sqrt(n)
    f = lambda v: sp_stats.chi2.pdf(v, df) * (
        sp_stats.norm.cdf(nc - crit * math.sqrt(v / df))
        + sp_stats.norm.cdf(-nc - crit * math.sqrt(v / df)))
    half = 40 * math.sqrt(2 * df)  # χ²_df: mean df, sd √(2 df)
    return integrate.quad(f, max(0.0, df - half), df + half, limit=200, epsabs=1e-12)[0]

  for alpha in (0.05, 0.05 / 11):
    for diff, sd in ((1.0, 1.0), (0.3, 1.0), (-0.02, 0.05), (2.0, 0.5), (10.0, 1.0),
                     (0.5, 0.1), (0.01, 1.0)):
      n = int(analysis.seeds_needed(diff, sd, alpha=alpha))
      assert power(n, abs(diff) / sd, alpha) >= 0.8
      if n > 2:
        assert power(n - 1, abs(diff) / sd, alpha) < 0.8
  assert analysis.seeds_needed(10.0, 1.0) == 3  # 2 seeds: power 0.73
  assert analysis.seeds_needed(50.0, 1.0) == 2  # never fewer than a t-test's two
  assert analysis.seeds_needed(0.0, 1.0) == math.inf
  assert math.isnan(analysis.seeds_needed(1.0, math.nan))


def _anova_rm(rows, laws):
  import pandas as pd  # pylint: disable=g-import-not-at-top
  from statsmodels.stats.anova import AnovaRM  # pylint: disable=g-import-not-at-top
  df = pd.DataFrame([r for r in rows if r["law"] in laws])
  bad = df[df["m"].isna()]["seed"].unique()
  df = df[~df["seed"].isin(bad)]
  table = AnovaRM(df, depvar="m", subject="seed", within=["law"]).fit().anova_table
  return float(table["F Value"].iloc[0]), float(table["Pr > F"].iloc[0])


def test_within_group_test_is_statsmodels_anova_rm():
  """F and p equal statsmodels' repeated-measures ANOVA (to 1e-8; seeds with a missing
  law dropped, as AnovaRM needs balanced data); a large law effect gives a tiny p."""
  laws = ["l0", "l1", "l2", "l3"]
  for seed, missing in ((0, ()), (1, {(1, 4)})):
    rows = _law_seed_rows(slopes=(0.0,), n_laws=4, n_seeds=7, law_sd=0.0, seed=seed,
                          missing=missing)
    res = analysis.within_group_test(rows, "m", laws)
    f, p = _anova_rm(rows, laws)
    assert res["F"] == pytest.approx(f, rel=1e-8)
    assert res["p"] == pytest.approx(p, rel=1e-8)
    assert (res["k"], res["seeds"]) == (4, 7 - len(missing))
  rows = _law_seed_rows(slopes=(0.0,), n_laws=4, n_seeds=7, law_sd=1.0, seed=3)
  res = analysis.within_group_test(rows, "m", laws)
  f, p = _anova_rm(rows, laws)
  assert res["F"] == pytest.approx(f, rel=1e-8) and res["p"] == pytest.approx(p, rel=1e-8)
  assert res["p"] < 1e-8


def test_within_group_test_p_values_are_uniform_under_no_effect():
  """No law effect, strong seed effects: p ~ U(0, 1). 400 replications: KS distance
  below its 1e-3 critical value, and the 5% rejection rate within 4 binomial sd."""
  reps = 400
  ps = np.asarray([
      analysis.within_group_test(
          _law_seed_rows(slopes=(0.0,), n_laws=3, n_seeds=6, law_sd=0.0, seed=100 + i),
          "m", ["l0", "l1", "l2"])["p"] for i in range(reps)])
  ks = sp_stats.kstest(ps, "uniform")
  assert ks.statistic < math.sqrt(-math.log(0.5e-3) / 2) / math.sqrt(reps), ks
  assert abs(np.mean(ps < 0.05) - 0.05) < 4 * math.sqrt(0.05 * 0.95 / reps)


def test_slope_bootstrap_ignores_a_law_without_finite_values():
  """A law whose every seed failed (NaN) drops out of the bootstrap, as of the OLS fit."""
  rows = [{"law": f"L{i}", "seed": s, "x": float(i), "m": 2.0 * i + 0.1 * s}
          for i in range(5) for s in range(3)]
  rows += [{"law": "dead", "seed": s, "x": 9.0, "m": float("nan")} for s in range(3)]
  fit = analysis.slope_vs(rows, "x", "m", num_boot=200)
  assert np.isfinite(fit["boot_low"]) and np.isfinite(fit["boot_high"])
  assert fit["boot_low"] <= 2.0 <= fit["boot_high"]


def test_regress_laws_without_enough_finite_laws_gives_nan_not_an_error():
  rows = [{"law": f"l{i}", "seed": s, "x1": float(i), "x2": float(i * i), "m": None}
          for i in range(4) for s in range(3)]
  out = analysis.regress_laws(rows, ["x1", "x2"], "m", num_boot=20)
  assert all(math.isnan(out[k]["coef"]) and math.isnan(out[k]["boot_low"])
             for k in ("x1", "x2"))


# ----------------------------------------------------------------------------------------
# The regimes study (experiments/studies/regimes/): its laws and its statistics.


def _regimes():
  path = os.path.join(STUDIES, "regimes", "config.py")
  return sweeps.load_config_module(path), study.sibling(path, "report")


def _folded_beta_moments(a: float) -> tuple[float, float]:
  """E θ and Var θ of θ = max(λ, 1 − λ), λ ~ Beta(a, a), by scipy.stats' expectation."""
  m1 = sp_stats.beta(a, a).expect(lambda x: np.maximum(x, 1 - x))
  m2 = sp_stats.beta(a, a).expect(lambda x: np.maximum(x, 1 - x) ** 2)
  return m1, m2 - m1 ** 2


def test_regimes_laws_have_the_stated_theta_moments():
  """The study's arms, as their points select them, have the θ̄ and σ²/θ̄² the issue
  states: θ̄ = 3/4 with σ²/θ̄² = 0, 1/27, 1/18, 1/9 (closed forms: a point mass; U(½, 1);
  ½ + X/2 with X ~ Beta(½, ½), Var X = 1/8; atoms {½, 1}, Var = 1/16); the optimal law
  (2/3, 1/8); Beta(0.2) and Beta(2) folded (scipy.stats expectations); label smoothing
  matched to Beta(1) (ε = 1 − θ̄ = 1/4). The analysis keys on these laws' labels."""
  module, regimes = _regimes()
  arms = {("LS" if p.get("method.name") == "label_smoothing_matched" else laws.label(p)): p
          for p in module.LAWS}
  expected = {"θ=0.75": (0.75, 0.0), "Beta(1)": (0.75, 1 / 48), "W(0.5)": (0.75, 1 / 32),
              "atoms{0.5,1}": (0.75, 1 / 16), "optimal": (2 / 3, 1 / 18),
              "Beta(0.2)": _folded_beta_moments(0.2), "Beta(2)": _folded_beta_moments(2.0)}
  for label, (mean, var) in expected.items():
    m = L.theta_moments(laws.sampler_of(arms[label]))
    assert m.mean == pytest.approx(mean, rel=1e-9, abs=1e-12), label
    assert m.var == pytest.approx(var, rel=1e-7, abs=1e-12), label
    assert m.strength == pytest.approx(var / mean ** 2, rel=1e-7, abs=1e-12), label
  fixed = [L.theta_moments(laws.sampler_of(arms[l])).strength for l in regimes.FIXED_THETA]
  np.testing.assert_allclose(fixed, [0, 1 / 27, 1 / 18, 1 / 9], atol=1e-12)
  assert L.theta_moments(laws.sampler_of(arms["optimal"])).strength == pytest.approx(1 / 8)
  assert 1 - L.theta_moments(laws.sampler_of(arms["LS"])).mean == pytest.approx(0.25)
  assert set(regimes.FIXED_THETA) | set(regimes.RELIABILITY) - {regimes.SMOOTHING} <= set(arms)
  assert {"ERM", "CutMix(1)"} <= set(arms)
  cfg = sweeps.sweep_config(module.get_config("overfit"), arms["LS"])
  assert regimes.columns(cfg)["law"] == regimes.SMOOTHING


def test_regimes_seed_slopes_and_contrasts_against_scipy():
  """Per-seed slopes against scipy.stats.linregress within each seed and a one-sample
  t-interval over them; a planted effect is reported as separated, none as not."""
  _, regimes = _regimes()
  rng = np.random.default_rng(0)
  xs = dict(zip(regimes.FIXED_THETA, (0.0, 1 / 27, 1 / 18, 1 / 9)))
  rows = [{"law": l, "seed": s, "strength": x,
           "test_nll": 0.5 - 0.9 * x + 0.01 * rng.normal() + 0.05 * s,
           "test_accuracy": 0.8 + 0.002 * rng.normal()}
          for s in range(6) for l, x in xs.items()]
  rows += [{"law": "ERM", "seed": s, "strength": 0.0, "test_nll": 0.6 + 0.05 * s,
            "test_accuracy": 0.8 + 0.002 * rng.normal()} for s in range(6)]
  slopes = [sp_stats.linregress(list(xs.values()),
                                [r["test_nll"] for r in rows if r["seed"] == s
                                 and r["law"] in xs]).slope for s in range(6)]
  ci = sp_stats.ttest_1samp(slopes, 0.0).confidence_interval(0.95)
  got = regimes.seed_slopes(rows, "test_nll")
  assert got["slope"] == pytest.approx(np.mean(slopes), rel=1e-10)
  assert (got["ci_low"], got["ci_high"]) == pytest.approx((ci.low, ci.high), rel=1e-10)
  assert got["ci_high"] < 0
  d = regimes.contrast(rows, "test_nll", "Beta(1)", "ERM")
  assert d["separated"] and regimes._better(d, "test_nll") == "better"
  assert d["diff"] == pytest.approx(-0.1 - 0.9 / 27, abs=0.02)
  d = regimes.contrast(rows, "test_accuracy", "Beta(1)", "ERM")
  assert not d["separated"] and regimes._better(d, "test_accuracy") == "not separated"


def test_regimes_verdict_is_recomputed_from_the_saved_rows():
  """The corrected verdict's numbers on the committed records, recomputed here from the
  rows with scipy and statsmodels: the per-seed slopes by `scipy.stats.linregress`
  within each seed (with and without the constant arm; t-interval over seeds), and
  Holm over the 12 slope tests by statsmodels' `multipletests`."""
  from statsmodels.stats.multitest import multipletests  # pylint: disable=g-import-not-at-top
  _, regimes = _regimes()
  out = os.path.join(ROOT, "results", "regimes")
  recs = {s: records.load(out, s) for s in ("overfit", "noisy")}

  def slope(rows, metric, labels):
    by = {(r["law"], r["seed"]): r for r in rows}
    xs = [next(r["strength"] for r in rows if r["law"] == l) for l in labels]
    b = [sp_stats.linregress(xs, [by[(l, s)][metric] for l in labels]).slope
         for s in sorted({r["seed"] for r in rows})]
    res = sp_stats.ttest_1samp(b, 0.0)
    ci = res.confidence_interval(0.95)
    return np.mean(b) / 9, ci.low / 9, ci.high / 9, res.pvalue

  rows = {k: regimes.rows_of(r) for k, r in recs.items()}
  ps = [slope(rows[k], m, regimes.FIXED_THETA)[3] for k in recs
        for m in regimes.SLOPE_METRICS]
  want = multipletests(ps, method="holm")[1]
  got = regimes.slope_family(recs)
  np.testing.assert_allclose([got[k][m] for k in recs for m in regimes.SLOPE_METRICS],
                             want, rtol=1e-9)
  text = regimes.verdict_section(recs, {}, got, (0, 0))
  for metric, labels, scale, digits, setting in (
      ("test_accuracy", regimes.FIXED_THETA[1:], 100, 2, "overfit"),
      ("shift_accuracy", regimes.FIXED_THETA[:3], 100, 1, "overfit"),
      ("test_ts_nll", regimes.FIXED_THETA, 1, 3, "noisy"),
      ("test_ts_ece", regimes.FIXED_THETA, 1, 3, "noisy")):
    m, lo, hi, _ = (v * scale for v in slope(rows[setting], metric, labels))
    assert f"{m:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]" in text, metric
  assert f"Holm over the 12 slope tests: p = {want[0]:.2g}" in text


def test_row_of_a_mask_law_run_takes_its_moments_on_the_data_image_size(tmp_path,
                                                                       monkeypatch):
  """A mask law's θ-moments depend on the image size: a run's row computes them on the
  data's example shape (here a stand-in dataset of 6×5×1 images), not without one."""
  import types  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  from mixjax.train import setup  # pylint: disable=g-import-not-at-top
  config = study_runs.study_config(dataset="fashion_mnist", model="cnn", num_epochs=1,
                                   batch_size=8, lr=1e-3)
  config.sampler.name = "cutmix"
  config.sampler.params = ml_collections.ConfigDict({"alpha": 1.0})
  run = tmp_path / "r"
  run.mkdir()
  (run / "summary.json").write_text(json.dumps({"test": {"accuracy": 0.5}, "step": 4,
                                                "epochs": 1}))
  (run / "metrics.jsonl").write_text("")
  monkeypatch.setattr(setup, "load_data",
                      lambda c: types.SimpleNamespace(input_shape=(6, 5, 1)))
  row = study_runs.row("r", config, str(tmp_path))
  small, large = (L.law_moments(L.cutmix(1.0), s) for s in ((6, 5, 1), (28, 28, 1)))
  assert (row["law"], row["theta_bar"], row["strength"]) == (
      "CutMix(1)", small.mean, small.strength)
  assert small.mean != large.mean and row["test_accuracy"] == 0.5
