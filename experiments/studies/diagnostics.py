r"""Diagnostics along mixup training: Theorem 3's terms, R1–R4, the notes' bounds, and the
gap between the mixup loss and the approximate risk (docs/THEORY.md §4, seed notes).

Trains a small tanh MLP on MNIST-1D (d = 40, so every term is computed exactly) with mixup
under several laws and seeds: per law, one seed group of the one trainer
(`--config.num_seeds`, vmapped), checkpointed every `EVERY_EPOCHS` epochs. Then, at every
checkpoint (`mixjax.train.TrainedRun`), on a fixed subset of training examples (with
that subset's own statistics, so that the identities are exact):

  * `mixjax.theory.approx_mixup_terms` (exact estimator): erm (on transformed data),
    jacobian, cross, hessian, label and the paper's R1–R4;
  * the exact mixup risk of the subset (`mixjax.theory.exact_mixup_risk`: all n² pairs,
    the law's θ-quadrature) and the sampled mixup loss (`mixjax.losses.mixup_loss`, mean
    of 16 draws);
  * the per-example terms and the notes' upper bounds (`mixjax.studies.diagnostics`):
    prediction entropy, ‖S(f(x̃)) − ỹ‖ (EL2N-like), input-Hessian traces.

  python -m experiments.studies.diagnostics --out results/diagnostics
  python -m experiments.studies.diagnostics --out results/diagnostics --mode=report

XLA:CPU (jaxlib 0.10.2) sometimes never finishes executing these diagnostics programs
(Jacobians, Hessians and batched pseudo-inverses): every thread idles and the host waits
forever. Splitting them into four programs made it rarer, not impossible, so each law
runs in its own child process with a timeout and is retried (`MAX_ATTEMPTS`; a retry
resumes the law's training from its checkpoints); the parent merges the per-law results.
The attempts are recorded in `info["attempts"]`.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments.studies import common
from mixjax import losses
from mixjax import theory
from mixjax.studies import analysis
from mixjax.studies import diagnostics as diag_lib
from mixjax import samplers as L
from mixjax.studies import plots
from mixjax.studies import records
from mixjax.studies import runs as study_runs
from mixjax.train import sweeps

PARTS = ("mnist1d_tanh",)
SUBSET = 256
NUM_DRAWS = 16
NUM_NODES = 16
law = study_runs.law
LAWS = (law("beta", alpha=1.0), law("beta", alpha=0.2), law("w_shaped", a=0.5),
        law("optimal"))
LAW_TIMEOUT_S = 1200  # one law (3 seeds) takes ~1 min on 2 cores; a hang never ends
MAX_ATTEMPTS = 4
NUM_EPOCHS, EVERY_EPOCHS = 60, 5
SETTING = dict(dataset="mnist1d", model="mlp",
               model_kwargs={"hidden_sizes": (128, 128), "activation": "tanh"},
               num_epochs=NUM_EPOCHS, batch_size=128, lr=3e-3)


def label(spec: dict) -> str:
  return study_runs.sampler_of(spec).label


def get_config(law_label: str = "Beta(1)", seeds: int = 3, quick: bool = False):
  """A law's seed group, checkpointed every EVERY_EPOCHS epochs (all checkpoints kept)."""
  from mixjax import data  # pylint: disable=g-import-not-at-top
  from mixjax.train import config as config_lib  # pylint: disable=g-import-not-at-top
  spec = {label(l): l for l in LAWS}[law_label]
  epochs, every = (2, 1) if quick else (NUM_EPOCHS, EVERY_EPOCHS)
  cfg = study_runs.study_config(**dict(SETTING, num_epochs=epochs))
  n_train = data.dataset.train_size(cfg.dataset.name, val_fraction=cfg.dataset.val_fraction,
                                    **dict(cfg.dataset.kwargs))  # without loading it
  spe = data.steps_per_epoch(int(n_train), cfg.batch_size)
  return sweeps.sweep_config(cfg, {**spec, "num_seeds": seeds,
                                       "checkpoint_every_steps": every * spe,
                                       "max_to_keep": epochs // every + 1})


def make_diagnostics_fns(x_sub: np.ndarray, y_sub: np.ndarray) -> dict:
  """The diagnostics on a fixed subset (its own DataStats), as four functions
  `fn(logits_fn, sampler, moments, key) -> dict of scalars`, compiled separately (one
  program combining them hung intermittently on XLA:CPU)."""
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
                                                   num_nodes=NUM_NODES)}

  def sampled_fn(logits_fn, sampler, moments, key):
    del moments
    keys = jax.random.split(jax.random.fold_in(key, 77), NUM_DRAWS)
    draws = jax.vmap(lambda k: losses.mixup_loss(k, logits_fn, xs, ys, sampler,
                                                 fold=True))(keys)
    return {"sampled_mixup": jnp.mean(draws), "sampled_mixup_sd": jnp.std(draws)}

  def bounds_fn(logits_fn, sampler, moments, key):
    del sampler, key
    per = diag_lib.per_example_terms(logits_fn, xs, ys, stats, moments)
    return {f"b_{k}": v for k, v in diag_lib.summarize_bounds(per).items()}

  return {"terms": terms_fn, "exact": exact_fn, "sampled": sampled_fn, "bounds": bounds_fn}


