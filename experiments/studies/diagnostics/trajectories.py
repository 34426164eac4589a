"""Diagnostics along mixup training: Theorem 3's terms, R1–R4, the notes' bounds, and the
gap between the mixup risk and the approximate risk, at every checkpoint of trained runs
(docs/THEORY.md §4).

On a fixed subset of training examples, with that subset's own statistics (so that the
identities are exact), at each checkpoint (`mixjax.train.TrainedRun`):

  * `mixjax.theory.approx_mixup_terms` (exact estimator): erm (on transformed data),
    jacobian, cross, hessian, label and the paper's R1–R4;
  * the exact mixup risk of the subset (`mixjax.theory.exact_mixup_risk`: all n² pairs,
    the law's θ-quadrature) and the sampled mixup loss (`mixjax.losses.mixup_loss`, mean
    of `num_draws` draws);
  * the per-example terms and the notes' upper bounds (`mixjax.theory.diagnostics`).

Each is its own compiled program, compiled once per law (the variables and the run's key
are arguments): one program combining them hung intermittently on XLA:CPU (jaxlib
0.10.2; every thread idle). If the measurement ever hangs, stop it and rerun the same
`python -m mixjax.studies` command: the trained runs are kept, only the measurement is
repeated.
"""
from __future__ import annotations

import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mixjax import losses
from mixjax import theory
from mixjax.theory import diagnostics
from mixjax.studies import analysis
from mixjax.studies import plots
from mixjax.studies import records


def make_fns(x_sub: np.ndarray, y_sub: np.ndarray, *, num_draws: int, num_nodes: int
             ) -> dict:
  """The diagnostics on a fixed subset (its own DataStats), as four functions
  `fn(logits_fn, sampler, moments, key) -> dict of scalars`, compiled separately."""
  c = int(y_sub.max()) + 1
  xs = jnp.asarray(x_sub, jnp.float32).reshape(x_sub.shape[0], -1)
  ys = jax.nn.one_hot(jnp.asarray(y_sub), c)
  stats = theory.data_stats(xs, ys)

  def terms_fn(logits_fn, sampler, moments, key):
    del key
    terms = theory.approx_mixup_terms(None, logits_fn, xs, ys, stats, sampler,
                                      terms=theory.TERMS, moments=moments,
                                      diagnostics=True)
    out = {f"t_{k}": v for k, v in terms.items()}
    approx_all = (terms["erm"] + terms["jacobian"] + terms["cross"] + terms["hessian"]
                  + terms["label"])
    out["approx_all"] = approx_all
    out["approx_no_hessian"] = approx_all - terms["hessian"]
    return out

  def exact_fn(logits_fn, sampler, moments, key):
    del moments, key
    return {"exact_mixup": theory.exact_mixup_risk(logits_fn, xs, ys, sampler,
                                                   num_nodes=num_nodes)}

  def sampled_fn(logits_fn, sampler, moments, key):
    del moments
    keys = jax.random.split(jax.random.fold_in(key, 77), num_draws)
    draws = jax.vmap(lambda k: losses.mixup_loss(k, logits_fn, xs, ys, sampler,
                                                 fold=True))(keys)
    return {"sampled_mixup": jnp.mean(draws), "sampled_mixup_sd": jnp.std(draws)}

  def bounds_fn(logits_fn, sampler, moments, key):
    del sampler, key
    per = diagnostics.per_example_terms(logits_fn, xs, ys, stats, moments)
    return {f"b_{k}": v for k, v in diagnostics.summarize_bounds(per).items()}

  return {"terms": terms_fn, "exact": exact_fn, "sampled": sampled_fn, "bounds": bounds_fn}


