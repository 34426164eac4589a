"""Images/s of the streaming input (`mixjax.data.streaming`: Grain workers) against a
PyTorch `DataLoader` doing the same work on the same JPEGs, side by side.

    python -m benchmarks.bench_pipeline                 # 1 and 2 workers, 224×224, B = 128
    python -m benchmarks.bench_pipeline --quick         # a smoke run
    python -m benchmarks.bench_pipeline --workers=1 --breakdown   # and per-image parts
    python -m benchmarks.bench_pipeline --before        # and mixjax's float32 stream

The work, per image, on both sides: decode the JPEG with PIL (to RGB), a random-resized
crop (torchvision's sampling: scale (0.08, 1), ratio (3/4, 4/3), ten tries then a centre
crop), a bilinear resize of the crop to 224×224 with PIL, a horizontal flip with
probability ½, and a uint8 (224, 224, 3) array; then batches of 128 (B, 224, 224, 3)
uint8 delivered to the main process. No normalization on either side.

- mixjax: `streaming.TrainStream(..., dtype="uint8", reduce_jpeg=False)` (the trainer's
  stream: uint8, normalized later on the device) over the images
  prepared with `mixjax.data.prepare --dataset=image_folder` (array_record, read through
  `tfds.data_source`), `num_workers` Grain worker processes (`mp_prefetch`, two batches
  buffered per worker), one decoding thread each.
- PyTorch (timm's / torchvision's ImageFolder recipe): a `Dataset` opening the same
  JPEG files with PIL, the crop parameters drawn with torch's generator exactly as
  `torchvision.transforms.RandomResizedCrop.get_params` does (written out here:
  torchvision is not importable with the pinned torch), `DataLoader(batch_size=128,
  num_workers=W, shuffle=True, drop_last=True, persistent_workers=True,
  prefetch_factor=2)`, `torch.set_num_threads(1)` in the workers (the default).

The images: `--images` synthetic JPEGs (quality 90) of ImageNet-like size, width and
height drawn uniformly from [400, 500], smooth random colour fields with mild noise and a
few discs (about 50 KB each; the mean size is printed), written into a temporary
folder.

Timing: each run starts its pipeline alone (no other pipeline's workers alive),
discards the first 2·W + 2 batches (worker start-up, buffers filling), times the next
`--batches` batches and stops the pipeline; each repeat runs the two pipelines one after
the other, alternating which goes first. Reported: the median images/s over repeats and the ratio
mixjax / PyTorch (target ≥ 1.0, printed, never asserted), and the images per CPU-second
of each pipeline's processes (the main process and its workers, `psutil`): on a shared,
loaded machine wall-clock rates depend on how the scheduler splits the cores, the CPU
cost per image much less. The machine's load average is printed before and after: with
a load above the core count the wall-clock numbers are provisional.
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time

import numpy as np
import psutil


def write_jpegs(root: str, num_images: int, *, seed: int = 0, num_classes: int = 4,
                size_range=(400, 500)) -> str:
  """ImageNet-sized synthetic JPEGs in `root/train/<class>/` (module docstring)."""
  import PIL.Image  # pylint: disable=g-import-not-at-top
  import PIL.ImageDraw  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  for i in range(num_images):
    folder = os.path.join(root, "train", f"class_{i % num_classes}")
    os.makedirs(folder, exist_ok=True)
    w, h = (int(v) for v in rng.integers(size_range[0], size_range[1] + 1, 2))
    field = (rng.random((6, 8, 3)) * 255).astype(np.uint8)
    im = PIL.Image.fromarray(field).resize((w, h), PIL.Image.BICUBIC)
    noise = rng.normal(0, 6, (h, w, 3))
    im = PIL.Image.fromarray(np.clip(np.asarray(im) + noise, 0, 255).astype(np.uint8))
    draw = PIL.ImageDraw.Draw(im)
    for _ in range(3):
      x0, y0 = rng.integers(0, w - 60), rng.integers(0, h - 60)
      s = int(rng.integers(30, 150))
      draw.ellipse((x0, y0, x0 + s, y0 + s), fill=tuple(int(c) for c in
                                                        rng.integers(0, 256, 3)))
    im.save(os.path.join(folder, f"{i:05d}.jpg"), "JPEG", quality=90)
  return root


class TorchImages:
  """The PyTorch side: JPEG files -> RandomResizedCrop(size) + flip, uint8 HWC tensors.

  `get_params` is torchvision's `RandomResizedCrop.get_params` (same draws from torch's
  generator, same fallback); the crop and resize are torchvision's PIL path
  (`img.crop(...).resize(size, BILINEAR)`); the flip is `RandomHorizontalFlip(0.5)`.
  """

  def __init__(self, files, labels, size: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    self.files, self.labels, self.size = files, labels, size
    self.scale, self.ratio = scale, ratio

  def __len__(self):
    return len(self.files)

  def get_params(self, width: int, height: int):
    import torch  # pylint: disable=g-import-not-at-top
    area = height * width
    log_ratio = torch.log(torch.tensor(self.ratio))
    for _ in range(10):
      target_area = area * torch.empty(1).uniform_(self.scale[0], self.scale[1]).item()
      aspect_ratio = math.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1]).item())
      w = int(round(math.sqrt(target_area * aspect_ratio)))
      h = int(round(math.sqrt(target_area / aspect_ratio)))
      if 0 < w <= width and 0 < h <= height:
        i = torch.randint(0, height - h + 1, size=(1,)).item()
        j = torch.randint(0, width - w + 1, size=(1,)).item()
        return i, j, h, w
    in_ratio = float(width) / float(height)
    if in_ratio < min(self.ratio):
      w = width
      h = int(round(w / min(self.ratio)))
    elif in_ratio > max(self.ratio):
      h = height
      w = int(round(h * max(self.ratio)))
    else:
      w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w

  def __getitem__(self, index):
    import PIL.Image  # pylint: disable=g-import-not-at-top
    import torch  # pylint: disable=g-import-not-at-top
    with open(self.files[index], "rb") as f:
      img = PIL.Image.open(f).convert("RGB")
    i, j, h, w = self.get_params(*img.size)
    img = img.crop((j, i, j + w, i + h)).resize((self.size, self.size),
                                                PIL.Image.BILINEAR)
    if torch.rand(1) < 0.5:
      img = img.transpose(PIL.Image.FLIP_LEFT_RIGHT)
    return torch.from_numpy(np.asarray(img, np.uint8).copy()), self.labels[index]


def torch_images(root: str, image_size: int) -> TorchImages:
  """The PyTorch side's dataset over `root/train/<class>/*` (classes in sorted order)."""
  files, labels = [], []
  train = os.path.join(root, "train")
  for k, c in enumerate(sorted(os.listdir(train))):
    for f in sorted(os.listdir(os.path.join(train, c))):
      files.append(os.path.join(train, c, f))
      labels.append(k)
  return TorchImages(files, labels, image_size)


