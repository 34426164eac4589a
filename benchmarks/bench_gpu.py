"""ImageNet on one accelerator: does the streaming input keep the ResNet-50 step fed?

    python -m benchmarks.bench_gpu              # on a GPU machine (launch/gpu_bench.sh)
    python -m benchmarks.bench_gpu --smoke      # tiny sizes, any machine (CPU included)

Three measurements, one table:

1. step: images/s of the ImageNet recipe's ResNet-50 training step in bfloat16
   (`benchmarks.bench_resnet.jax_step`: mixup, SGD Nesterov, BatchNorm in training mode)
   on one device, on a fixed synthetic batch already on the device: the rate the input
   must sustain.
2. pipeline: images/s of the streaming loader (`mixjax.data.streaming.TrainStream`,
   through `benchmarks.bench_pipeline`: ImageNet-sized synthetic JPEGs prepared as an
   image-folder dataset, decoded, random-resized-cropped to 224 and flipped in Grain
   worker processes, batches of uint8 delivered to the main process) with one worker per
   CPU core of the machine (`--workers`).
3. fed: images/s of the step fed by the pipeline (each batch copied to the device,
   normalized there, and stepped; the copy of batch s + 1 overlaps step s because JAX
   dispatches asynchronously): if the pipeline keeps up, this equals the step's rate.

Printed: the three rates, pipeline / step (≥ 1: enough input), fed / step (≈ 1: the step
is fed), the device, the cores and the load average. ≤ 10 minutes on a GPU machine with
the defaults (most of it JPEG writing and the first compilation).
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np


def step_rate(step, x, steps: int, repeats: int) -> float:
  """Median images/s over `repeats` timings of `steps` steps on the device batch x
  (after one step to compile)."""
  step(x)
  step.wait()
  rates = []
  for _ in range(repeats):
    t = time.perf_counter()
    for _ in range(steps):
      step(x)
    step.wait()
    rates.append(x.shape[0] * steps / (time.perf_counter() - t))
  return statistics.median(rates)


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--smoke", action="store_true",
                      help="tiny sizes and a narrow, shallow ResNet (a CPU check)")
  parser.add_argument("--batch", type=int, default=256, help="per-device batch")
  parser.add_argument("--image_size", type=int, default=224)
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--images", type=int, default=2048, help="synthetic JPEGs")
  parser.add_argument("--workers", type=int, default=None, help="default: CPU cores")
  args = parser.parse_args(argv)
  model_kwargs = {}
  if args.smoke:  # a narrow, shallow ResNet-50 (fast to compile) on tiny images
    args.batch, args.image_size, args.steps, args.repeats = 4, 32, 2, 1
    args.images, args.workers = 32, args.workers or 1
    model_kwargs = dict(width=8, stage_sizes=(1, 1, 1, 1))
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  workers = args.workers or cores
  device = jax.devices()[0]
  print(f"device {device.device_kind} ({device.platform}, {jax.device_count()} devices, "
        f"the step on one); {cores} CPU cores, {workers} pipeline workers; batch "
        f"{args.batch}, {args.image_size}x{args.image_size}; load average "
        f"{os.getloadavg()[0]:.2f}", flush=True)

  from benchmarks import bench_resnet  # pylint: disable=g-import-not-at-top
  t0 = time.perf_counter()
  # One compiled step for both measurements: fed a fixed device batch, or the pipeline's.
  step = bench_resnet.jax_step("bfloat16", args.batch, args.image_size, fed=True,
                               model_kwargs=model_kwargs)
  x = jax.device_put(np.random.default_rng(0).normal(
      size=(args.batch, args.image_size, args.image_size, 3)).astype(np.float32))
  rates = {"step": step_rate(step, x, args.steps, args.repeats)}
  print(f"step: {rates['step']:.1f} img/s ({time.perf_counter() - t0:.0f} s)", flush=True)

  try:
    from benchmarks import bench_pipeline  # pylint: disable=g-import-not-at-top
    from mixjax.data import image_folder  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    print(f"pipeline: not measured ({e}: needs the streaming loader, mixjax.data."
          "streaming, and benchmarks/bench_pipeline.py)")
    bench_pipeline = None
  if bench_pipeline is not None:
    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as tmp:
      t0 = time.perf_counter()
      src = bench_pipeline.write_jpegs(os.path.join(tmp, "jpegs"), args.images)
      data_dir = os.path.join(tmp, "tfds")
      image_folder.prepare(src, name="bench_images", data_dir=data_dir)
      print(f"{args.images} JPEGs written and prepared ({time.perf_counter() - t0:.0f} s)",
            flush=True)

      def make():
        return bench_pipeline.grain_iterator(data_dir, "bench_images",
                                             batch_size=args.batch,
                                             image_size=args.image_size, workers=workers)
      warmup = 2 * workers + 2
      timed = [bench_pipeline.timed(make, warmup=warmup, batches=args.steps)[0]
               for _ in range(args.repeats)]
      rates["pipeline"] = statistics.median(timed)
      print(f"pipeline: {rates['pipeline']:.1f} img/s", flush=True)
      rates["fed"] = fed_rate(step, make, args, warmup)
      print(f"fed: {rates['fed']:.1f} img/s", flush=True)

  print(f"\n| measurement | images/s | / step |\n|---|---|---|")
  for k, v in rates.items():
    print(f"| {k} | {v:.1f} | {v / rates['step']:.2f} |")
  if "fed" in rates:
    verdict = ("the pipeline keeps the step fed" if rates["fed"] >= 0.95 * rates["step"]
               else "the step waits for input")
    print(f"{verdict} (pipeline / step = {rates['pipeline'] / rates['step']:.2f}, fed / "
          f"step = {rates['fed'] / rates['step']:.2f}); load average "
          f"{os.getloadavg()[0]:.2f}")
  return rates


def fed_rate(step, make, args, warmup: int) -> float:
  """Images/s of the step taking its batches from the pipeline (uint8 copied to the
  device, normalized there with ImageNet's channel statistics)."""
  mean = jnp.asarray([0.485, 0.456, 0.406]) * 255
  std = jnp.asarray([0.229, 0.224, 0.225]) * 255
  normalize = jax.jit(lambda x: (x.astype(jnp.float32) - mean) / std)
  rates = []
  for _ in range(args.repeats):
    it = make()
    for _ in range(warmup):
      step(normalize(jax.device_put(next(it)[0])))
    step.wait()
    t = time.perf_counter()
    for _ in range(args.steps):
      step(normalize(jax.device_put(next(it)[0])))
    step.wait()
    rates.append(args.batch * args.steps / (time.perf_counter() - t))
    if hasattr(it, "close"):
      it.close()
  return statistics.median(rates)


if __name__ == "__main__":
  main()