def measure(runs: Sequence, *, subset: int, num_draws: int, num_nodes: int) -> dict:
  """Every diagnostic at every checkpoint of every run (`study.Run`s trained on one
  dataset with one model; checkpoints at the same steps), as a record's history
  {"diag/<name>": (T, R), "epoch": (T,)} (with the gaps E^mix − approx), its extra (the
  measurement's sizes) and info (the checkpoint epochs)."""
  from mixjax.train import setup  # pylint: disable=g-import-not-at-top
  from mixjax.train import trained  # pylint: disable=g-import-not-at-top
  ds = setup.load_data(runs[0].config)  # the runs' own split, loaded once
  fns = make_fns(ds.train_x[:subset], ds.train_y[:subset], num_draws=num_draws,
                 num_nodes=num_nodes)
  columns: dict[str, list[list[float]]] = {}
  compiled, epochs = {}, None
  for r in runs:
    run = trained.TrainedRun(r.dir, ds=ds)
    sampler = setup.training_sampler(run.config)
    if sampler.label not in compiled:  # one compilation per law
      moments = setup.training_moments(run.config, sampler)
      compiled[sampler.label] = [jax.jit(lambda v, key, fn=fn, m=run.model, s=sampler,
                                         mo=moments: fn(lambda x: m.apply(v, x, train=False),
                                                        s, mo, key))
                                 for fn in fns.values()]
    key = jax.random.key(int(run.config.seed))
    epochs = np.asarray(run.steps) / (run.steps[-1] / run.config.num_epochs)
    for t, step in enumerate(run.steps):
      variables = run.variables(step)
      for fn in compiled[sampler.label]:  # separate programs, one after the other
        for k, v in jax.device_get(fn(variables, key)).items():
          columns.setdefault(f"diag/{k}", [[] for _ in run.steps])[t].append(float(v))
    run.close()
  h = {k: np.asarray(v, np.float64) for k, v in columns.items()}
  h["diag/gap_all"] = h["diag/exact_mixup"] - h["diag/approx_all"]
  h["diag/gap_no_hessian"] = h["diag/exact_mixup"] - h["diag/approx_no_hessian"]
  h["epoch"] = epochs
  return {"history": h, "info": {"checkpoint_epochs": epochs.tolist()},
          "extra": {"subset": subset, "num_draws": num_draws, "num_nodes": num_nodes}}


# ----------------------------------------------------------------------------------------
# Report.


def _plot_lines(ax, h, idx, items, logy=False):
  """Mean ± se over the runs `idx` of each history entry (key, name, color, style)."""
  for key, name, color, ls in items:
    v = h[key][:, idx]
    m = v.mean(1)
    se = v.std(1, ddof=1) / np.sqrt(v.shape[1]) if v.shape[1] > 1 else None
    ax.errorbar(h["epoch"], np.abs(m) if logy else m, yerr=se, color=color, ls=ls,
                marker="o", ms=3, capsize=2, label=name, lw=1.2)
  if logy:
    ax.set_yscale("log")
  ax.set_xlabel("epoch")
  ax.grid(alpha=0.3)


_TERMS = [[("diag/t_jacobian", "jacobian", "tab:blue", "-"),
           ("diag/t_cross", "cross", "tab:orange", "-"),
           ("diag/t_hessian", "hessian (= R2)", "tab:green", "-")],
          [("diag/t_R1", "R1 (on top of |R3|)", "tab:purple", "-"),
           ("diag/t_R3", "|R3| (R3 < 0)", "tab:red", "--")]]
_BOUNDS = [[("diag/b_R1", "R1", "tab:purple", "-"),
            ("diag/b_B1_mid", "bound: tr Σ·tr H·‖J−J*‖²", "gray", "--"),
            ("diag/b_B1", "bound: tr Σ·Ent·‖J−J*‖²", "k", ":")],
           [("diag/b_R2", "|R2| (hessian)", "tab:green", "-"),
            ("diag/b_B2", "bound: tr Σ·‖S−ỹ‖·‖tr∇²f‖", "k", ":")],
           [("diag/b_R3", "|R3|", "tab:red", "-"), ("diag/b_B3", "notes: ·Ent", "k", ":"),
            ("diag/b_B3_corrected", "corrected: ·tr H⁺", "gray", "--")]]
_GAP = [("diag/exact_mixup", "exact mixup risk", "k", "-"),
        ("diag/sampled_mixup", "sampled mixup loss (16 draws)", "tab:gray", ":"),
        ("diag/approx_all", "approx (all terms)", "tab:blue", "--"),
        ("diag/approx_no_hessian", "approx (no hessian)", "tab:orange", "--"),
        ("diag/t_erm", "ERM on transformed data", "tab:green", "-.")]


def _figures(h, by_law: dict, out: str) -> list[str]:
  """terms_along_training.png, bounds_along_training.png, gap_along_training.png."""
  paths = []
  for name, panels, logs, ylabels, title in (
      ("terms", _TERMS, (False, True), ("expanded term (subset mean)",
                                        "paper's R1, |R3| (log)"),
       "Theorem 3 terms along mixup training (mean ± se over seeds). R1 + R3 = jacobian "
       "+ cross: R1 and R3 are large and cancel."),
      ("bounds", _BOUNDS, (True,) * 3, ("mean over subset (log)",) * 3,
       "Per-example terms and the notes' upper bounds (means over the subset; ± se over "
       "seeds)"),
      ("gap", [_GAP], (False,), ("risk on the subset",),
       "Mixup risk vs the second-order approximation along training")):
    fig, axes = plots.new_figure(len(panels), len(by_law), size=(4.0, 3.2))
    for j, (law, idx) in enumerate(by_law.items()):
      for i, items in enumerate(panels):
        _plot_lines(axes[i, j], h, idx, items, logy=logs[i])
        axes[i, j].set_ylabel(ylabels[i])
      axes[0, j].set_title(law, fontsize=9)
      if name == "terms":
        axes[0, j].axhline(0, color="k", lw=0.6)
    for i in range(len(panels)):
      axes[i, 0].legend(fontsize=6)
    fig.suptitle(title, fontsize=9)
    paths.append(plots.save(fig, os.path.join(out, f"{name}_along_training.png")))
  return paths


