r"""The trainer's step as `python -m mixjax.main` runs it for the Fashion-MNIST recipe,
against the bare step of `benchmarks.bench_steps`, and what each extra costs.

    python -m benchmarks.bench_trainer_step --data_dir=DIR
    python -m benchmarks.bench_trainer_step --data_dir=DIR --variants=trainer,bare_mixup
    python -m benchmarks.bench_trainer_step --data_dir=DIR --profile=trainer --ops=30

Variants (rows), all on the recipe network (conv32-BN-ReLU-pool-conv64-BN-ReLU-pool-dense256)
at batch 128:
- bare_erm, bare_mixup: `bench_steps`'s steps (a fixed synthetic batch, optax SGD momentum,
  no augmentation, no metrics; mixup with Beta(1, 1));
- trainer: the compiled step of `program.assemble` for `experiments/fashion_mnist.py`,
  exactly what the trainer compiles (the batch sliced from the training set held on device, crop + flip, mixup
  Beta(0.2), SGD Nesterov with weight decay and the cosine schedule held as optimizer
  state (`optax.inject_hyperparams`), the non-finite guard, the metrics), called as the
  loop calls it (one step in flight);
- trainer_noaug, trainer_erm: the same with `augment.enabled=False`, or `method.name=erm`
  (what augmentation and mixing cost inside it);
- loop: `loop.train` itself over the steps (its host work: the dispatch pattern, logging
  every `log_every_steps` with a host read of the metrics, checkpoint checks), with a
  checkpointer that saves nothing and no evaluation;
- before_<change> variants (when listed in `BEFORE`): the trainer with one change of
  docs/speed.md undone, to measure it side by side;
- tried_<change> variants (`TRIED`): the trainer with a change that was tried and not
  kept (docs/speed.md says why), e.g. `tried_window_max_pool`; tried_bare_<change>:
  bench_steps' bare ERM step with it.

Timing: every variant is compiled and warmed up, then the variants run `--steps` steps
each, `--repeats` times, in a fresh random order each repeat; the median time per step
and its ratio to `trainer` are printed, with the process CPU time and the minor page
faults per step, and the load average. The faults show whether each step maps its
buffers in afresh: run it once as it is and once with `MIXJAX_KEEP_MALLOC=1`
(`mixjax._xla_cpu.reuse_freed_memory`, applied at import, so only across processes)
to see what reusing freed memory buys. `--profile=<variant>`
also traces that variant with `jax.profiler` and prints its longest ops (by HLO
metadata). Printed, never asserted.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import itertools
import os
import resource
import statistics
import tempfile
import time
from typing import Callable
from unittest import mock

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from benchmarks import bench_steps
from mixjax.models import layers
from mixjax.train import loop
from mixjax.train import program as program_lib
from mixjax.train import setup
from mixjax.train import sweeps
from mixjax.train import writers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "experiments", "fashion_mnist.py")

# name -> a context manager that undoes one change while the variant is built and traced.
BEFORE: dict[str, Callable[[], contextlib.AbstractContextManager]] = {}


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _window_max(x, window):
  """A max-pool tried and not kept (docs/speed.md): the elementwise maximum of the
  strided window slices x[:, i::w1, j::w2, :], with reduce-max's tangent written by hand
  (the tie count and the indicators elementwise, interleaved back by a stack), so that
  reverse mode runs no reduction over the window axes. Same values and same pool
  gradient as `layers.max_pool`, ties included; spatial sizes divisible by the window."""
  slices = _window_slices(x, window)
  y = slices[0]
  for s in slices[1:]:
    y = jnp.maximum(y, s)
  return y


def _window_slices(x, window):
  """The prod(window) strided slices x[:, i::w1, j::w2, :], offsets in row-major order."""
  return [lax.slice(x, (0, *o, 0), x.shape, (1, *window, 1))
          for o in itertools.product(*(range(w) for w in window))]


@_window_max.defjvp
def _window_max_jvp(window, primals, tangents):
  (x,), (dx,) = primals, tangents
  y = _window_max(x, window)
  ind = [(s == y).astype(dx.dtype) for s in _window_slices(x, window)]
  count = functools.reduce(jnp.add, ind)
  nd = len(window)
  stacked = jnp.stack(ind, axis=-2).reshape(*y.shape[:-1], *window, y.shape[-1])
  perm = [0] + [a for i in range(nd) for a in (1 + i, 1 + nd + i)] + [1 + 2 * nd]
  split = [dx.shape[0]]
  for s, w in zip(dx.shape[1:-1], window):
    split += [s // w, w]
  dy = (dx.reshape(*split, dx.shape[-1]) * stacked.transpose(perm)).sum(
      axis=tuple(2 + 2 * i for i in range(nd)))
  return y, dy / count


# name -> a context manager that applies a change tried and not kept (docs/speed.md).
TRIED: dict[str, Callable[[], contextlib.AbstractContextManager]] = {
    "window_max_pool": lambda: mock.patch.object(
        layers, "max_pool", lambda x, window: _window_max(x, tuple(window))),
}


class _NoCheckpoints:
  """A checkpointer that restores and saves nothing (the loop's host work only)."""

  directory = "none"

  def restore_latest(self, template):
    del template

  def latest_step(self):
    return None

  def save(self, *args, **kwargs):
    del args, kwargs

  def close(self):
    pass


def recipe_config(data_dir: str, **overrides):
  config = sweeps.load_config_module(CONFIG).get_config()
  config.dataset.data_dir = data_dir
  for k, v in overrides.items():
    node = config
    *parents, leaf = k.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = v
  return config


def build_trainer(config, ds, *, with_loop: bool = False, patch=None):
  """run(n) for the trainer's step (or its loop) of `config`: the step of the program
  `mixjax.main` assembles (`program.assemble`), compiled on first use (under `patch`)."""
  config = config.copy_and_resolve_references()
  config.eval.every_epochs = 0  # the loop variant times steps, not evaluations
  with patch() if patch else contextlib.nullcontext():
    program = program_lib.assemble([config], ds, devices=jax.local_devices(),
                                   workdir=tempfile.mkdtemp(prefix="bench_trainer_"))
    state, _, _ = program_lib.init_or_restore(program, _NoCheckpoints())
    step = program.step
    state, _ = step(state, 0)  # trace and compile under the patch
    jax.block_until_ready(state)
  total = program.schedule.total_steps
  holder = {"state": state, "s": 1}
  workdir = tempfile.mkdtemp(prefix="bench_trainer_")

  def run(n: int) -> None:
    s = holder["s"]
    if s + n > total:
      s = 1
    if with_loop:  # the same program, its schedule ending after these n steps
      until = dataclasses.replace(program, schedule=program_lib.Schedule(
          program.schedule.steps_per_epoch, s + n))
      writer = writers.RunWriters([setup.open_writer(workdir, s, False,
                                                     tensorboard=config.tensorboard)])
      state, _ = loop.train(until, holder["state"], _NoCheckpoints(), writer, start=s)
      writer.close()
    else:
      state, prev = holder["state"], None
      for t in range(s, s + n):
        state, m = step(state, t)
        if prev is not None:
          jax.block_until_ready(prev)
        prev = m["loss"]
    jax.block_until_ready(state)
    holder["state"], holder["s"] = state, s + n

  run.hlo_text = lambda: _hlo(step, holder["state"])
  run.step = step
  return run


def _hlo(step, state) -> str:
  """The optimized HLO of the trainer's compiled step."""
  x, y, order = step.feed(1, 1)
  compiled = step.programs[1].jitted
  return compiled.lower(state, x, y, step.stats, step.ctx, order).compile().as_text()


def variants(data_dir: str, names: list[str]) -> dict[str, Callable[[int], None]]:
  ds = None
  runs = {}
  bare = None
  for name in names:
    if name.startswith("tried_bare_"):  # bench_steps' bare ERM step under a TRIED change
      with TRIED[name[len("tried_bare_"):]]():
        runs[name] = bench_steps._jax_variants("recipe")["erm"]  # pylint: disable=protected-access
        runs[name](1)  # compiled under the change
      continue
    if name.startswith("bare_"):
      bare = bare or bench_steps._jax_variants("recipe")  # pylint: disable=protected-access
      runs[name] = bare[name[len("bare_"):]]
      continue
    if ds is None:
      ds = setup.load_data(recipe_config(data_dir))
    overrides = {"trainer_noaug": {"augment.enabled": False},
                 "trainer_erm": {"method.name": "erm"}}.get(name, {})
    patch = (BEFORE.get(name[len("before_"):]) if name.startswith("before_")
             else TRIED.get(name[len("tried_"):]) if name.startswith("tried_") else None)
    runs[name] = build_trainer(recipe_config(data_dir, **overrides), ds,
                               with_loop=name == "loop", patch=patch)
  return runs


def main(argv=None) -> dict[str, float]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data_dir", default=os.environ.get("TFDS_DATA_DIR"))
  parser.add_argument("--variants", default=None,
                      help="comma-separated (default: all, the before_ and tried_ ones included)")
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--profile", default=None, help="a variant to trace")
  parser.add_argument("--ops", type=int, default=25)
  args = parser.parse_args(argv)
  names = (args.variants.split(",") if args.variants else
           ["bare_erm", "bare_mixup", "trainer", "trainer_noaug", "trainer_erm", "loop"]
           + [f"before_{b}" for b in BEFORE] + [f"tried_{t}" for t in TRIED])
  load0 = os.getloadavg()
  runs = variants(args.data_dir, names)
  for r in runs.values():
    r(2)
  times = {n: [] for n in names}
  cpu = {n: [] for n in names}
  faults = {n: [] for n in names}
  order = np.random.default_rng(0)
  for _ in range(args.repeats):
    for n in order.permutation(names):
      time.sleep(0.05)
      t0, c0 = time.perf_counter(), time.process_time()
      f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      runs[n](args.steps)
      times[n].append((time.perf_counter() - t0) / args.steps)
      cpu[n].append((time.process_time() - c0) / args.steps)
      faults[n].append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
                       / args.steps)
  med = {n: statistics.median(t) for n, t in times.items()}
  med_cpu = {n: statistics.median(t) for n, t in cpu.items()}
  ref = med.get("trainer", next(iter(med.values())))
  ref_cpu = med_cpu.get("trainer", next(iter(med_cpu.values())))
  print(f"\nrecipe step, median of {args.repeats} repeats of {args.steps} steps; load "
        f"{load0[0]:.2f} at start, {os.getloadavg()[0]:.2f} at the end. cpu ms: this "
        "process's CPU time per step (all threads), steadier than wall time under load; "
        "faults: minor page faults per step (memory the kernel maps in afresh)")
  print(f"  {'variant':<28}{'ms':>9}{'min ms':>9}{'/ trainer':>11}{'cpu ms':>9}"
        f"{'/ trainer':>11}{'faults':>9}")
  for n in names:
    print(f"  {n:<28}{med[n] * 1e3:>9.2f}{min(times[n]) * 1e3:>9.2f}{med[n] / ref:>11.3f}"
          f"{med_cpu[n] * 1e3:>9.2f}{med_cpu[n] / ref_cpu:>11.3f}"
          f"{statistics.median(faults[n]):>9.0f}")
  if args.profile:
    from benchmarks import profile_recipe  # pylint: disable=g-import-not-at-top
    profile_recipe.print_trace(runs[args.profile], args.steps, args.ops)
  return med


if __name__ == "__main__":
  main()
