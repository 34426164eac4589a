"""Speed of one jitted SGD train step: ERM vs mixup vs the approximate mixup risk.

    python -m benchmarks.bench_steps            # full run (`make bench`)
    python -m benchmarks.bench_steps --quick    # smoke run, a few seconds per variant

All variants run side by side in one process on the same synthetic batch (B = 128):
an MLP (`mixjax.models` "mlp", hidden (512, 512)) on 40-dim inputs and a small CNN
("lenet": two 5×5 conv layers, 32/64 channels) on 32×32×3 inputs, 10 classes, optax
SGD with momentum. Variants:

- erm: mean cross-entropy (`mixjax.losses.erm_loss`);
- mixup: `mixjax.losses.mixup_loss` with Beta(1, 1), one λ per example, random
  permutation partners;
- approx_stochastic: `mixjax.theory.approx_mixup_risk(..., estimator="stochastic")`
  (Theorem 3 evaluated at one mixup draw per example);
- approx_exact (MLP only): the exact estimator (full input Jacobians and Hessians);
- torch_erm / torch_mixup: the usual PyTorch recipe (`benchmarks/torch_reference.py`),
  same models and batch, `torch.set_num_threads` = the cores available to this process.

Timing: every variant is compiled and warmed up first; then, for each repeat, the
variants are run one after the other in a random order (so slow drifts of a shared
machine, and the spinning worker threads a previous variant leaves behind, hit all of
them alike), `steps` steps each, ending with `block_until_ready`. The reported time per
step is the median over repeats (the minimum is printed too). Benchmarks are not tests: the
targets (mixup/ERM ≤ 1.05, approx_stochastic/ERM ≤ 3) are printed, never asserted.
"""
from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import time
from typing import Callable, Dict

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mixjax import losses
from mixjax import samplers
from mixjax import theory
from mixjax.models import get_model

BATCH = 128
NUM_CLASSES = 10
MODELS = {
    # name: (mixjax.models name, kwargs, one example's input shape)
    "mlp": ("mlp", dict(hidden_sizes=(512, 512)), (40,)),
    "cnn": ("lenet", dict(), (32, 32, 3)),
}
TARGETS = {"mixup": 1.05, "approx_stochastic": 3.0}


def _threads() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 1


def _jax_variants(model_key: str, *, seed: int = 0, lr: float = 0.01,
                  momentum: float = 0.9) -> Dict[str, Callable[[int], None]]:
  """Builds `run(num_steps)` closures for every JAX variant of one model."""
  name, kwargs, input_shape = MODELS[model_key]
  model = get_model(name, NUM_CLASSES, **kwargs)
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(BATCH, *input_shape)), jnp.float32)
  y = jax.nn.one_hot(rng.integers(0, NUM_CLASSES, size=BATCH), NUM_CLASSES)
  params = model.init(jax.random.key(seed), x[:1], train=False)
  tx = optax.sgd(lr, momentum=momentum)
  sampler = samplers.beta(1.0)

  def logits_fn(p):
    return lambda inputs: model.apply(p, inputs, train=False)

  loss_fns = {
      "erm": lambda p, x, y, k: losses.erm_loss(logits_fn(p), x, y),
      "mixup": lambda p, x, y, k: losses.mixup_loss(k, logits_fn(p), x, y, sampler),
  }
  # Statistics of a synthetic training set (computed once, outside the step).
  train_x = rng.normal(size=(8 * BATCH, *input_shape)).astype(np.float32)
  train_y = np.asarray(jax.nn.one_hot(rng.integers(0, NUM_CLASSES, 8 * BATCH), NUM_CLASSES))
  stats = theory.data_stats(train_x, train_y)
  loss_fns["approx_stochastic"] = lambda p, x, y, k: theory.approx_mixup_risk(
      k, logits_fn(p), x, y, stats, sampler, estimator="stochastic")
  if model_key == "mlp":
    loss_fns["approx_exact"] = lambda p, x, y, k: theory.approx_mixup_risk(
        None, logits_fn(p), x, y, stats, sampler, estimator="exact")

  runs = {}
  for variant, loss_fn in loss_fns.items():
    runs[variant] = _make_run(loss_fn, tx, params, x, y, jax.random.key(seed + 1))
  return runs


def _make_run(loss_fn, tx, params, x, y, key) -> Callable[[int], None]:
  """A closure that runs `num_steps` jitted SGD steps and blocks until they are done."""

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(params, opt_state, x, y, key, i):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y, jax.random.fold_in(key, i))
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  state = {"params": jax.tree.map(jnp.array, params), "i": 0}
  state["opt_state"] = tx.init(state["params"])

  def run(num_steps: int) -> None:
    loss = None
    for _ in range(num_steps):
      state["params"], state["opt_state"], loss = step(
          state["params"], state["opt_state"], x, y, key, jnp.int32(state["i"]))
      state["i"] += 1
    jax.block_until_ready((state["params"], loss))
    if not np.isfinite(float(loss)):
      raise FloatingPointError(f"non-finite loss {float(loss)} in the benchmark step")

  return run