def report_setting(out: str, setting: str) -> str:
  """The Markdown of the saved OUT/<setting>.json: the terms and the gap at the last
  checkpoint, where the notes' bounds hold, and the three figures."""
  rec = records.load(out, setting)
  h, cfg = rec["history"], rec["config"]
  sizes = {**cfg, **rec["extra"]}  # the measurement's sizes (config in earlier records)
  by_law = analysis.frame(rec["runs"]).groupby("law", sort=False).indices
  figures = _figures(h, by_law, out)
  seconds = rec["info"].get("train_seconds", rec["info"].get("total_seconds", np.nan))
  md = [f"## {setting}\n",
        f"{cfg['dataset']}, model `{cfg['train']['model']['name']}` "
        f"{cfg['train']['model']['kwargs']}, Adam lr {cfg['lr']}, "
        f"{cfg['train']['num_epochs']} epochs, seeds {cfg['seeds']}; diagnostics on the "
        f"first {sizes['subset']} training examples with their own statistics, at epochs "
        f"{[int(e) for e in h['epoch']]}. {seconds:.0f} s of training on "
        f"{rec['provenance']['cpu_count']} CPU cores.\n",
        "### Terms and the approximation gap at the end of training (mean ± se over "
        "seeds)\n"]

  def cell(key, idx, digits=4):
    m, se, _ = analysis.mean_se(h[key][-1, idx])
    if key.startswith("diag/b_tight"):  # ratios spanning decades
      return f"{m:.2g} ± {se:.1g}" if np.isfinite(se) else f"{m:.2g}"
    return analysis.fmt(m, se, digits)

  terms = ("t_erm", "t_jacobian", "t_cross", "t_hessian", "t_R1", "t_R3", "exact_mixup",
           "sampled_mixup", "gap_all", "gap_no_hessian")
  md.append(analysis.markdown_table(
      ["law", "ERM~", "jacobian", "cross", "hessian", "R1", "R3", "E^mix (exact)",
       "sampled", "E^mix − approx", "E^mix − approx (no hess.)"],
      [[law] + [cell(f"diag/{k}", idx) for k in terms] for law, idx in by_law.items()]))
  ident = np.abs(h["diag/t_R1"] + h["diag/t_R3"] - h["diag/t_jacobian"] - h["diag/t_cross"])
  md.append("\nR1 + R3 = jacobian + cross holds at every checkpoint to "
            f"{np.nanmax(ident):.2e} (max abs difference; R1 and R3 are each up to "
            f"{np.nanmax(np.abs(h['diag/t_R1'])):.0f} and cancel, so float32 rounding "
            "limits this check).\n")
  md.append("\n### Where the notes' bounds hold, and how tight they are (last checkpoint)\n")
  md.append("holds = fraction of subset examples with |term_i| ≤ bound_i; tight = median of "
            "|term_i| / bound_i (1 = tight). B2 (signed) checks R2_i ≤ B2_i.\n")
  bounds = ("holds_B1", "tight_B1", "holds_B1_mid", "holds_B2", "holds_B2_signed",
            "tight_B2", "holds_B3", "tight_B3", "holds_B3_corrected", "tight_B3_corrected")
  md.append(analysis.markdown_table(
      ["law", "B1 holds", "B1 tight", "B1' holds", "B2 holds", "B2 (signed)", "B2 tight",
       "B3 (notes) holds", "B3 tight", "B3 (corrected) holds", "B3c tight"],
      [[law] + [cell(f"diag/b_{k}", idx, 3) for k in bounds]
       for law, idx in by_law.items()]))
  md.append("\nThe same fractions over all checkpoints (min – max over checkpoints and "
            "seeds):\n")
  holds = ("holds_B1", "holds_B2", "holds_B2_signed", "holds_B3", "holds_B3_corrected")
  md.append(analysis.markdown_table(
      ["law", "B1", "B2", "B2 (signed)", "B3 (notes)", "B3 (corrected)"],
      [[law] + [f"{np.nanmin(h[f'diag/b_{k}'][:, idx]):.2f} – "
                f"{np.nanmax(h[f'diag/b_{k}'][:, idx]):.2f}" for k in holds]
       for law, idx in by_law.items()]))
  md.append("\n" + "\n\n".join(f"![{os.path.basename(f)[:-4]}]({os.path.basename(f)})"
                               for f in figures) + "\n")
  return "\n".join(md)
