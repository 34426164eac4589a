"""Speed of one jitted SGD train step: ERM vs mixup vs the approximate mixup risk, and
mixjax against PyTorch on the same networks.

    python -m benchmarks.bench_steps                  # full run (`make bench`)
    python -m benchmarks.bench_steps --quick          # smoke run, a few seconds per variant
    python -m benchmarks.bench_steps --models=recipe  # the Fashion-MNIST recipe CNN only

All variants run side by side in one process on the same synthetic batch (B = 128),
10 classes, optax SGD with momentum, one dispatch per step. Models (rows):

- mlp: `mixjax.models` "mlp", hidden (512, 512), on 40-dim inputs;
- cnn: "lenet" (two 5×5 conv layers, 32/64 channels, dense 256) on 32×32×3;
- recipe: the network of `experiments/fashion_mnist.py` ("cnn" with stages
  ((32,), (64,)): conv32-BN-ReLU-pool-conv64-BN-ReLU-pool-dense256-head) on 28×28×1,
  BatchNorm in training mode (batch statistics, running averages updated in the step).

Variants:

- erm: mean cross-entropy (`mixjax.losses.erm_loss`);
- mixup: `mixjax.losses.mixup_loss` with Beta(1, 1), one λ per example, random
  permutation partners;
- cutmix (image models: cnn, recipe): the same `mixup_loss` with the mask law
  `samplers.cutmix(1.0)` (one box per example, λ ~ Beta(1, 1), the area kept as label
  weight; docs/THEORY.md §8) in place of Beta(1, 1): what a mask law costs over a λ-law
  (printed as cutmix / mixup);
- approx_stochastic (models without BatchNorm): `mixjax.theory.approx_mixup_risk(...,
  estimator="stochastic")` (Theorem 3 evaluated at one mixup draw per example);
- approx_exact (MLP only): the exact estimator (full input Jacobians and Hessians);
- erm_std_layers (cnn, recipe): erm with the model traced on the standard layers
  (`nn.max_pool`, `nn.BatchNorm`, `lax.conv_general_dilated`: what `mixjax.models.layers`
  picks off CPU), to show what its CPU forms change;
- torch_erm / torch_mixup: the usual PyTorch recipe (`benchmarks/torch_reference.py`),
  same models and batch, `torch.set_num_threads` = the cores available to this process.

Timing: every variant is compiled and warmed up first; then, for each repeat, the
variants are run one after the other in a random order (so slow drifts of a shared
machine, and the spinning worker threads a previous variant leaves behind, hit all of
them alike), `steps` steps each, ending with `block_until_ready`. The reported time per
step is the median over repeats (the minimum is printed too). Benchmarks are not tests: the
targets (mixup/ERM ≤ 1.05, approx_stochastic/ERM ≤ 3, cutmix/mixup ≤ 1.05, recipe
erm/PyTorch erm ≤ 1.3) are printed, never asserted.
"""
from __future__ import annotations

import argparse
import contextlib
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
from mixjax.models import layers

BATCH = 128
NUM_CLASSES = 10
MODELS = {
    # name: (mixjax.models name, kwargs, one example's input shape)
    "mlp": ("mlp", dict(hidden_sizes=(512, 512)), (40,)),
    "cnn": ("lenet", dict(), (32, 32, 3)),
    "recipe": ("cnn", dict(stages=((32,), (64,)), dense_sizes=(256,)), (28, 28, 1)),
}
TARGETS = {"mixup": 1.05, "approx_stochastic": 3.0}
CUTMIX_TARGET = 1.05  # cutmix / mixup (issue 17: a mask law no slower than a λ-law)
TORCH_TARGETS = {"recipe": 1.3}  # mixjax erm / PyTorch erm
# Models whose row also times erm on the standard layers (`_standard_layers`).
STANDARD_LAYERS_ROW = ("lenet", "cnn")


def _threads() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 1


class _Forward:
  """`logits_fn` for the losses: the model in training mode (batch statistics for
  BatchNorm); the updated statistics of its last call are kept in `updates`."""

  def __init__(self, model, params, collections):
    self.model, self.params, self.collections = model, params, collections
    self.updates = collections

  def __call__(self, inputs):
    variables = {"params": self.params, **self.collections}
    if not self.collections:
      return self.model.apply(variables, inputs, train=True)
    logits, self.updates = self.model.apply(variables, inputs, train=True,
                                            mutable=list(self.collections))
    return logits


@contextlib.contextmanager
def _standard_layers():
  """While tracing: `mixjax.models.layers` picks the standard ops (as on GPU/TPU)."""
  cpu_forms = layers.cpu_forms
  layers.cpu_forms = lambda: False
  try:
    yield
  finally:
    layers.cpu_forms = cpu_forms


