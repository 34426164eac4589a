"""The support study (experiments/studies/support/, issue 26): its arms' exact θ-moments
against closed forms, and its sweep."""
from __future__ import annotations

import json
import math
import os

import jax
import numpy as np
import pytest
from scipy import integrate
from scipy import stats as sp_stats

from mixjax import samplers
from mixjax.studies import laws
from mixjax.studies import records
from mixjax.studies import study
from mixjax.train import sweeps

STUDY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                     "experiments", "studies", "support", "config.py")


@pytest.fixture(scope="module")
def support():
  return sweeps.load_config_module(STUDY)


def _w_shaped_moments(a: float) -> tuple[float, float]:
  """θ = ½ + X/2, X ~ Beta(a, a): E θ and Var θ by numerical integration of the Beta
  density (scipy), independent of the closed form Var X = 1/(4(2a + 1))."""
  pdf = sp_stats.beta(a, a).pdf
  m1 = integrate.quad(lambda x: (0.5 + x / 2) * pdf(x), 0, 1, limit=200)[0]
  m2 = integrate.quad(lambda x: (0.5 + x / 2) ** 2 * pdf(x), 0, 1, limit=200)[0]
  return m1, m2 - m1 ** 2


def test_arms_have_the_issues_moments(support):
  """θ̄ = 3/4 for every arm but ERM; σ²/θ̄² = 0 (constant), 16δ²/9 for the two atoms
  3/4 ± δ (Var = δ²), 1/18 for three atoms {½, ¾, 1} with weights ¼, ½, ¼ (Var =
  2 · ¼ · (¼)² = 1/32) and for W(0.5) (by integration); the issue's table to its digits."""
  m = {laws.label(a): samplers.theta_moments(laws.sampler_of(a)) for a in support.ARMS}
  assert list(m) == ["ERM", "θ=0.75", "atoms{0.65,0.85}", "atoms{0.6,0.9}",
                     "atoms{0.55,0.95}", "atoms{0.5,1}", "atoms{0.5,0.75,1}", "W(0.5)"]
  assert (m["ERM"].mean, m["ERM"].var) == (1.0, 0.0)
  for label, mom in m.items():
    if label != "ERM":
      assert mom.mean == pytest.approx(0.75, abs=1e-15), label
  assert m["θ=0.75"].strength == 0.0
  for d, arm in support.FAMILY.items():
    mom = samplers.theta_moments(laws.sampler_of(arm))
    assert mom.var == pytest.approx(d * d, rel=1e-12, abs=1e-15), d
    assert mom.strength == pytest.approx(16 * d * d / 9, rel=1e-12, abs=1e-15), d
  three = m["atoms{0.5,0.75,1}"]
  assert three.var == pytest.approx(1 / 32, rel=1e-14)
  assert three.strength == pytest.approx(1 / 18, rel=1e-14)
  mean, var = _w_shaped_moments(0.5)
  assert m["W(0.5)"].mean == pytest.approx(mean, rel=1e-9)
  assert m["W(0.5)"].var == pytest.approx(var, rel=1e-7)
  assert m["W(0.5)"].strength == pytest.approx(1 / 18, rel=1e-12)
  table = [0.018, 0.040, 0.071, 0.111]  # the issue's column, 3 decimals
  assert [round(m[laws.label(support.FAMILY[d])].strength, 3) for d in support.DELTAS
          ] == table


def test_three_atoms_and_w_shaped_differ_only_in_support(support):
  """Equal θ̄, σ² and γ²; the three-atom law's θ-law is atoms ½, ¾, 1 with weights ¼, ½,
  ¼, and its folded draws hit them with those frequencies (within 5 binomial sd of
  100,000 draws); W(0.5)'s draws almost never fall on ½ or 1."""
  a = samplers.theta_moments(laws.sampler_of(support.THREE_ATOMS))
  b = samplers.theta_moments(laws.sampler_of(support.W05))
  for k in ("mean", "var", "gamma2", "strength"):
    assert getattr(a, k) == pytest.approx(getattr(b, k), rel=1e-12), k
  law = laws.sampler_of(support.THREE_ATOMS).theta_law()
  assert sorted(zip((c.theta for c in law.components), law.weights)) == [
      (0.5, 0.25), (0.75, 0.5), (1.0, 0.25)]
  n = 100_000
  lam = np.asarray(laws.sampler_of(support.THREE_ATOMS)(jax.random.key(0), (n,)))
  theta = np.maximum(lam, 1 - lam)
  for value, p in ((0.5, 0.25), (0.75, 0.5), (1.0, 0.25)):
    assert abs(np.mean(theta == value) - p) < 5 * math.sqrt(p * (1 - p) / n), value
  assert np.mean(np.isin(theta, (0.5, 0.75, 1.0))) == 1.0
  lam = np.asarray(laws.sampler_of(support.W05)(jax.random.key(0), (n,)))
  # Continuous: only float32 rounding at the ends of the arcsine-like density lands on
  # ½ or 1 (P(X < 2⁻²⁴ or X > 1 − 2⁻²⁴) ≈ (4/π) 2⁻¹² ≈ 3·10⁻⁴; the three atoms: ½).
  assert np.mean(np.isin(np.maximum(lam, 1 - lam), (0.5, 1.0))) < 1e-3