def _add_gaps(history: dict) -> None:
  """Derived series: E^mix (exact, subset) − approximate risk (with / without hessian)."""
  h = history
  h["diag/gap_all"] = h["diag/exact_mixup"] - h["diag/approx_all"]
  h["diag/gap_no_hessian"] = h["diag/exact_mixup"] - h["diag/approx_no_hessian"]


def trajectory_diagnostics(run_dirs: list[str], fns: dict, ds=None
                           ) -> tuple[dict[str, np.ndarray], np.ndarray]:
  """Every diagnostic at every checkpoint of every run (runs of one law): ({"diag/<name>":
  (T, R)}, epochs (T,)). Each function is compiled once for all runs and checkpoints
  (the variables and the run's key are its arguments)."""
  from mixjax.train import setup  # pylint: disable=g-import-not-at-top
  from mixjax.train import trained  # pylint: disable=g-import-not-at-top
  history: dict[str, list[list[float]]] = {}
  epochs, compiled = None, None
  for run_dir in run_dirs:
    run = trained.TrainedRun(run_dir, ds=ds)
    ds = run.ds
    if compiled is None:  # the runs share the law and the model
      sampler = setup.training_sampler(run.config)
      moments = setup.training_moments(run.config, sampler)
      compiled = {name: jax.jit(lambda v, key, fn=fn, m=run.model: fn(
          lambda x: m.apply(v, x, train=False), sampler, moments, key))
                  for name, fn in fns.items()}
    key = jax.random.key(int(run.config.seed))
    spe = run.steps[-1] / run.config.num_epochs
    epochs = np.asarray(run.steps) / spe
    for t, step in enumerate(run.steps):
      variables = run.variables(step)
      for fn in compiled.values():  # separate programs, one after the other
        for k, v in jax.device_get(fn(variables, key)).items():
          col = history.setdefault(f"diag/{k}", [[] for _ in run.steps])
          col[t].append(float(v))
    run.close()
  return {k: np.asarray(v, np.float64) for k, v in history.items()}, epochs


def _run_one_law(args, law_label: str, out: str) -> None:
  """Trains one law (its seeds vmapped), then the diagnostics at every checkpoint;
  saves `<out>/<label>.json`."""
  from mixjax.train import groups  # pylint: disable=g-import-not-at-top
  subset = 32 if args.quick else SUBSET
  seeds = 2 if args.quick else args.seeds
  cfg = get_config(law_label, seeds, args.quick)
  workdir = os.path.join(args.out, "runs", _law_file(law_label))
  t0 = time.time()
  group = groups.train_and_evaluate(cfg, workdir)
  names = sorted(group["runs_summaries"], key=lambda n: int(n.split("_")[1]))
  from mixjax.train import setup  # pylint: disable=g-import-not-at-top
  data, _ = setup.load_data(cfg)  # the runs' own split, loaded once for all of them
  fns = make_diagnostics_fns(data.train_x[:subset], data.train_y[:subset])
  history, epochs = trajectory_diagnostics([os.path.join(workdir, n) for n in names], fns,
                                           ds=data)
  history["epoch"] = epochs
  run_cfgs = groups.run_configs(cfg)
  rows = study_runs.rows(list(zip(names, run_cfgs)), workdir)
  config = {"dataset": "mnist1d", "train": study_runs.config_record(cfg),
            "lr": cfg.optimizer.lr, "seeds": [int(c.seed) for c in run_cfgs],
            "subset": subset, "num_draws": NUM_DRAWS, "num_nodes": NUM_NODES,
            "quick": bool(args.quick)}
  records.save(out, _law_file(law_label), config=config, runs=rows, history=history,
               info={"total_seconds": time.time() - t0,
                     "checkpoint_epochs": epochs.tolist()})


