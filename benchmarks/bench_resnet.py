"""Speed of one ResNet-50 training step on CPU, mixjax against PyTorch, float32 and
bfloat16, side by side (for the record: ImageNet training belongs on accelerators).

    python -m benchmarks.bench_resnet                # batch 32, 224×224, 3 repeats
    python -m benchmarks.bench_resnet --quick        # 64×64 images, 1 repeat (smoke)

The step is the ImageNet recipe's (`experiments/imagenet.py`): ResNet-50 (25,557,032
parameters, 1000 classes) in training mode (BatchNorm batch statistics, running
averages updated), mixup with one λ ~ Beta(0.2, 0.2) per example folded to
max(λ, 1 − λ) and the reversed batch as partners, soft-label cross-entropy, SGD with
Nesterov momentum 0.9 and coupled weight decay 2e-4, on one fixed synthetic batch.

- jax_f32 / jax_bf16: `mixjax.models` "resnet50" with dtype float32 / bfloat16
  (float32 parameters, BatchNorm statistics and loss), `mixjax.losses.mixup_loss`, optax;
  one jitted step per dispatch.
- torch_f32 / torch_bf16: the hand-written torchvision-layout ResNet-50 of
  `benchmarks/torch_reference.py` (its parameter count is checked against 25,557,032
  here), channels-last memory format (PyTorch's advice for CPU convolutions), the same
  step; bfloat16 through `torch.autocast("cpu", torch.bfloat16)` (parameters float32),
  `torch.set_num_threads` = the cores available to this process.

Timing: every variant runs once (compile / warm-up), then in each repeat the variants
run one after the other in a fresh random order (`bench_steps._time`): a shared
machine's drifts hit all of them alike. Reported: the median seconds per step, the
images per second, and the ratios mixjax / PyTorch per dtype and bf16 / f32 per
library. The machine's load average is printed with them.
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

from benchmarks import bench_steps
from mixjax import losses
from mixjax import models
from mixjax import samplers

NUM_CLASSES = 1000
ALPHA = 0.2
LR, MOMENTUM, WEIGHT_DECAY = 0.1, 0.9, 2e-4
RESNET50_PARAMS = 25_557_032  # torchvision's resnet50
DTYPES = {"f32": "float32", "bf16": "bfloat16"}


def _batch(batch_size: int, size: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(batch_size, size, size, 3)).astype(np.float32)
  y = rng.integers(0, NUM_CLASSES, size=batch_size)
  return x, y


def jax_step(dtype: str, batch_size: int, size: int, *, fed: bool = False,
             model_kwargs: dict | None = None) -> Callable[..., None]:
  """mixjax's ResNet-50 step in `dtype`: `run(num_steps)` on a fixed synthetic batch
  (a device array, an argument of the compiled step); with `fed=True`, `step(x)` takes
  one step on the batch x (B, size, size, 3) float32 (labels: the fixed synthetic ones)
  without waiting for it, and `step.wait()` blocks until the steps dispatched are done.
  `model_kwargs` (e.g. a small width for smoke runs) go to the model."""
  model = models.build_model("resnet50", NUM_CLASSES, model_kwargs or {}, dtype=dtype)
  x_np, y_np = _batch(batch_size, size)
  x, y = jax.device_put(x_np), jax.nn.one_hot(y_np, NUM_CLASSES)
  variables = jax.jit(model.init)(jax.random.key(0), x[:1])
  tx = optax.chain(optax.add_decayed_weights(WEIGHT_DECAY),
                   optax.sgd(LR, momentum=MOMENTUM, nesterov=True))
  law = samplers.beta(ALPHA)

  @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
  def step(params, batch_stats, opt_state, key, x, y):
    def loss_fn(p):
      out = {}

      def f(xm):
        logits, out["upd"] = model.apply({"params": p, "batch_stats": batch_stats}, xm,
                                         train=True, mutable=["batch_stats"])
        return logits
      loss = losses.mixup_loss(key, f, x, y, law, pairing="reverse", fold=True)
      return loss, out["upd"]["batch_stats"]

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), batch_stats, opt_state, loss

  state = {"params": variables["params"], "batch_stats": variables["batch_stats"], "i": 0,
           "loss": None}
  state["opt_state"] = tx.init(state["params"])

  def one(batch) -> None:
    state["params"], state["batch_stats"], state["opt_state"], state["loss"] = step(
        state["params"], state["batch_stats"], state["opt_state"],
        jax.random.key(state["i"]), batch, y)
    state["i"] += 1

  def wait() -> None:
    loss = state["loss"]
    if loss is not None and not np.isfinite(float(loss)):  # (float() waits for the step)
      raise FloatingPointError(f"non-finite loss {float(loss)} in the jax {dtype} step")

  if fed:
    one.wait = wait
    return one

  def run(num_steps: int) -> None:
    for _ in range(num_steps):
      one(x)
    wait()
  return run


def torch_step(dtype: str, batch_size: int, size: int, threads: int
               ) -> Callable[[int], None]:
  """`run(num_steps)` for the PyTorch ResNet-50 step (bf16: autocast)."""
  import torch  # pylint: disable=g-import-not-at-top
  from benchmarks import torch_reference  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(threads)
  torch.manual_seed(0)
  model = torch_reference.resnet50(NUM_CLASSES)
  n = sum(p.numel() for p in model.parameters())
  if n != RESNET50_PARAMS:
    raise AssertionError(f"the PyTorch ResNet-50 has {n} parameters, torchvision's has "
                         f"{RESNET50_PARAMS}")
  model = model.to(memory_format=torch.channels_last).train()
  x_np, y_np = _batch(batch_size, size)
  x = torch.from_numpy(x_np.transpose(0, 3, 1, 2).copy()).to(
      memory_format=torch.channels_last)
  y = torch.nn.functional.one_hot(torch.from_numpy(y_np), NUM_CLASSES).float()
  opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, nesterov=True,
                        weight_decay=WEIGHT_DECAY)
  lam_rng = np.random.default_rng(1)
  reverse = torch.arange(batch_size - 1, -1, -1)

  def run(num_steps: int) -> None:
    loss = None
    for _ in range(num_steps):
      lam = lam_rng.beta(ALPHA, ALPHA, size=batch_size).astype(np.float32)
      lam = torch.from_numpy(np.maximum(lam, 1 - lam))
      lx = lam.view(-1, 1, 1, 1)
      x_mix = lx * x + (1 - lx) * x[reverse]
      y_mix = lam[:, None] * y + (1 - lam[:, None]) * y[reverse]
      with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
        logits = model(x_mix)
      loss = torch.nn.functional.cross_entropy(logits.float(), y_mix)
      opt.zero_grad(set_to_none=True)
      loss.backward()
      opt.step()
    if loss is not None and not np.isfinite(loss.detach().item()):
      raise FloatingPointError(f"non-finite loss {loss.detach().item()} in the torch "
                               f"{dtype} step")
  return run


def main(argv=None) -> Dict[str, float]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="64×64 images, 1 repeat")
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--size", type=int, default=None, help="image size (default 224)")
  parser.add_argument("--repeats", type=int, default=None)
  parser.add_argument("--no_torch", action="store_true")
  args = parser.parse_args(argv)
  size = args.size or (64 if args.quick else 224)
  repeats = args.repeats or (1 if args.quick else 3)
  threads = bench_steps._threads()  # pylint: disable=protected-access
  load = os.getloadavg()
  print(f"ResNet-50 train step on CPU: batch {args.batch}, {size}×{size}×3, "
        f"{NUM_CLASSES} classes; jax {jax.__version__} ({jax.devices()[0].platform}, "
        f"{platform.processor() or platform.machine()}), {threads} CPU threads; "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at start"
        + (" [--quick]" if args.quick else ""), flush=True)
  runs = {f"jax_{k}": jax_step(d, args.batch, size) for k, d in DTYPES.items()}
  if not args.no_torch:
    try:
      import torch  # pylint: disable=g-import-not-at-top
      print(f"torch {torch.__version__}", flush=True)
      runs.update({f"torch_{k}": torch_step(d, args.batch, size, threads)
                   for k, d in DTYPES.items()})
    except ImportError as e:
      print(f"PyTorch not importable ({e}); its column is skipped.")
  t0 = time.perf_counter()
  times = bench_steps._time(runs, warmup=0, repeats=repeats, steps=1)  # pylint: disable=protected-access
  med = {k: statistics.median(v) for k, v in times.items()}
  load = os.getloadavg()
  print(f"\n== median of {repeats} repeats of 1 step (wall {time.perf_counter() - t0:.0f} s;"
        f" load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at the end: "
        f"{'a loaded machine, numbers provisional' if load[0] > threads else 'idle'}) ==")
  print(f"{'variant':<12}{'s/step':>10}{'min s':>10}{'images/s':>10}")
  for k, v in times.items():
    print(f"{k:<12}{med[k]:>10.3f}{min(v):>10.3f}{args.batch / med[k]:>10.1f}")
  print("ratios of medians (time; < 1: the first is faster):")
  for d in DTYPES:
    if f"torch_{d}" in med:
      print(f"  jax_{d} / torch_{d} = {med[f'jax_{d}'] / med[f'torch_{d}']:.3f}")
  for lib in ("jax", "torch"):
    if f"{lib}_f32" in med:
      print(f"  {lib}_bf16 / {lib}_f32 = {med[f'{lib}_bf16'] / med[f'{lib}_f32']:.3f}")
  return med


if __name__ == "__main__":
  main()
