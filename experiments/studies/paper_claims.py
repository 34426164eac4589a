r"""The paper's claims (Carratino et al., JMLR 2022), on small data.

(a) rescaling:  test-time rescaling (docs/THEORY.md §5) on/off per law: accuracy, NLL, ECE and
    the paired difference rescaled − plain, on MNIST-1D (MLP).
(b) approx:     the approximate mixup risk (Theorem 3) as a training objective, with all
    terms, each term dropped in turn, and without the hessian term as the paper does,
    against sampled mixup, ERM on the transformed data (Theorem 1) and ERM, on MNIST-1D
    with a tanh MLP (smooth, so the hessian term is not identically 0; d = 40, so the
    exact estimator is affordable). The label term is identically 0 for cross-entropy.
(c) two_moons:  decision boundaries of ERM, mixup and approximate mixup on the paper's
    two moons (n = 300, noise 0.01, 50/50 split), random Fourier features model.

  python -m experiments.studies.paper_claims --out results/paper_claims
  python -m experiments.studies.paper_claims --out results/paper_claims --mode=report
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np

from experiments.studies import common
from experiments.studies import mixing_law
from mixjax.studies import analysis
from mixjax import samplers as L
from mixjax.studies import plots
from mixjax.studies import records
from mixjax.studies import runs as study_runs

PARTS = ("rescaling", "approx", "two_moons")
law = study_runs.law

RESCALING_LAWS = (law("erm"), law("beta", alpha=0.2), law("beta", alpha=1.0),
                  law("beta", alpha=2.0), law("beta", alpha=10.0), law("w_shaped", a=0.5),
                  law("regmixup", alpha=10.0, eta=1.0), law("optimal"))
RESCALING_CONFIG = dict(dataset="mnist1d", model="mlp",
                        model_kwargs={"hidden_sizes": (256, 256)}, num_epochs=100,
                        batch_size=128, lr=3e-3, num_evals=2)

# (name, method, approx terms). The label term is 0 for cross-entropy; it is kept in the
# term lists so that "all terms" is literally all of them.
APPROX_VARIANTS = (
    ("ERM", "erm", ()),
    ("ERM on transformed data", "erm_transformed", ()),
    ("mixup (sampled)", "mixup", ()),
    ("approx: all terms", "approx", ("jacobian", "cross", "hessian", "label")),
    ("approx: no hessian (paper)", "approx", ("jacobian", "cross", "label")),
    ("approx: no jacobian", "approx", ("cross", "hessian", "label")),
    ("approx: no cross", "approx", ("jacobian", "hessian", "label")),
)
APPROX_LAWS = (law("beta", alpha=1.0), law("optimal"))
APPROX_CONFIG = dict(dataset="mnist1d", model="mlp",
                     model_kwargs={"hidden_sizes": (128, 128), "activation": "tanh"},
                     num_epochs=60, batch_size=128, lr=3e-3, num_evals=3)

MOONS_VARIANTS = (("ERM", "erm", ()), ("mixup", "mixup", ()),
                  ("approx mixup (no hessian)", "approx", ("jacobian", "cross", "label")),
                  ("approx mixup (all terms)", "approx",
                   ("jacobian", "cross", "hessian", "label")))
MOONS_CONFIG = dict(dataset="two_moons", dataset_kwargs={"feature_map": "none"},
                    val_fraction=0.0, model="random_features",
                    model_kwargs={"num_features": 256, "bandwidth": 0.5}, num_epochs=300,
                    batch_size=45, lr=1e-2, num_evals=2)
GRID = 120


def _config(settings: dict, quick: bool):
  cfg = study_runs.study_config(**settings)
  return mixing_law.config_quick(cfg) if quick else cfg


def _run_rescaling(args):
  cfg = _config(RESCALING_CONFIG, args.quick)
  laws, seeds = list(RESCALING_LAWS), list(range(args.seeds))
  if args.quick:
    laws, seeds = laws[:3], seeds[:2]
  runs_dir = os.path.join(args.out, "runs", "rescaling")
  t0 = time.time()
  named = study_runs.train(cfg, study_runs.points(laws, seeds), runs_dir)
  records.save(args.out, "rescaling", config={
      "dataset": "mnist1d", "train": study_runs.config_record(cfg), "lr": cfg.optimizer.lr,
      "seeds": seeds, "laws": [L.describe(study_runs.sampler_of(l)) for l in laws],
      "quick": bool(args.quick)}, runs=study_runs.rows(named, runs_dir),
               info={"total_seconds": time.time() - t0})


def variant_points(variants, laws, seeds) -> tuple[list[dict], list[str]]:
  """The points of every (variant, law, seed) (ERM: its own law only) and their variant
  labels."""
  pts, tags = [], []
  for label, method, terms in variants:
    vlaws = [law("erm")] if method == "erm" else list(laws)
    new = study_runs.points(vlaws, seeds, method__name=method, method__terms=tuple(terms))
    pts += new
    tags += [label] * len(new)
  return pts, tags


def _run_variants(args, name, variants, laws, settings, grid_fn=None):
  cfg = _config(settings, args.quick)
  seeds = list(range(2 if args.quick else args.seeds))
  pts, tags = variant_points(variants, laws, seeds)
  runs_dir = os.path.join(args.out, "runs", name)
  print(f"[paper_claims/{name}] {len(variants)} variants, {len(pts)} runs", flush=True)
  t0 = time.time()
  named = study_runs.train(cfg, pts, runs_dir)
  rows = [study_runs.row(n, c, runs_dir, variant=t) for (n, c), t in zip(named, tags)]
  config = {"dataset": cfg.dataset.name, "dataset_kwargs": dict(cfg.dataset.kwargs),
            "train": study_runs.config_record(cfg), "lr": cfg.optimizer.lr, "seeds": seeds,
            "variants": [list(v[:2]) + [list(v[2])] for v in variants],
            "laws": [L.describe(study_runs.sampler_of(l)) for l in laws],
            "quick": bool(args.quick)}
  arrays, extra_rec = {}, {}
  if grid_fn is not None:
    arrays, extra_rec = grid_fn(named, tags, runs_dir)
  records.save(args.out, name, runs=rows, config=config,
               info={"total_seconds": time.time() - t0}, arrays=arrays, extra=extra_rec)


def _moons_grid(named, tags, runs_dir):
  """Each run's logits on a GRID×GRID grid over the normalized input box, from its
  trained model (`mixjax.train.TrainedRun`), stacked per variant: "<variant>|grid"
  (seeds, GRID², 2); the grid, the training points and the normalization."""
  import jax  # pylint: disable=g-import-not-at-top
  from mixjax.train import trained  # pylint: disable=g-import-not-at-top
  ds, grid, apply, arrays = None, None, None, {}
  for (name, _), tag in zip(named, tags):
    run = trained.TrainedRun(os.path.join(runs_dir, name), ds=ds)
    if ds is None:  # every variant trains the same model on the same data
      ds = run.ds
      x = np.concatenate([ds.train_x, ds.test_x])
      lo, hi = x.min(0) - 0.5, x.max(0) + 0.5
      g0, g1 = np.meshgrid(np.linspace(lo[0], hi[0], GRID), np.linspace(lo[1], hi[1], GRID))
      grid = np.stack([g0.ravel(), g1.ravel()], 1).astype(np.float32)
      apply = jax.jit(lambda v, g, m=run.model: m.apply(v, g, train=False))
    logits = apply(run.variables(), grid)
    arrays.setdefault(f"{tag}|grid", []).append(np.asarray(logits, np.float32))
    run.close()
  arrays = {k: np.stack(v) for k, v in arrays.items()}
  arrays["grid"] = grid
  extra = {"train_points": ds.extras["train_points"].tolist(),
           "train_labels": np.asarray(ds.train_y).tolist(),
           "norm_mean": np.asarray(ds.norm_mean).tolist(),
           "norm_std": np.asarray(ds.norm_std).tolist()}
  return arrays, extra


def run(args) -> None:
  if "rescaling" in args.parts:
    _run_rescaling(args)
  if "approx" in args.parts:
    _run_variants(args, "approx", APPROX_VARIANTS, APPROX_LAWS, APPROX_CONFIG)
  if "two_moons" in args.parts:
    _run_variants(args, "two_moons", MOONS_VARIANTS, [law("beta", alpha=1.0)],
                  MOONS_CONFIG, grid_fn=_moons_grid)


# ----------------------------------------------------------------------------------------


def _report_rescaling(out):
  rec = records.load(out, "rescaling")
  rows = rec["runs"]
  md = ["## (a) Test-time rescaling on/off per law\n",
        f"MNIST-1D, MLP (256, 256), Adam lr {rec['config']['lr']}, "
        f"{rec['config']['train']['num_epochs']} epochs, {len(rec['config']['seeds'])} "
        "seeds. Rescaled: f_test(x) = ȳ + (f(x̄ + θ̄(x − x̄)) − ȳ)/θ̄ (docs/THEORY.md §5). "
        "Δ = rescaled − plain, paired by seed, mean with 95% t-interval.\n"]
  body = []
  laws = analysis.unique(rows, "law")
  for law in laws:
    sub = analysis.select(rows, law=law)
    cells = [law, f"{sub[0]['theta_bar']:.3f}"]
    for m, scale, dig in (("accuracy", 100, 2), ("nll", 1, 3), ("ece", 1, 3)):
      a = analysis.mean_se(r[f"test_{m}"] for r in sub)
      b = analysis.mean_se(r[f"test_rs_{m}"] for r in sub)
      diffs = [r[f"test_rs_{m}"] - r[f"test_{m}"] for r in sub]
      d = analysis.mean_se(diffs)
      from scipy import stats as sp_stats  # pylint: disable=g-import-not-at-top
      t = sp_stats.t.ppf(0.975, d[2] - 1) if d[2] > 1 else float("nan")
      cells += [analysis.fmt(a[0], a[1], dig, scale), analysis.fmt(b[0], b[1], dig, scale),
                f"{d[0] * scale:+.{dig}f} [{(d[0] - t * d[1]) * scale:+.{dig}f}, "
                f"{(d[0] + t * d[1]) * scale:+.{dig}f}]"]
    body.append(cells)
  md.append(analysis.markdown_table(
      ["law", "θ̄", "acc plain", "acc rescaled", "Δ acc (pts)", "NLL plain", "NLL rescaled",
       "Δ NLL", "ECE plain", "ECE rescaled", "Δ ECE"], body))
  # Figure: paired differences vs θ̄.
  fig, axes = plots.new_figure(1, 3, size=(4.2, 3.4))
  for ax, (m, name, scale) in zip(axes[0], (("accuracy", "Δ test accuracy (points)", 100),
                                            ("nll", "Δ test NLL", 1),
                                            ("ece", "Δ test ECE", 1))):
    xs, ys, es, labs = [], [], [], []
    for law in laws:
      if law == "ERM":
        continue
      sub = analysis.select(rows, law=law)
      d = analysis.mean_se(r[f"test_rs_{m}"] - r[f"test_{m}"] for r in sub)
      xs.append(sub[0]["theta_bar"])
      ys.append(d[0] * scale)
      es.append(d[1] * scale)
      labs.append(law)
    plots.errorbar_points(ax, xs, ys, es, labs)
    for x, y, lab in zip(xs, ys, labs):
      ax.annotate(lab, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xlabel("θ̄ of the law")
    ax.set_ylabel(f"{name}, rescaled − plain")
    ax.grid(alpha=0.3)
  fig.suptitle("Effect of test-time rescaling (paired by seed; mean ± se)", fontsize=10)
  f = plots.save(fig, os.path.join(out, "rescaling.png"))
  md.append(f"\n![rescaling]({os.path.basename(f)})\n")
  return "\n".join(md)


def _report_approx(out):
  rec = records.load(out, "approx")
  rows = rec["runs"]
  cfg = rec["config"]
  md = ["## (b) Approximate mixup as a training objective\n",
        f"MNIST-1D, MLP (128, 128) tanh, Adam lr {cfg['lr']}, "
        f"{cfg['train']['num_epochs']} epochs, {len(cfg['seeds'])} seeds; approx = "
        "ERM on transformed data + the selected terms of Theorem 3 with the exact "
        "estimator (full Jacobians and Hessians per example) on each minibatch, with the "
        "training set's statistics. Wall time of all variants: "
        f"{rec['info'].get('total_seconds', float('nan')):.0f} s.\n"]
  body = []
  variants = analysis.unique(rows, "variant")
  summary = {}
  for law in analysis.unique(rows, "law"):
    for var in variants:
      sub = analysis.select(rows, law=law, variant=var)
      if not sub:
        continue
      cells = [var, law]
      for m, scale, dig in (("test_accuracy", 100, 2), ("test_nll", 1, 3),
                            ("test_ece", 1, 3), ("test_rs_accuracy", 100, 2),
                            ("test_rs_ece", 1, 3)):
        mu, se, _ = analysis.mean_se(r[m] for r in sub)
        summary[(var, law, m)] = (mu, se)
        cells.append(analysis.fmt(mu, se, dig, scale))
      obj = [r.get("train_objective") for r in sub]
      obj = [np.nan if o is None else o for o in obj]
      nonfinite = int(np.sum(~np.isfinite(obj)))
      cells.append(analysis.fmt(*analysis.mean_se(obj)[:2], 3) +
                   (f" ({nonfinite} non-finite)" if nonfinite else ""))
      body.append(cells)
  md.append(analysis.markdown_table(
      ["variant", "law", "acc", "NLL", "ECE", "acc (rs)", "ECE (rs)",
       "training objective, last epoch"], body))
  md.append("\nA negative training objective means the optimizer found parameters where the "
            "quadratic risk is below the cross-entropy floor: the hessian term (and, "
            "without the jacobian term, the cross term) is unbounded below, so the "
            "truncated expansion is not a valid objective on its own.\n")
  md.append("\n(ERM is trained once and listed under the ERM law.)\n")
  fig, axes = plots.new_figure(1, 3, size=(5.0, 3.8))
  lawlist = [l for l in analysis.unique(rows, "law") if l != "ERM"]
  colors = ["tab:blue", "tab:red", "tab:green"]
  width = 0.8 / max(len(lawlist), 1)
  for ax, (m, name) in zip(axes[0], (("test_accuracy", "test accuracy"),
                                     ("test_nll", "test NLL"), ("test_ece", "test ECE"))):
    if ("ERM", "ERM", m) in summary:  # ERM does not depend on the law: one gray bar.
      mu, se = summary[("ERM", "ERM", m)]
      ax.bar([variants.index("ERM")], [mu], width=0.8 * width * len(lawlist), yerr=[se],
             color="tab:gray", alpha=0.75, capsize=2, edgecolor="k", lw=0.4, label="ERM")
    for li, law in enumerate(lawlist):
      xs, ys, es = [], [], []
      for vi, var in enumerate(variants):
        key = (var, law, m)
        if key in summary:
          xs.append(vi + (li - (len(lawlist) - 1) / 2) * width)
          ys.append(summary[key][0])
          es.append(summary[key][1])
      ax.bar(xs, ys, width=width, yerr=es, color=colors[li % 3], alpha=0.75, capsize=2,
             label=f"law {law}", edgecolor="k", lw=0.4)
    if m == "test_nll":  # collapsed variants reach NLL ≫ 1: log scale
      ax.set_yscale("log")
      name += " (log scale)"
    else:
      vals = [v[0] for k, v in summary.items() if k[2] == m and np.isfinite(v[0])]
      ax.set_ylim(0, 1.1 * max(vals) if vals else 1)
    ax.set_xticks(range(len(variants)))
    ax.set_xticklabels(variants, rotation=40, ha="right", fontsize=7)
    ax.set_ylabel(name)
    ax.grid(alpha=0.3, axis="y")
  axes[0, 0].legend(fontsize=7)
  fig.suptitle("Approximate mixup vs sampled mixup vs ERM variants (mean ± se over seeds)",
               fontsize=10)
  f = plots.save(fig, os.path.join(out, "approx.png"))
  md.append(f"\n![approx]({os.path.basename(f)})\n")
  return "\n".join(md)


def _report_moons(out):
  rec = records.load(out, "two_moons")
  arrays = rec["arrays"]
  grid = arrays["grid"]
  rows = rec["runs"]
  variants = analysis.unique(rows, "variant")
  mean = np.asarray(rec["extra"]["norm_mean"])
  std = np.asarray(rec["extra"]["norm_std"])
  pts = np.asarray(rec["extra"]["train_points"])
  lab = np.asarray(rec["extra"]["train_labels"])
  raw_grid = grid * std + mean
  g0 = raw_grid[:, 0].reshape(GRID, GRID)
  g1 = raw_grid[:, 1].reshape(GRID, GRID)
  fig, axes = plots.new_figure(1, len(variants), size=(3.4, 3.4), layout="constrained")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  for ax, var in zip(axes[0], variants):
    lg = arrays[f"{var}|grid"][0]  # seed 0
    p1 = np.exp(lg[:, 1] - np.logaddexp(lg[:, 0], lg[:, 1])).reshape(GRID, GRID)
    cf = ax.contourf(g0, g1, p1, levels=np.linspace(0, 1, 11), cmap="RdBu_r", alpha=0.75)
    ax.contour(g0, g1, p1, levels=[0.5], colors="k", linewidths=1.5)
    for seed_i in range(1, arrays[f"{var}|grid"].shape[0]):
      lgs = arrays[f"{var}|grid"][seed_i]
      ps = np.exp(lgs[:, 1] - np.logaddexp(lgs[:, 0], lgs[:, 1])).reshape(GRID, GRID)
      ax.contour(g0, g1, ps, levels=[0.5], colors="k", linewidths=0.6, alpha=0.4,
                 linestyles="--")
    ax.scatter(pts[:, 0], pts[:, 1], c=lab, cmap="bwr", s=8, edgecolor="k", lw=0.3)
    sub = analysis.select(rows, variant=var)
    acc = analysis.mean_se(r["test_accuracy"] for r in sub)
    nll = analysis.mean_se(r["test_nll"] for r in sub)
    ax.set_title(f"{var}\nacc {acc[0] * 100:.1f}%, NLL {nll[0]:.3f}", fontsize=8)
    ax.set_xlabel("x₁")
    ax.set_ylabel("x₂")
  fig.colorbar(cf, ax=axes[0].tolist(), label="P(class 1)", shrink=0.85)
  fig.suptitle("Two moons (n = 300, noise 0.01), random Fourier features: colour = "
               "P(class 1) of seed 0; solid line = its 0.5 contour, dashed = other seeds; "
               "dots = training points", fontsize=9)
  f = plots.save(fig, os.path.join(out, "two_moons.png"), tight=False)
  plt.close("all")
  md = ["## (c) Two moons: decision boundaries\n",
        f"{rec['config']['train']['num_epochs']} epochs, Adam lr {rec['config']['lr']}, "
        f"batch {rec['config']['train']['batch_size']}, {len(rec['config']['seeds'])} "
        "seeds; mixup and approx use λ ~ Beta(1, 1). Test metrics (mean ± se):\n"]
  body = []
  for var in variants:
    sub = analysis.select(rows, variant=var)
    body.append([var] + [analysis.fmt(*analysis.mean_se(r[m] for r in sub)[:2], d, s)
                         for m, d, s in (("test_accuracy", 1, 100), ("test_nll", 3, 1),
                                         ("test_ece", 3, 1), ("test_rs_nll", 3, 1))])
  md.append(analysis.markdown_table(["variant", "acc", "NLL", "ECE", "NLL (rs)"], body))
  md.append(f"\n![two moons]({os.path.basename(f)})\n")
  return "\n".join(md)


def report(args) -> None:
  md = ["# Paper claims\n", "Generated by `python -m experiments.studies.paper_claims "
        f"--out {args.out} --mode=report` from the saved results.\n"]
  for part, fn in (("rescaling", _report_rescaling), ("approx", _report_approx),
                   ("two_moons", _report_moons)):
    if os.path.exists(os.path.join(args.out, f"{part}.json")):
      md.append(fn(args.out))
  with open(os.path.join(args.out, "report.md"), "w") as f:
    f.write("\n".join(md))


def main(argv=None) -> None:
  args = common.parse_args(__doc__.splitlines()[0], list(PARTS), argv)
  common.main(args, run, report)


if __name__ == "__main__":
  main(sys.argv[1:])