def _jax_variants(model_key: str, *, seed: int = 0, lr: float = 0.01,
                  momentum: float = 0.9) -> Dict[str, Callable[[int], None]]:
  """Builds `run(num_steps)` closures for every JAX variant of one model."""
  name, kwargs, input_shape = MODELS[model_key]
  model = get_model(name, NUM_CLASSES, **kwargs)
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(BATCH, *input_shape)), jnp.float32)
  y = jax.nn.one_hot(rng.integers(0, NUM_CLASSES, size=BATCH), NUM_CLASSES)
  variables = model.init(jax.random.key(seed), x[:1], train=False)
  params = variables["params"]
  collections = {k: v for k, v in variables.items() if k != "params"}
  tx = optax.sgd(lr, momentum=momentum)
  sampler = samplers.beta(1.0)

  loss_fns = {
      "erm": lambda f, x, y, k: losses.erm_loss(f, x, y),
      "mixup": lambda f, x, y, k: losses.mixup_loss(k, f, x, y, sampler),
  }
  if len(input_shape) == 3:  # images (H, W, C): a mask law needs an image
    box = samplers.cutmix(1.0)
    loss_fns["cutmix"] = lambda f, x, y, k: losses.mixup_loss(k, f, x, y, box)
  if not collections:  # the approximate risk differentiates f: no BatchNorm models
    # Statistics of a synthetic training set (computed once, outside the step).
    train_x = rng.normal(size=(8 * BATCH, *input_shape)).astype(np.float32)
    train_y = np.asarray(jax.nn.one_hot(rng.integers(0, NUM_CLASSES, 8 * BATCH),
                                        NUM_CLASSES))
    stats = theory.data_stats(train_x, train_y)
    loss_fns["approx_stochastic"] = lambda f, x, y, k: theory.approx_mixup_risk(
        k, f, x, y, stats, sampler, estimator="stochastic")
    if model_key == "mlp":
      loss_fns["approx_exact"] = lambda f, x, y, k: theory.approx_mixup_risk(
          None, f, x, y, stats, sampler, estimator="exact")

  key = jax.random.key(seed + 1)
  runs = {}
  for variant, loss_fn in loss_fns.items():
    runs[variant] = _make_run(model, loss_fn, tx, params, collections, x, y, key)
  if name in STANDARD_LAYERS_ROW:
    with _standard_layers():
      runs["erm_std_layers"] = _make_run(model, loss_fns["erm"], tx, params, collections,
                                         x, y, key)
      runs["erm_std_layers"](1)  # traced (and compiled) now, with the standard layers
  return runs


def _make_run(model, loss_fn, tx, params, collections, x, y, key
              ) -> Callable[[int], None]:
  """A closure that runs `num_steps` jitted SGD steps and blocks until they are done."""

  def loss_and_updates(params, collections, x, y, key):
    f = _Forward(model, params, collections)
    return loss_fn(f, x, y, key), f.updates

  @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
  def step(params, collections, opt_state, x, y, key, i):
    (loss, collections), grads = jax.value_and_grad(loss_and_updates, has_aux=True)(
        params, collections, x, y, jax.random.fold_in(key, i))
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), collections, opt_state, loss

  state = {"params": jax.tree.map(jnp.array, params),
           "collections": jax.tree.map(jnp.array, collections), "i": 0}
  state["opt_state"] = tx.init(state["params"])

  def run(num_steps: int) -> None:
    loss = None
    for _ in range(num_steps):
      state["params"], state["collections"], state["opt_state"], loss = step(
          state["params"], state["collections"], state["opt_state"], x, y, key,
          jnp.int32(state["i"]))
      state["i"] += 1
    jax.block_until_ready((state["params"], loss))
    if not np.isfinite(float(loss)):
      raise FloatingPointError(f"non-finite loss {float(loss)} in the benchmark step")

  def hlo_text() -> str:
    """The compiled step's optimized HLO (for `profile_recipe`)."""
    return step.lower(state["params"], state["collections"], state["opt_state"], x, y, key,
                      jnp.int32(0)).compile().as_text()

  run.hlo_text = hlo_text
  return run


def _torch_variants(model_key: str, threads: int) -> Dict[str, Callable[[int], None]]:
  try:
    from benchmarks import torch_reference  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    print(f"[{model_key}] PyTorch not importable ({e}); the PyTorch column is skipped.")
    return {}
  name, kwargs, input_shape = MODELS[model_key]
  runs = torch_reference.make_steps(name, input_shape, NUM_CLASSES, BATCH, threads=threads,
                                    model_kwargs=kwargs if name == "cnn" else None)
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
  parser.add_argument("--models", default="mlp,cnn,recipe")
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
  if "cutmix" in med:
    r = med["cutmix"] / med["mixup"]
    print(f"  cutmix / mixup = {r:.3f} [{best['cutmix'] / best['mixup']:.3f}]  "
          f"(target <= {CUTMIX_TARGET}: {'met' if r <= CUTMIX_TARGET else 'MISSED'})")
  if "approx_exact" in med:
    print(f"  approx_exact / erm = {med['approx_exact'] / erm:.3f} "
          f"[{best['approx_exact'] / best['erm']:.3f}]")
  if "erm_std_layers" in med:
    print(f"  erm_std_layers / erm = {med['erm_std_layers'] / erm:.3f} "
          f"[{best['erm_std_layers'] / best['erm']:.3f}]  (what models.layers saves)")
  for n in ("erm", "mixup", "erm_std_layers"):
    if n in med and f"torch_{n.split('_')[0]}" in med:
      t = f"torch_{n.split('_')[0]}"
      r = med[n] / med[t]
      target = TORCH_TARGETS.get(model_key) if n == "erm" else None
      print(f"  mixjax {n} / PyTorch {t[6:]} = {r:.3f} [{best[n] / best[t]:.3f}]"
            + (f"  (target <= {target}: {'met' if r <= target else 'MISSED'})"
               if target else ""))
  if "torch_mixup" in med:
    print(f"  (PyTorch mixup / PyTorch erm = {med['torch_mixup'] / med['torch_erm']:.3f} "
          f"[{best['torch_mixup'] / best['torch_erm']:.3f}])")


if __name__ == "__main__":
  main()