def torch_iterator(root: str, *, batch_size: int, image_size: int, workers: int):
  import torch  # pylint: disable=g-import-not-at-top
  ds = torch_images(root, image_size)
  sampler = torch.utils.data.RandomSampler(ds, num_samples=1 << 30)
  loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, sampler=sampler,
                                       num_workers=workers, drop_last=True,
                                       persistent_workers=workers > 0, prefetch_factor=2)
  return iter(loader)


def grain_iterator(data_dir: str, name: str, *, batch_size: int, image_size: int,
                   workers: int, dtype: str = "uint8"):
  from mixjax.data import streaming  # pylint: disable=g-import-not-at-top
  split = streaming.open_split(name, data_dir=data_dir, split="train")
  stream = streaming.TrainStream(split, batch_size=batch_size, image_size=image_size,
                                 seed=0, num_workers=workers, dtype=dtype,
                                 reduce_jpeg=False, process_index=0, process_count=1)
  return stream.iterator(0)


def _cpu(procs) -> float:
  total = 0.0
  for p in procs:
    try:
      t = p.cpu_times()
      total += t.user + t.system
    except Exception:  # pylint: disable=broad-except  (a process that has ended)
      pass
  return total


def timed(make, *, warmup: int, batches: int) -> tuple[float, float]:
  """Starts a pipeline (`make()`), discards `warmup` batches (start-up, buffers
  filling), then times `batches` batches; stops it. Returns (images/s, images per
  CPU-second of this process and its child processes, the workers)."""
  it = make()
  for _ in range(warmup):
    next(it)
  me = psutil.Process()
  procs = [me] + me.children(recursive=True)
  c, t = _cpu(procs), time.perf_counter()
  n = 0
  for _ in range(batches):
    x, _ = next(it)
    n += x.shape[0]
  wall, cpu = time.perf_counter() - t, _cpu(procs) - c
  if hasattr(it, "close"):
    it.close()
  del it
  return n / wall, (n / cpu if cpu > 0 else float("nan"))