def _torch_variants(model_key: str, threads: int) -> Dict[str, Callable[[int], None]]:
  try:
    from benchmarks import torch_reference  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    print(f"[{model_key}] PyTorch not importable ({e}); the PyTorch column is skipped.")
    return {}
  name, _, input_shape = MODELS[model_key]
  runs = torch_reference.make_steps(name, input_shape, NUM_CLASSES, BATCH, threads=threads)
  return {f"torch_{k}": v for k, v in runs.items()}


def _time(runs: Dict[str, Callable[[int], None]], *, warmup: int, repeats: int,
          steps: int, pause: float = 0.05) -> Dict[str, list[float]]:
  """Seconds per step of every variant, per repeat, interleaving the variants.

  Each repeat runs the variants in a fresh random order (seeded), after a short pause,
  so that no variant always follows the same one: PyTorch's OpenMP workers keep spinning
  for a while after a step and would otherwise slow down whichever variant comes next.
  """
  for run in runs.values():
    run(1)        # compile
    run(warmup)
  names = list(runs)
  times = {n: [] for n in names}
  order_rng = np.random.default_rng(0)
  for _ in range(repeats):
    for n in order_rng.permutation(names):
      time.sleep(pause)  # let the previous variant's spinning worker threads go idle
      t0 = time.perf_counter()
      runs[n](steps)
      times[n].append((time.perf_counter() - t0) / steps)
  return times


def main(argv=None) -> Dict[str, Dict[str, float]]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="short smoke run")
  parser.add_argument("--repeats", type=int, default=None)
  parser.add_argument("--steps", type=int, default=None, help="steps per repeat")
  parser.add_argument("--warmup", type=int, default=None)
  parser.add_argument("--models", default="mlp,cnn")
  args = parser.parse_args(argv)
  warmup = args.warmup if args.warmup is not None else (1 if args.quick else 5)
  threads = _threads()

  print(f"mixjax step benchmark: batch {BATCH}, {NUM_CLASSES} classes, "
        f"jax {jax.__version__} on {jax.devices()[0].platform} "
        f"({platform.processor() or platform.machine()}), {threads} CPU threads, "
        f"load average {os.getloadavg()[0]:.2f} at start"
        + (" [--quick]" if args.quick else ""))
  results = {}
  for model_key in args.models.split(","):
    if model_key not in MODELS:
      raise ValueError(f"Unknown benchmark model {model_key!r}; known: {', '.join(MODELS)}.")
    # The MLP step takes ~1 ms: more repeats, since other processes' noise is relatively larger.
    repeats = args.repeats or (3 if args.quick else (31 if model_key == "mlp" else 11))
    steps = args.steps or (2 if args.quick else (20 if model_key == "mlp" else 3))
    runs = _jax_variants(model_key)
    runs.update(_torch_variants(model_key, threads))
    times = _time(runs, warmup=warmup, repeats=repeats, steps=steps)
    results[model_key] = {n: statistics.median(t) for n, t in times.items()}
    _report(model_key, times, results[model_key], steps, repeats)
  return results


def _report(model_key, times, med, steps, repeats) -> None:
  print(f"\n== {model_key} ({MODELS[model_key][0]}, input {MODELS[model_key][2]}): "
        f"median over {repeats} repeats of {steps} steps ==")
  print(f"{'variant':<20}{'median ms':>10}{'IQR ms':>10}{'min ms':>10}{'/ ERM':>8}")
  erm = med["erm"]
  best = {n: min(t) for n, t in times.items()}
  for n, t in times.items():
    q1, q3 = np.percentile(t, [25, 75]) * 1e3
    base = med["torch_erm"] if n.startswith("torch_") else erm
    print(f"{n:<20}{med[n] * 1e3:>10.3f}{q3 - q1:>10.3f}{best[n] * 1e3:>10.3f}"
          f"{med[n] / base:>8.3f}")
  print("ratios of medians (of minima in brackets, less sensitive to a shared machine):")
  for n, target in TARGETS.items():
    if n in med:
      r = med[n] / erm
      print(f"  {n} / erm = {r:.3f} [{best[n] / best['erm']:.3f}]  "
            f"(target <= {target}: {'met' if r <= target else 'MISSED'})")
  if "approx_exact" in med:
    print(f"  approx_exact / erm = {med['approx_exact'] / erm:.3f} "
          f"[{best['approx_exact'] / best['erm']:.3f}]")
  for n in ("erm", "mixup"):
    if f"torch_{n}" in med:
      print(f"  mixjax {n} / PyTorch {n} = {med[n] / med[f'torch_{n}']:.3f} "
            f"[{best[n] / best[f'torch_{n}']:.3f}]")
  if "torch_mixup" in med:
    print(f"  (PyTorch mixup / PyTorch erm = {med['torch_mixup'] / med['torch_erm']:.3f} "
          f"[{best['torch_mixup'] / best['torch_erm']:.3f}])")


if __name__ == "__main__":
  main()