def _law_file(label_: str) -> str:
  return "law_" + "".join(ch if ch.isalnum() else "_" for ch in label_)


def run(args) -> None:
  """One child process per law, each retried on a hang (see module docstring)."""
  laws = [label(l) for l in LAWS][:2 if args.quick else None]
  tmp = os.path.join(args.out, "_per_law")
  os.makedirs(tmp, exist_ok=True)
  print(f"[diagnostics] {len(laws)} laws x {args.seeds} seeds, one process per law",
        flush=True)
  attempts = {}
  for law_label in laws:
    for attempt in range(1, MAX_ATTEMPTS + 1):
      cmd = [sys.executable, "-m", "experiments.studies.diagnostics", "--out", args.out,
             "--mode", "run", "--seeds", str(args.seeds), "--law", law_label] + (
                 ["--quick"] if args.quick else [])
      try:
        subprocess.run(cmd, check=True, timeout=LAW_TIMEOUT_S)
        attempts[law_label] = attempt
        break
      except subprocess.TimeoutExpired:
        print(f"[diagnostics] {law_label}: attempt {attempt} exceeded {LAW_TIMEOUT_S} s "
              "(XLA:CPU hang, all threads idle); retrying", flush=True)
    else:
      raise RuntimeError(f"diagnostics for {law_label} hung {MAX_ATTEMPTS} times.")
  parts = [records.load(tmp, _law_file(l)) for l in laws]
  runs = [r for p in parts for r in p["runs"]]
  keys = [k for k in parts[0]["history"] if k != "epoch"]
  history = {k: np.concatenate([p["history"][k] for p in parts], axis=1) for k in keys}
  history["epoch"] = parts[0]["history"]["epoch"]
  _add_gaps(history)
  config = dict(parts[0]["config"],
                laws=[L.describe(study_runs.sampler_of(l)) for l in LAWS
                      if label(l) in laws])
  info = {"total_seconds": float(sum(p["info"]["total_seconds"] for p in parts)),
          "per_law_seconds": {l: p["info"]["total_seconds"] for l, p in zip(laws, parts)},
          "attempts": attempts, "checkpoint_epochs": parts[0]["info"]["checkpoint_epochs"]}
  records.save(args.out, PARTS[0], runs=runs, config=config, history=history, info=info)
  shutil.rmtree(tmp)


# ----------------------------------------------------------------------------------------


def _series(rec, key, law):
  """(epochs, mean over the law's seeds, se) of a history entry."""
  idx = [i for i, r in enumerate(rec["runs"]) if r["law"] == law]
  h = rec["history"][key][:, idx]
  n = h.shape[1]
  se = h.std(1, ddof=1) / np.sqrt(n) if n > 1 else np.full(h.shape[0], np.nan)
  return rec["history"]["epoch"], h.mean(1), se


def _plot_lines(ax, rec, law, items, logy=False):
  for key, name, color, ls in items:
    ep, m, se = _series(rec, key, law)
    if logy:
      m = np.abs(m)
    ax.errorbar(ep, m, yerr=se, color=color, ls=ls, marker="o", ms=3, capsize=2,
                label=name, lw=1.2)
  if logy:
    ax.set_yscale("log")
  ax.set_xlabel("epoch")
  ax.grid(alpha=0.3)