def breakdown(tfds_dir: str, src: str, *, batch_size: int, image_size: int,
              repeats: int) -> None:
  """Per image, in this process (no workers, one thread): the whole work of each side
  per batch (mixjax: `TrainStream.batch`; PyTorch: `TorchImages.__getitem__` of each
  row, then `default_collate`, as a DataLoader worker does) and the parts where
  they differ: reading a record (tfds `data_source[i]`: the array_record read, then
  tfds' deserialization of the example) against reading a file, and mixjax's keyed
  generator per example (`streaming.example_rng`). The parts run in a shuffled order
  in each of `repeats` rounds; medians, printed."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch.utils.data import default_collate as collate  # pylint: disable=g-import-not-at-top
  from mixjax.data import streaming  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(1)
  split = streaming.open_split("bench_images", data_dir=tfds_dir, split="train")
  stream = streaming.TrainStream(split, batch_size=batch_size, image_size=image_size,
                                 seed=0, dtype="uint8", reduce_jpeg=False,
                                 process_index=0, process_count=1)
  images = torch_images(src, image_size)
  files = images.files
  stream32 = streaming.TrainStream(split, batch_size=batch_size, image_size=image_size,
                                   seed=0, dtype="float32", reduce_jpeg=False,
                                   process_index=0, process_count=1)
  source = split.source()
  n = (len(files) // batch_size) * batch_size
  steps = n // batch_size
  stream.batch(0)
  images[0]  # pylint: disable=pointless-statement

  raw = [source.data_source[i] for i in range(n)]  # the records' bytes, read once

  def per_image(fn, count):
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) / count * 1e3

  parts = {
      "mixjax: whole work (TrainStream.batch)":
          lambda: per_image(lambda: [stream.batch(s) for s in range(steps)], n),
      "mixjax before 6 Dec.: normalized on the host (dtype float32)":
          lambda: per_image(lambda: [stream32.batch(s) for s in range(steps)], n),
      "PyTorch: whole work (__getitem__ + default_collate)":
          lambda: per_image(lambda: [collate([images[i] for i in range(
              s * batch_size, (s + 1) * batch_size)]) for s in range(steps)], n),
      "mixjax: read a record (array_record + tfds deserialize)":
          lambda: per_image(lambda: [source[i] for i in range(n)], n),
      "  of which tfds' deserialization":
          lambda: per_image(lambda: [source._deserialize(r) for r in raw], n),  # pylint: disable=protected-access
      "PyTorch: read a file":
          lambda: per_image(lambda: [open(f, "rb").read() for f in files[:n]], n),
      "mixjax: keyed generator per example (example_rng)":
          lambda: per_image(lambda: [streaming.example_rng(0, i) for i in range(n)], n),
  }
  times = {k: [] for k in parts}
  rng = np.random.default_rng(0)
  for _ in range(repeats):  # the parts in a fresh random order each repeat
    for k in rng.permutation(list(parts)):
      times[k].append(parts[k]())
  print(f"\nper image, one process, {n} images x {repeats} repeats (medians, ms):")
  for k, v in times.items():
    print(f"  {k:<58}{statistics.median(v):8.3f}")


def loadavg() -> str:
  try:
    return open("/proc/loadavg").read().split()[0]
  except OSError:
    return "?"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--images", type=int, default=1024)
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--image_size", type=int, default=224)
  parser.add_argument("--workers", default="1,2")
  parser.add_argument("--batches", type=int, default=6, help="timed batches per run")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--before", action="store_true",
                      help="also time mixjax's float32 stream (normalized in the "
                      "workers: the trainer's input before 6 December)")
  parser.add_argument("--breakdown", action="store_true",
                      help="also time each side's per-image parts in one process")
  args = parser.parse_args()
  if args.quick:
    args.images, args.batch_size, args.batches, args.repeats = 128, 32, 2, 1
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from mixjax.data import image_folder  # pylint: disable=g-import-not-at-top
  tfds.disable_progress_bar()

  with tempfile.TemporaryDirectory(prefix="bench_pipeline_") as tmp:
    src = write_jpegs(os.path.join(tmp, "jpegs"), args.images)
    sizes = [os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(src) for f in fs]
    image_folder.prepare(src, name="bench_images", data_dir=os.path.join(tmp, "tfds"))
    print(f"{args.images} JPEGs, 400-500 px, {np.mean(sizes) / 1e3:.0f} KB mean; "
          f"B = {args.batch_size}, {args.image_size}x{args.image_size}, {args.batches} "
          f"timed batches x {args.repeats} repeats; cores {os.cpu_count()}; load "
          f"{loadavg()}", flush=True)
    rows = []
    for workers in [int(w) for w in args.workers.split(",")]:
      makers = {
          "mixjax": lambda w=workers: grain_iterator(
              os.path.join(tmp, "tfds"), "bench_images", batch_size=args.batch_size,
              image_size=args.image_size, workers=w),
          "torch": lambda w=workers: torch_iterator(
              src, batch_size=args.batch_size, image_size=args.image_size, workers=w),
      }
      if args.before:
        makers["mixjax_f32"] = lambda w=workers: grain_iterator(
            os.path.join(tmp, "tfds"), "bench_images", batch_size=args.batch_size,
            image_size=args.image_size, workers=w, dtype="float32")
      rates = {k: [] for k in makers}
      for r in range(args.repeats):
        order = list(makers) if r % 2 == 0 else list(makers)[::-1]  # alternating
        for k in order:
          rates[k].append(timed(makers[k], warmup=2 * workers + 2, batches=args.batches))
      med = {k: statistics.median(v[0] for v in rates[k]) for k in rates}
      per_cpu = {k: statistics.median(v[1] for v in rates[k]) for k in rates}
      rows.append((workers, med, per_cpu))
      print(f"workers {workers}: mixjax {med['mixjax']:7.1f} img/s, PyTorch "
            f"{med['torch']:7.1f} img/s, ratio {med['mixjax'] / med['torch']:.2f} "
            f"(runs: mixjax {[round(v[0]) for v in rates['mixjax']]}, PyTorch "
            f"{[round(v[0]) for v in rates['torch']]}); per CPU-second: mixjax "
            f"{per_cpu['mixjax']:.1f}, PyTorch {per_cpu['torch']:.1f}; load {loadavg()}",
            flush=True)
      if args.before:
        print(f"  mixjax float32 (before): {med['mixjax_f32']:7.1f} img/s, "
              f"{per_cpu['mixjax_f32']:.1f} per CPU-second; uint8 / float32 = "
              f"{med['mixjax'] / med['mixjax_f32']:.2f}", flush=True)
    print("\n| workers | mixjax (Grain) img/s | PyTorch DataLoader img/s | ratio (target "
          ">= 1.0) | img per CPU-s, mixjax / PyTorch |")
    print("|---|---|---|---|---|")
    for workers, med, per_cpu in rows:
      print(f"| {workers} | {med['mixjax']:.0f} | {med['torch']:.0f} | "
            f"{med['mixjax'] / med['torch']:.2f} | {per_cpu['mixjax']:.0f} / "
            f"{per_cpu['torch']:.0f} = {per_cpu['mixjax'] / per_cpu['torch']:.2f} |")
    print(f"load average at the end: {loadavg()}")
    if args.breakdown:
      breakdown(os.path.join(tmp, "tfds"), src, batch_size=args.batch_size,
                image_size=args.image_size, repeats=args.repeats)


if __name__ == "__main__":
  main()