def test_sweep_is_the_arms_times_seeds_5_to_14(support):
  """80 points, law-major, seeds 5–14 under every arm (paired); the base config is the
  regimes study's overfit setting: 3,000 images, 40 epochs, no augmentation, no weight
  decay, folded λ, the five corruptions."""
  pts = support.get_sweep("overfit")
  assert len(pts) == 80
  assert [p["seed"] for p in pts] == list(range(5, 15)) * 8
  assert [laws.label(p) for p in pts[::10]] == [laws.label(a) for a in support.ARMS]
  c = support.get_config("overfit")
  assert (c.dataset.num_train, c.num_epochs, c.augment.enabled,
          c.optimizer.weight_decay, c.mixing.fold) == (3000, 40, False, 0.0, True)
  assert [s.split("/")[1] for s in c.eval.shift] == [
      "shot_noise", "glass_blur", "rotate", "fog", "canny_edges"]
  with pytest.raises(ValueError, match="known: overfit"):
    support.get_config("noisy")


def _synthetic_record(support, rng):
  """Rows of the 8 arms × seeds 5–14 as collected, with planted effects: accuracy
  rises with σ²/θ̄² over the two-atom family (+2 points per 1/9, seed noise 0.1 point),
  three atoms beat W(0.5) on fog by 5 points; nothing else."""
  report = study.sibling(STUDY, "report")
  rows, extra = [], {}
  for i, arm in enumerate(support.ARMS):
    m = samplers.theta_moments(laws.sampler_of(arm))
    label = laws.label(arm)
    for seed in support.SEEDS:
      name = f"{i * 10 + seed - 5:02d}_{label}_{seed}"
      base = 0.01 * (seed - 10)  # a seed effect shared by all arms (pairing)
      row = {"point": name, "law": label, "seed": seed, "theta_bar": m.mean,
             "strength": m.strength, "train_time_s": 60.0, "code": "abc",
             "code_dirty": False, "train_objective": 0.5, "temperature": 1.2,
             "test_accuracy": 0.86 + base + (0.18 * m.strength if label != "ERM" else 0)
                              + 0.001 * rng.normal()}
      for k in ("test_nll", "test_ts_nll", "test_ece", "test_ts_ece", "test_rs_accuracy",
                "test_rs_nll", "test_rs_ece"):
        row[k] = 0.4 + base + 0.01 * rng.normal()
      rows.append(row)
      extra[name] = {f"shift_{c}_accuracy": 0.5 + base + 0.01 * rng.normal()
                     + (0.05 if c == "fog" and label == "atoms{0.5,0.75,1}" else 0)
                     for c in report.CORRUPTIONS}
      extra[name].update(shift_accuracy=np.mean(list(extra[name].values())),
                         shift_nll=1.0, shift_ece=0.1, shift_rs_accuracy=0.5)
  config = {"train": {"dataset": {"num_train": 3000}, "num_epochs": 40, "batch_size": 128},
            "data_sizes": {"val_x": 6000, "test_x": 10000}, "seeds": list(support.SEEDS),
            "lr": 0.025}
  return rows, extra, config