def report(args) -> None:
  rec = records.load(args.out, PARTS[0])
  laws = analysis.unique(rec["runs"], "law")
  out = args.out
  # 1. Terms along training: the expanded form (top) and the paper's R1, R3 (bottom).
  fig, axes = plots.new_figure(2, len(laws), size=(4.0, 3.2))
  for j, law in enumerate(laws):
    _plot_lines(axes[0, j], rec, law, [
        ("diag/t_jacobian", "jacobian", "tab:blue", "-"),
        ("diag/t_cross", "cross", "tab:orange", "-"),
        ("diag/t_hessian", "hessian (= R2)", "tab:green", "-")])
    axes[0, j].axhline(0, color="k", lw=0.6)
    axes[0, j].set_title(law, fontsize=9)
    axes[0, j].set_ylabel("expanded term (subset mean)")
    _plot_lines(axes[1, j], rec, law, [("diag/t_R1", "R1 (on top of |R3|)", "tab:purple", "-"),
                                       ("diag/t_R3", "|R3| (R3 < 0)", "tab:red", "--")],
                logy=True)
    axes[1, j].set_ylabel("paper's R1, |R3| (log)")
  axes[0, 0].legend(fontsize=7)
  axes[1, 0].legend(fontsize=7)
  fig.suptitle("Theorem 3 terms along mixup training (MNIST-1D, tanh MLP; mean ± se over "
               "seeds). R1 + R3 = jacobian + cross: R1 and R3 are large and cancel.",
               fontsize=9)
  f1 = plots.save(fig, os.path.join(out, "terms_along_training.png"))
  # 2. Bounds next to the terms they bound.
  fig, axes = plots.new_figure(3, len(laws), size=(4.0, 3.0))
  for j, law in enumerate(laws):
    _plot_lines(axes[0, j], rec, law, [("diag/b_R1", "R1", "tab:purple", "-"),
                                       ("diag/b_B1_mid", "bound: tr Σ·tr H·‖J−J*‖²",
                                        "gray", "--"),
                                       ("diag/b_B1", "bound: tr Σ·Ent·‖J−J*‖²", "k", ":")],
                logy=True)
    _plot_lines(axes[1, j], rec, law, [("diag/b_R2", "|R2| (hessian)", "tab:green", "-"),
                                       ("diag/b_B2", "bound: tr Σ·‖S−ỹ‖·‖tr∇²f‖", "k",
                                        ":")], logy=True)
    _plot_lines(axes[2, j], rec, law, [("diag/b_R3", "|R3|", "tab:red", "-"),
                                       ("diag/b_B3", "notes: ·Ent", "k", ":"),
                                       ("diag/b_B3_corrected", "corrected: ·tr H⁺", "gray",
                                        "--")], logy=True)
    axes[0, j].set_title(law, fontsize=9)
    for i in range(3):
      axes[i, j].set_ylabel("mean over subset (log)")
  for i in range(3):
    axes[i, 0].legend(fontsize=6)
  fig.suptitle("Per-example terms and the notes' upper bounds (means over the subset; "
               "± se over seeds)", fontsize=9)
  f2 = plots.save(fig, os.path.join(out, "bounds_along_training.png"))
  # 3. Mixup loss vs approximate risk.
  fig, axes = plots.new_figure(1, len(laws), size=(4.0, 3.4))
  for ax, law in zip(axes[0], laws):
    _plot_lines(ax, rec, law, [("diag/exact_mixup", "exact mixup risk", "k", "-"),
                               ("diag/sampled_mixup", "sampled mixup loss (16 draws)",
                                "tab:gray", ":"),
                               ("diag/approx_all", "approx (all terms)", "tab:blue", "--"),
                               ("diag/approx_no_hessian", "approx (no hessian)",
                                "tab:orange", "--"),
                               ("diag/t_erm", "ERM on transformed data", "tab:green",
                                "-.")])
    ax.set_title(law, fontsize=9)
    ax.set_ylabel("risk on the subset")
  axes[0, 0].legend(fontsize=6)
  fig.suptitle("Mixup risk vs the second-order approximation along training", fontsize=9)
  f3 = plots.save(fig, os.path.join(out, "gap_along_training.png"))

  # Tables at the last checkpoint.
  h = rec["history"]
  last = -1
  md = ["# Diagnostics along mixup training\n",
        f"MNIST-1D, MLP (128, 128) tanh, Adam lr {rec['config']['lr']}, "
        f"{rec['config']['train']['num_epochs']} epochs, seeds {rec['config']['seeds']}; "
        f"diagnostics on the first {rec['config']['subset']} training examples with their "
        f"own statistics, at epochs {[int(e) for e in h['epoch']]}. Run time "
        f"{rec['info'].get('total_seconds', float('nan')):.0f} s "
        f"({rec['provenance']['cpu_count']} CPU cores). Generated by "
        f"`python -m experiments.studies.diagnostics --out {out} --mode=report`. Attempts "
        f"per law (a retry follows an XLA:CPU hang): {rec['info'].get('attempts', 'n/a')}.\n",
        "## Terms and the approximation gap at the end of training (mean ± se over seeds)\n"]

  def cell(key, law, digits=4):
    idx = [i for i, r in enumerate(rec["runs"]) if r["law"] == law]
    m, se, _ = analysis.mean_se(h[key][last, idx])
    if key.startswith("diag/b_tight"):  # ratios spanning decades
      return f"{m:.2g} ± {se:.1g}" if np.isfinite(se) else f"{m:.2g}"
    return analysis.fmt(m, se, digits)

  rows = []
  for law in laws:
    rows.append([law] + [cell(f"diag/{k}", law) for k in
                         ("t_erm", "t_jacobian", "t_cross", "t_hessian", "t_R1", "t_R3",
                          "exact_mixup", "sampled_mixup", "gap_all", "gap_no_hessian")])
  md.append(analysis.markdown_table(
      ["law", "ERM~", "jacobian", "cross", "hessian", "R1", "R3", "E^mix (exact)",
       "sampled", "E^mix − approx", "E^mix − approx (no hess.)"], rows))
  ident = np.abs(h["diag/t_R1"] + h["diag/t_R3"] - h["diag/t_jacobian"] - h["diag/t_cross"])
  md.append("\nR1 + R3 = jacobian + cross holds at every checkpoint to "
            f"{np.nanmax(ident):.2e} (max abs difference; R1 and R3 are each up to "
            f"{np.nanmax(np.abs(h['diag/t_R1'])):.0f} and cancel, so float32 rounding "
            "limits this check).\n")
  md.append("\n## Where the notes' bounds hold, and how tight they are (last checkpoint)\n")
  md.append("holds = fraction of subset examples with |term_i| ≤ bound_i; tight = median of "
            "|term_i| / bound_i (1 = tight). B2 (signed) checks R2_i ≤ B2_i.\n")
  rows = []
  for law in laws:
    rows.append([law] + [cell(f"diag/b_{k}", law, 3) for k in
                         ("holds_B1", "tight_B1", "holds_B1_mid", "holds_B2",
                          "holds_B2_signed", "tight_B2", "holds_B3", "tight_B3",
                          "holds_B3_corrected", "tight_B3_corrected")])
  md.append(analysis.markdown_table(
      ["law", "B1 holds", "B1 tight", "B1' holds", "B2 holds", "B2 (signed)", "B2 tight",
       "B3 (notes) holds", "B3 tight", "B3 (corrected) holds", "B3c tight"], rows))
  md.append("\nThe same fractions over all checkpoints (min – max over checkpoints and "
            "seeds):\n")
  rows = []
  for law in laws:
    idx = [i for i, r in enumerate(rec["runs"]) if r["law"] == law]
    rows.append([law] + [f"{np.nanmin(h[f'diag/b_{k}'][:, idx]):.2f} – "
                         f"{np.nanmax(h[f'diag/b_{k}'][:, idx]):.2f}"
                         for k in ("holds_B1", "holds_B2", "holds_B2_signed", "holds_B3",
                                   "holds_B3_corrected")])
  md.append(analysis.markdown_table(
      ["law", "B1", "B2", "B2 (signed)", "B3 (notes)", "B3 (corrected)"], rows))
  md.append(f"\n![terms]({os.path.basename(f1)})\n\n![bounds]({os.path.basename(f2)})\n\n"
            f"![gap]({os.path.basename(f3)})\n")
  with open(os.path.join(out, "report.md"), "w") as f:
    f.write("\n".join(md))


def main(argv=None) -> None:
  extra = argparse.ArgumentParser(add_help=False)
  extra.add_argument("--law", default=None, help=argparse.SUPPRESS)  # child process
  known, rest = extra.parse_known_args(argv)
  args = common.parse_args(__doc__.splitlines()[0], list(PARTS), rest, default_seeds=3)
  if known.law is not None:
    _run_one_law(args, known.law, os.path.join(args.out, "_per_law"))
    return
  common.main(args, run, report)


if __name__ == "__main__":
  main(sys.argv[1:])
