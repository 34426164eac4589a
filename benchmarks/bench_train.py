"""Training throughput of the real train step: ERM vs mixup with the CIFAR-10 recipe.

    python -m benchmarks.bench_train                          # PreAct-ResNet-18 (slow on CPU)
    python -m benchmarks.bench_train --model=lenet --steps=10 # a smaller model

What runs is exactly what `mixjax.main` runs for `experiments/cifar10.py`: the recipe's
model (PreAct-ResNet-18 unless `--model`), SGD momentum 0.9 with weight decay 1e-4 and the
piecewise schedule, global batch 128, random crop + flip on device, the training set
held on device, and the step compiled as `jax.jit(jax.shard_map(...))` over all local
devices (`mixjax.train.step.make_train_step`). The data are CIFAR-shaped random images
(`--num_train` of them, 32×32×3, 10 classes), so no dataset is needed.

Timing: both methods are compiled and run once (warm-up) first; then, for each repeat,
ERM and mixup take `--steps` steps each in alternating order, each block ending with
`block_until_ready`. Reported: median seconds per step over repeats, images per second,
and the mixup/ERM time ratio. Printed, never asserted (benchmarks are not tests).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from mixjax.train import sweeps
from mixjax.train import validate
from mixjax.train import setup
from mixjax.train import methods as methods_lib
from mixjax.train import optim
from mixjax.train import program as program_lib
from mixjax.train import state as state_lib
from mixjax.train import step as step_lib
from mixjax import data as data_lib

NUM_CLASSES = 10
IMAGE_SHAPE = (32, 32, 3)


def cifar10_config(model: str | None):
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "experiments", "cifar10.py")
  config = sweeps.load_config_module(path).get_config()
  if model:
    config.model.name = model
  return config


def build(config, method: str, x: np.ndarray, y: np.ndarray):
  """(step_fn, state, x_dev, y_dev) for `method` under `config` on all local devices."""
  mesh = step_lib.make_mesh(jax.local_devices())
  model = setup.build_model(config, NUM_CLASSES)
  schedule = program_lib.Schedule.of(config, x.shape[0])
  tx = optim.make_optimizer(config.optimizer, schedule.steps_per_epoch,
                            schedule.total_steps)
  ctx = setup.method_context(config)
  augment_fn = lambda k, im: data_lib.augment(k, im, crop_padding=config.augment.crop_padding,
                                              flip=config.augment.flip)
  fn = step_lib.make_train_step(
      model=model, tx=tx, method=methods_lib.METHODS.get(method), ctx=ctx, mesh=mesh,
      num_classes=NUM_CLASSES, batch_size=config.batch_size, num_train=x.shape[0],
      augment_fn=augment_fn)
  sample = jnp.zeros((1,) + IMAGE_SHAPE, jnp.float32)
  state = jax.jit(lambda k: state_lib.create_state(model, tx, k, sample),
                  out_shardings=step_lib.replicated(mesh))(
                      jax.random.key_data(jax.random.key(config.seed)))
  return fn, state, step_lib.put_replicated(mesh, x), step_lib.put_replicated(mesh, y)


def main(argv=None) -> dict[str, dict[str, float]]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default=None,
                      help="model name (default: the recipe's preact_resnet18), e.g. lenet")
  parser.add_argument("--steps", type=int, default=2, help="timed steps per repeat")
  parser.add_argument("--repeats", type=int, default=2, help="repeats (median reported)")
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--num_train", type=int, default=1024)
  args = parser.parse_args(argv)

  config = cifar10_config(args.model)
  config.batch_size = args.batch_size
  validate.validate_config(config, num_devices=jax.local_device_count(),
                           check_data=False)  # synthetic data
  rng = np.random.default_rng(0)
  x = rng.standard_normal((args.num_train,) + IMAGE_SHAPE, dtype=np.float32)
  y = rng.integers(0, NUM_CLASSES, args.num_train).astype(np.int32)

  runs = {}
  for method in ("erm", "mixup"):
    t0 = time.perf_counter()
    fn, state, xd, yd = build(config, method, x, y)
    state, m = fn(state, xd, yd, None)  # compile + first step
    jax.block_until_ready(m["loss"])
    print(f"{method}: compiled and warmed up in {time.perf_counter() - t0:.1f}s", flush=True)
    runs[method] = [fn, state, xd, yd]

  times = {m: [] for m in runs}
  for r in range(args.repeats):
    order = list(runs) if r % 2 == 0 else list(runs)[::-1]
    for method in order:
      fn, state, xd, yd = runs[method]
      t0 = time.perf_counter()
      for _ in range(args.steps):
        state, m = fn(state, xd, yd, None)
      jax.block_until_ready((state, m))
      times[method].append((time.perf_counter() - t0) / args.steps)
      runs[method][1] = state

  res = {}
  for method, ts in times.items():
    sec = statistics.median(ts)
    res[method] = {"sec_per_step": sec, "images_per_sec": config.batch_size / sec}
  ratio = res["mixup"]["sec_per_step"] / res["erm"]["sec_per_step"]
  dev = jax.local_devices()[0]
  print(f"\nmixjax train step, model {config.model.name}, batch {config.batch_size}, "
        f"{jax.local_device_count()} x {dev.platform} ({dev.device_kind}), "
        f"{platform.processor() or platform.machine()}, {args.steps} steps x "
        f"{args.repeats} repeats (median)")
  print(f"  {'method':<8}{'s/step':>10}{'images/s':>12}")
  for method, r in res.items():
    print(f"  {method:<8}{r['sec_per_step']:>10.3f}{r['images_per_sec']:>12.1f}")
  print(f"  mixup / ERM time ratio: {ratio:.3f}")
  res["ratio"] = {"mixup_over_erm": ratio}
  return res


if __name__ == "__main__":
  main()