def test_report_computes_the_preregistered_families(support, tmp_path):
  """The report's three families on synthetic rows: each family's Holm p-values are
  statsmodels' `multipletests(method="holm")` of its 11 nominal p-values; the planted
  effects (the accuracy slope; three atoms − W(0.5) on fog) are separated and the
  null contrasts are not; report.md and both figures are written and name the
  pre-registration commit."""
  from statsmodels.stats.multitest import multipletests  # pylint: disable=g-import-not-at-top
  report = study.sibling(STUDY, "report")
  rows, extra, config = _synthetic_record(support, np.random.default_rng(0))
  records.save(str(tmp_path), "overfit", runs=rows, config=config,
               info={"train_seconds": 4800.0}, extra={"metrics": extra})
  fam = report.families(report.rows_of(records.load(str(tmp_path), "overfit")))
  assert set(fam) == {"F1", "F2", "F3"}
  for tests in fam.values():
    assert [t["metric"] for t in tests] == list(report.METRICS) and len(tests) == 11
    np.testing.assert_allclose([t["p_holm"] for t in tests],
                               multipletests([t["p"] for t in tests], method="holm")[1],
                               rtol=1e-12)
  separated = {k: [t["metric"] for t in v if t["separated"]] for k, v in fam.items()}
  assert "test_accuracy" in separated["F1"] and "test_nll" not in separated["F1"]
  assert separated["F2"] == ["shift_accuracy", "shift_fog_accuracy"]  # the mean: +1 point
  assert "test_accuracy" in separated["F3"]  # 0.18 · (1/9 − 0.0711) = 0.72 points
  slope = fam["F1"][0]
  assert slope["diff"] == pytest.approx(0.18, abs=0.01) and slope["n"] == 10
  (tmp_path / "reproduction.json").write_text(json.dumps({"how": "Retrained.", "checks": [
      {"point": "60_x", "command": "python -m mixjax.main ...", "revision": "abc",
       "study_revision": "def", "differences": [], "summary_keys": 24,
       "metrics_records": 93, "ignored": ["train_time_s"]}]}))
  report.write(str(tmp_path))
  md = (tmp_path / "report.md").read_text()
  assert "#### Reproduction" in md and "point `60_x`" in md and "bit-identical" in md
  assert report.PREREGISTRATION in md and "Holm" in md and "exploratory" in md.lower()
  assert (tmp_path / "overfit_seeds.png").stat().st_size > 10_000
  assert (tmp_path / "overfit_support.png").stat().st_size > 10_000


def _run_folder(path, summary, metrics):
  path.mkdir(parents=True)
  (path / "summary.json").write_text(json.dumps(summary))
  (path / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
  return path


def test_reproduce_script_compares_bit_for_bit_but_for_wall_clock(tmp_path):
  """experiments/studies/support/reproduce.py, run as a user runs it: two run folders
  equal but for their times, revisions and checkpoint places are identical; a metric
  one ulp apart is a difference (exit 1), and reproduction.json keeps one check per
  point."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  script = os.path.join(os.path.dirname(STUDY), "reproduce.py")
  acc = 0.8687
  base = {"test": {"accuracy": acc, "nll": 0.41}, "seed": 10, "train_time_s": 77.0,
          "code": {"git_revision": "aaa", "git_dirty": False},
          "checkpoint": {"workdir": "."}}
  metrics = [{"step": 10, "train/loss": 1.38, "steps_per_sec": 8.0}]
  study_run = _run_folder(tmp_path / "runs" / "55_x", base, metrics)
  same = _run_folder(tmp_path / "same", base | {
      "train_time_s": 91.0, "code": {"git_revision": "bbb", "git_dirty": False},
      "checkpoint": {"workdir": "elsewhere"}}, [metrics[0] | {"steps_per_sec": 3.0}])
  off = _run_folder(tmp_path / "off", base | {"test": {
      "accuracy": float(np.nextafter(acc, 1.0)), "nll": 0.41}}, metrics)
  out = tmp_path / "results"
  out.mkdir()

  def run(rerun):
    return subprocess.run([sys.executable, script, f"--study_run={study_run}",
                           f"--rerun={rerun}", "--command=python -m mixjax.main ...",
                           f"--out={out}"], capture_output=True, text=True, check=False)

  proc = run(same)
  assert proc.returncode == 0 and proc.stdout.strip() == "identical", proc.stderr
  rep = json.loads((out / "reproduction.json").read_text())
  (check,) = rep["checks"]
  assert check["point"] == "55_x" and check["differences"] == []
  assert check["revision"] == "bbb" and check["study_revision"] == "aaa"
  proc = run(off)
  assert proc.returncode == 1 and "test.accuracy" in proc.stdout, proc.stdout
  (check,) = json.loads((out / "reproduction.json").read_text())["checks"]
  assert check["differences"] == [f"test.accuracy: {acc!r} vs {float(np.nextafter(acc, 1.0))!r}"]
