r"""Streaming image input: encoded images read through `tfds.data_source`, decoded and
transformed on the host in Grain worker processes, batched, and put on the devices.

For image datasets too large to hold in memory (ImageNet, your own image folders,
`mixjax.data.image_folder`): nothing is read whole; each batch is read, decoded and
transformed when it is needed, a few batches ahead of the step.

  split = open_split("imagenet2012", data_dir=DIR, split="train")
  stream = TrainStream(split, batch_size=B, image_size=224, seed=s, num_workers=8)
  for x, y in stream.iterator(start_step=s0):     # this process's rows of each batch
    ...                                           # x (b, 224, 224, 3) float32, y (b,) int32

Order (a pure function of the seed and the step, as the on-device path's
`mixjax.data.batching`): with n examples, global batch B and S = n // B steps per epoch
(the remainder n mod B of every epoch is dropped), row r of step s is the example at

    e = s // S,  q = (s mod S)·B + r,   record(s, r) = idx[π_e(q)],

where π_e = `numpy.random.default_rng([seed, e]).permutation(n)` (`epoch_permutation`,
computed once per epoch in each worker: 8n bytes, 10 MB for ImageNet) and idx the
split's record indices (all of them, or a subset such as a training split with a
validation part held out). It is not the on-device path's `jax.random.permutation` (the
workers stay free of JAX computations); it has the same property: the batch of step s
depends on (seed, s) only. (Grain's `index_shuffle`, a Feistel permutation evaluated one
index at a time, was measured at 2.5 ms per index for n = 36 and 70 µs for n = 1000 on
this CPU: slower than the decoding for small datasets.)

Per-example randomness (the crop and the flip of row r of step s) comes from its own
generator, `numpy.random.Philox(key=seed·2⁶⁴ + s·B + r)`, so it depends on (seed, s, r)
only: not on the number of worker processes, their scheduling, or the number of
processes reading. A run restarted at step s therefore reads exactly the batches an
uninterrupted run reads from step s (the loader's state is the step, `TrainStream.state`).

Sharding over P processes (multi-host, `jax.distributed`): process p of P reads rows
[p·b, (p+1)·b) of every global batch, b = B/P; the P processes' rows of an epoch's S
steps are disjoint and together are the epoch's S·B examples. These are the rows that
process p's devices hold of a batch sharded over a mesh of `jax.devices()` (ordered by
process) on its first axis; `to_device` checks that and assembles the global array
(`jax.make_array_from_process_local_data`).

Transforms (torchvision's / timm's ImageNet recipe; PIL, bilinear with antialiasing):
  - training (`train_transform`): RandomResizedCrop to image_size (scale (0.08, 1), ratio
    (3/4, 4/3), torchvision's sampling: ten tries, then a centre crop; `crop_box`) and a
    horizontal flip with probability ½;
  - evaluation (`eval_transform`): the shorter side resized to image_size·256/224
    (integer division: 256 for 224), then the centre image_size × image_size crop.
  Training crops, then resizes the crop (as torchvision: the filter sees no pixel
  outside the crop); evaluation's resize-then-crop is one `PIL.Image.resize(...,
  box=...)` of the crop's box (the same pixels: the filter sees the neighbours there
  too, and only the kept pixels are computed). JPEGs whose crop is at
  least twice the output size on both sides are decoded at ½, ¼ or ⅛ scale in the DCT
  domain first (`PIL.Image.draft`, `reduce_jpeg=True`): the same crop, an approximately
  equal image (tests/test_streaming.py bounds the difference), and for a 1600×1200
  photo evaluated at 64 the transform took 6.6 ms instead of 29 ms here; at 224 it
  applies only to crops of at least 448 × 448, rare in ImageNet-sized images.
Outputs are normalized like `mixjax.data.dataset`'s in-memory images,
x = (x_uint8 · (1/255) − mean) / std per channel in float32, with the split's
`norm_mean` / `norm_std` (an image folder's: measured at preparation; ImageNet's:
the usual constants), or left uint8 (`dtype="uint8"`). Labels are int32 (the step
one-hot encodes them). The trainer streams uint8 and normalizes on the device
(`feeding.StreamFeeder`, `dequantize`: a lookup in `normalization_table`, the same
floats): normalizing on the host cost about 1 ms per 224 × 224 image in the workers,
half again the decode and crop, and float32 batches are four times the shared memory.

Evaluation (`EvalStream`) reads a split once in record order, in global batches of B
padded at the end (`mask` = 0 on padding), sharded over processes like training; the
trainer's evaluations stream uint8 too, normalized on the device by the evaluation
program (`EvalStream.decode`, `mixjax.eval.Predictor.batches`).

Workers: one Grain element is one batch (`grain.MapDataset.range(steps).map(...)`):
Grain's `mp_prefetch` runs the pipeline in `num_workers` spawned processes (worker w
the batches w, w + W, ...), read back in order; each worker writes the images straight
into a batch buffer in shared memory that it reuses batch after batch (`_Slots`), and
the main process reads the batch there (no copy). `num_workers=0` runs it in this process.
Decoding releases the GIL, so `num_threads` threads per process also help.
"""
from __future__ import annotations

import copy
import ctypes
import dataclasses
import functools
import io
import math
import mmap
from multiprocessing import shared_memory
import os
import threading
import time
from typing import Any, Iterator, Sequence
import weakref

import numpy as np

# ImageNet's per-channel mean and standard deviation (RGB, on [0, 1]).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Normalization constants of datasets that record none (name -> (mean, std)).
KNOWN_NORMALIZATION = {"imagenet2012": (IMAGENET_MEAN, IMAGENET_STD)}
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
EVAL_RESIZE = (256, 224)  # resize the shorter side to image_size·256 // 224


# ------------------------------------------------------------------------ the data


@dataclasses.dataclass(frozen=True)
class EncodedSplit:
  """A split of a prepared tfds image dataset whose images are read encoded.

  Attributes:
    name, data_dir, split: where `tfds.data_source` reads it.
    num_records: the records in the tfds split.
    indices: the records of this split, int64 (n,) sorted (e.g. a training split with a
      validation part held out), or None for all of them.
    num_classes, class_names: from the `label` feature (`ClassLabel`).
    norm_mean, norm_std: per-channel normalization on [0, 1] (RGB).
  """
  name: str
  data_dir: str | None
  split: str
  num_records: int
  num_classes: int
  class_names: tuple[str, ...]
  norm_mean: tuple[float, float, float]
  norm_std: tuple[float, float, float]
  indices: np.ndarray | None = None
  image_key: str = "image"
  label_key: str = "label"

  @property
  def num_examples(self) -> int:
    return self.num_records if self.indices is None else int(self.indices.shape[0])

  def record(self, i: int) -> int:
    return int(i) if self.indices is None else int(self.indices[i])

  def subset(self, indices: np.ndarray) -> "EncodedSplit":
    """The examples `indices` (positions in this split) as a split of their own."""
    indices = np.asarray(indices, np.int64)
    base = np.arange(self.num_records) if self.indices is None else self.indices
    return dataclasses.replace(self, indices=base[indices])

  def source(self):
    """The tfds data source (random access; images as encoded bytes)."""
    return _data_source(self.name, self.data_dir, self.split, self.image_key)

  def fingerprint(self) -> dict[str, Any]:
    """What must not change under a resumed stream (`TrainStream.state`)."""
    return {"dataset": self.name, "split": self.split, "num_examples": self.num_examples,
            "num_records": self.num_records}


@functools.lru_cache(maxsize=16)
def _data_source(name: str, data_dir: str | None, split: str, image_key: str):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tfds.data_source(name, split=split, data_dir=data_dir, download=False,
                          try_gcs=False, decoders={image_key: tfds.decode.SkipDecoding()})


def normalization(name: str, builder) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """(mean, std) per channel on [0, 1]: the dataset's recorded ones
  (`mixjax.data.image_folder` writes `norm_mean`/`norm_std` into its metadata), else
  `KNOWN_NORMALIZATION[name]`."""
  meta = getattr(builder.info, "metadata", None) or {}
  if "norm_mean" in meta and "norm_std" in meta:
    return tuple(map(float, meta["norm_mean"])), tuple(map(float, meta["norm_std"]))
  if name in KNOWN_NORMALIZATION:
    return KNOWN_NORMALIZATION[name]
  raise ValueError(
      f"Dataset {name!r} records no normalization (norm_mean/norm_std in its metadata) "
      f"and has no known constants ({', '.join(sorted(KNOWN_NORMALIZATION))}); prepare "
      "your images with python -m mixjax.data.prepare --dataset=image_folder.")


def open_split(name: str, *, data_dir: str | None, split: str, builder=None,
               label_key: str = "label", norm=None) -> EncodedSplit:
  """The split `split` of the prepared tfds dataset `name` (checked as
  `tfds_data.check_prepared` does: local metadata only, the preparation command when
  it is missing), normalized by `norm` = (mean, std) when given (a shifted copy of
  another dataset's test split takes that dataset's), else by `normalization`."""
  from mixjax.data import tfds_data  # pylint: disable=g-import-not-at-top
  builder = builder or tfds_data.check_prepared(name, data_dir)
  splits = builder.info.splits
  if split not in splits:
    raise ValueError(f"Dataset {name!r} has no split {split!r}; it has "
                     f"{', '.join(sorted(splits))}.")
  label = builder.info.features[label_key]
  mean, std = norm if norm is not None else normalization(name, builder)
  return EncodedSplit(name=name, data_dir=data_dir, split=split,
                      num_records=int(splits[split].num_examples),
                      num_classes=int(label.num_classes),
                      class_names=tuple(label.names), norm_mean=tuple(mean),
                      norm_std=tuple(std), label_key=label_key)


@dataclasses.dataclass(frozen=True)
class StreamedDataset:
  """A dataset read by streaming (the in-memory `Dataset`'s counterpart): its splits as
  `EncodedSplit`s and what the model needs to know.

  Attributes:
    name: the tfds name.
    train, val, test: the splits (`val` None when there is none to fit temperature on).
    image_size: S; examples are (S, S, 3).
    num_classes, class_names: from the `label` feature.
    norm_mean, norm_std: per-channel normalization (`normalization`).
    num_workers: Grain worker processes of its evaluation streams (`eval_batches`).

  What the evaluation reads of a dataset (`mixjax.eval.evaluate`): `has_val`,
  `eval_batches(split, batch_size)` (the split streamed once in padded batches) and the
  labels `test_y` / `val_y` (read from the records, images not decoded).
  """
  name: str
  train: EncodedSplit
  val: EncodedSplit | None
  test: EncodedSplit
  image_size: int
  num_classes: int
  class_names: tuple[str, ...]
  norm_mean: tuple[float, ...]
  norm_std: tuple[float, ...]
  num_workers: int = 0

  @property
  def extras(self) -> dict[str, Any]:
    return {}

  @property
  def has_val(self) -> bool:
    return self.val is not None and self.val.num_examples > 0

  def eval_batches(self, split: str, batch_size: int) -> "EvalStream":
    """The split ("test" or "val") read once in record order, in (x, y, mask) batches of
    `batch_size` rows, the last one padded (`EvalSet.eval_batches`)."""
    return EvalSet(getattr(self, split), self.image_size,
                   self.num_workers).eval_batches(batch_size)

  @functools.cached_property
  def test_y(self) -> np.ndarray:
    """The test split's labels (n_test,) int32, in record order."""
    return labels(self.test)

  @functools.cached_property
  def val_y(self) -> np.ndarray:
    """The validation split's labels (n_val,) int32 (empty without one)."""
    return labels(self.val) if self.val is not None else np.zeros((0,), np.int32)

  @property
  def input_shape(self) -> tuple[int, int, int]:
    return (self.image_size, self.image_size, 3)

  @property
  def is_image(self) -> bool:
    return True

  @property
  def num_train(self) -> int:
    return self.train.num_examples

  def summary(self) -> str:
    val = self.val.num_examples if self.val is not None else 0
    return (f"{self.name} (streamed, {self.image_size}x{self.image_size}): train "
            f"{self.num_train}, val {val}, test {self.test.num_examples}, "
            f"{self.num_classes} classes")


@dataclasses.dataclass(frozen=True)
class EvalSet:
  """A split evaluated by streaming: a `StreamedDataset`'s test or validation split, or
  a shifted test set read alone (ImageNet-C's configs, ImageNetV2:
  `mixjax.data.shift.shift_test_sets`, `mixjax.eval.evaluate_shift`)."""
  split: EncodedSplit
  image_size: int
  num_workers: int = 0

  def eval_batches(self, batch_size: int) -> "EvalStream":
    """The split read once in record order, in (x, y, mask) batches of `batch_size`
    rows, the last one padded; every process reads all of it (the evaluation is
    computed by every process, `mixjax.eval.Predictor`). x is uint8, normalized on the
    device by the evaluation program (`EvalStream.decode`)."""
    return EvalStream(self.split, batch_size=batch_size, image_size=self.image_size,
                      num_workers=self.num_workers, process_index=0, process_count=1,
                      dtype="uint8")


def labels(split: EncodedSplit) -> np.ndarray:
  """The labels (n,) int32 of a split's examples in order (the images are not decoded)."""
  source = split.source()
  return np.asarray([source[split.record(i)][split.label_key]
                     for i in range(split.num_examples)], np.int32)


TEST_SPLITS = ("test", "validation", "val")  # the first present is the test split
VAL_SPLITS = ("val", "validation")


def load_streamed(name: str, *, data_dir: str | None, image_size: int,
                  val_fraction: float = 0.1, seed: int = 0, num_train: int = 0,
                  num_classes: int | None = None) -> StreamedDataset:
  """The splits of a prepared tfds image dataset, for streaming.

  test: the first of `TEST_SPLITS` the dataset has (ImageNet: `validation`, whose
  labels are public, as in the published results). val: a split of `VAL_SPLITS` other
  than the test split when there is one; otherwise `round(val_fraction·n)` training
  examples held out exactly as `dataset.split_validation` holds them out of an
  in-memory training split (the first ones of `default_rng(seed).permutation(n)`),
  None when val_fraction = 0. num_train > 0 keeps the first num_train training examples.

  Raises:
    FileNotFoundError (from `tfds_data.check_prepared`) when it is not prepared;
    ValueError without a train split or test split, or when `num_classes` is given and
    differs from the dataset's.
  """
  from mixjax.data import dataset as ds_lib  # pylint: disable=g-import-not-at-top
  from mixjax.data import tfds_data  # pylint: disable=g-import-not-at-top
  builder = tfds_data.check_prepared(name, data_dir)
  have = set(builder.info.splits)
  test_name = next((s for s in TEST_SPLITS if s in have), None)
  if "train" not in have or test_name is None:
    raise ValueError(f"Dataset {name!r} has splits {', '.join(sorted(have))}; streaming "
                     f"needs train and one of {', '.join(TEST_SPLITS)}.")
  open_ = lambda s: open_split(name, data_dir=data_dir, split=s, builder=builder)
  train, test = open_("train"), open_(test_name)
  if num_classes is not None and int(num_classes) != train.num_classes:
    raise ValueError(f"num_classes={num_classes} but dataset {name!r} has "
                     f"{train.num_classes} classes ({', '.join(train.class_names[:5])}"
                     f"{', ...' if train.num_classes > 5 else ''}); drop the setting or "
                     "make it agree with the class folders.")
  val_name = next((s for s in VAL_SPLITS if s in have and s != test_name), None)
  if val_name is not None:
    val = open_(val_name)
  elif val_fraction > 0:
    n = train.num_examples
    keep, _, held, _ = ds_lib.split_validation(np.arange(n), np.arange(n),
                                               val_fraction, seed)
    train, val = train.subset(keep), train.subset(held)
  else:
    val = None
  if num_train and num_train < train.num_examples:
    train = train.subset(np.arange(num_train))
  return StreamedDataset(name=name, train=train, val=val, test=test,
                         image_size=int(image_size), num_classes=train.num_classes,
                         class_names=train.class_names, norm_mean=train.norm_mean,
                         norm_std=train.norm_std)


def is_variable_size(name: str, data_dir: str | None) -> bool:
  """Whether the prepared tfds dataset's images have no fixed size (image folders,
  ImageNet): such datasets cannot be held as one array and are streamed."""
  from mixjax.data import tfds_data  # pylint: disable=g-import-not-at-top
  feature = tfds_data.check_prepared(name, data_dir).info.features["image"]
  return any(d is None for d in feature.shape[:2])


# ------------------------------------------------------------------ the transforms


def crop_box(rng: np.random.Generator, width: int, height: int, *,
             scale: tuple[float, float] = CROP_SCALE,
             ratio: tuple[float, float] = CROP_RATIO) -> tuple[int, int, int, int]:
  """torchvision's `RandomResizedCrop.get_params`: (top, left, h, w) of a crop of
  `width` × `height`.

  Up to ten tries draw an area fraction a ~ U(scale) and a log aspect ratio
  log ρ ~ U(log ratio), w = round(√(a·W·H·ρ)), h = round(√(a·W·H/ρ)); the first that
  fits (0 < w ≤ W, 0 < h ≤ H) is placed uniformly (top ~ U{0..H−h}, left ~ U{0..W−w}).
  If none fits: the largest centred crop with ρ clamped to `ratio`.
  """
  area = width * height
  log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
  for _ in range(10):
    target = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(log_lo, log_hi))
    w = int(round(math.sqrt(target * aspect)))
    h = int(round(math.sqrt(target / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return top, left, h, w
  in_ratio = width / height
  if in_ratio < min(ratio):
    w, h = width, int(round(width / min(ratio)))
  elif in_ratio > max(ratio):
    h, w = height, int(round(height * max(ratio)))
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


def _open(data: bytes):
  import PIL.Image  # pylint: disable=g-import-not-at-top
  return PIL.Image.open(io.BytesIO(data))


def _draft(im, crop_w: float, crop_h: float, out: int) -> float:
  """For a JPEG whose crop (crop_w × crop_h, full-size pixels) is at least 2·out on both
  sides, decode at 1/k scale (k ∈ {2, 4, 8}, the largest keeping the crop ≥ out):
  returns the scale factor the image's coordinates were divided by (1 when not)."""
  if im.format != "JPEG":
    return 1.0
  k = 1
  while k < 8 and min(crop_w, crop_h) / (2 * k) >= out:
    k *= 2
  if k == 1:
    return 1.0
  full = im.size
  im.draft("RGB", (math.ceil(full[0] / k), math.ceil(full[1] / k)))
  return full[0] / im.size[0]


def _rgb(im):
  return im if im.mode == "RGB" else im.convert("RGB")


def train_transform(data: bytes, rng: np.random.Generator, image_size: int, *,
                    reduce_jpeg: bool = True) -> np.ndarray:
  """RandomResizedCrop(image_size) + horizontal flip (p = ½) of an encoded image:
  uint8 (image_size, image_size, 3). The draws, in order: the crop (`crop_box`), then
  the flip (rng.random() < ½)."""
  import PIL.Image  # pylint: disable=g-import-not-at-top
  with _open(data) as im:
    width, height = im.size
    top, left, h, w = crop_box(rng, width, height)
    flip = rng.random() < 0.5
    f = _draft(im, w, h, image_size) if reduce_jpeg else 1.0
    box = tuple(int(round(v / f)) for v in (left, top, left + w, top + h))
    out = _rgb(im).crop(box).resize((image_size, image_size), PIL.Image.BILINEAR)
  if flip:
    out = out.transpose(PIL.Image.FLIP_LEFT_RIGHT)
  return np.asarray(out, np.uint8)


def eval_size(image_size: int) -> int:
  """The shorter side before the centre crop: image_size·256 // 224."""
  return image_size * EVAL_RESIZE[0] // EVAL_RESIZE[1]


def eval_transform(data: bytes, image_size: int, *, reduce_jpeg: bool = True
                   ) -> np.ndarray:
  """Resize (shorter side to `eval_size(image_size)`, torchvision's `Resize(int)`) then
  centre crop image_size (torchvision's `CenterCrop`), as one resize of the matching
  box: uint8 (image_size, image_size, 3)."""
  import PIL.Image  # pylint: disable=g-import-not-at-top
  r = eval_size(image_size)
  with _open(data) as im:
    width, height = im.size
    if width <= height:
      new_w, new_h = r, int(r * height / width)
    else:
      new_w, new_h = int(r * width / height), r
    top = int(round((new_h - image_size) / 2.0))
    left = int(round((new_w - image_size) / 2.0))
    sx, sy = width / new_w, height / new_h
    box = [left * sx, top * sy, (left + image_size) * sx, (top + image_size) * sy]
    f = _draft(im, box[2] - box[0], box[3] - box[1], image_size) if reduce_jpeg else 1.0
    out = _rgb(im).resize((image_size, image_size), PIL.Image.BILINEAR,
                          box=tuple(v / f for v in box))
  return np.asarray(out, np.uint8)


def normalization_table(mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
  """`normalize` of every uint8 value in every channel: float32 (256, C), row v =
  normalize(v). Indexing it (`dequantize`) normalizes a uint8 image to the same floats
  as `normalize`, bit for bit, wherever it runs (an XLA program computing the formula
  may contract it into a fused multiply-add and round differently)."""
  values = np.repeat(np.arange(256, dtype=np.uint8)[:, None], len(mean), axis=1)
  return normalize(values, mean, std)


def dequantize(x, table):
  """uint8 images (..., C) -> float32 `table[x[..., c], c]` (`normalization_table`):
  the normalized images, computed where x lives (jnp: on device under `jax.jit`)."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  return jnp.asarray(table)[x.astype(jnp.int32), jnp.arange(x.shape[-1])]


def normalize(images: np.ndarray, mean: Sequence[float], std: Sequence[float]
              ) -> np.ndarray:
  """float32 (x · (1/255) − mean) · (1/std): `mixjax.data.dataset.normalize`'s formula
  (raw_scale = 1/255), the same floats for the same pixels."""
  mean = np.asarray(mean, np.float32)
  inv = (1.0 / np.asarray(std, np.float64)).astype(np.float32)
  return (images.astype(np.float32) * np.float32(1.0 / 255.0) - mean) * inv


# ---------------------------------------------------------------- order and seeds


@functools.lru_cache(maxsize=2)
def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  """π_e: epoch e's permutation of 0..n−1, int64 (n,):
  `numpy.random.default_rng([seed, e]).permutation(n)` (cached: the last two epochs)."""
  perm = np.random.default_rng([int(seed), int(epoch)]).permutation(int(n))
  perm.setflags(write=False)
  return perm


def example_rng(seed: int, slot: int) -> np.random.Generator:
  """The generator of global slot s·B + r (row r of step s): Philox keyed by
  seed·2⁶⁴ + slot."""
  return np.random.Generator(np.random.Philox(key=(int(seed) << 64) | int(slot)))


def _process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} outside [0, {process_count}).")
  return int(process_index), int(process_count)


def _local_batch(batch_size: int, process_count: int) -> int:
  if batch_size % process_count:
    raise ValueError(f"batch_size={batch_size} is not divisible by the {process_count} "
                     "processes; each reads batch_size / processes rows of every batch.")
  return batch_size // process_count


# ------------------------------------------------------------ Grain map functions
# (module-level classes: they are pickled to the worker processes). One Grain element is
# one batch: the images are written straight into the batch array, which a worker
# takes from the iteration's shared-memory slots (`_Slots`).


@dataclasses.dataclass(frozen=True)
class _SlotRef:
  """What a worker sends instead of a batch array: the slot holding it."""
  slot: int


# (w, W): this process is Grain worker w of W (`_set_worker`, in each worker); None in
# a process that is not a worker.
_WORKER: tuple[int, int] | None = None


def _set_worker(index: int, count: int) -> None:
  """Grain's `worker_init_fn`: records (w, W) and starts a daemon thread that ends the
  worker once the process that started it is gone. (A killed main process's Grain
  workers would otherwise live on, and while they do, Python's resource tracker, whose
  pipe they hold, does not unlink the shared memory.)"""
  global _WORKER
  _WORKER = (int(index), int(count))
  parent = os.getppid()

  def watch():
    while os.getppid() == parent:
      time.sleep(0.5)
    os._exit(0)  # pylint: disable=protected-access

  threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


class _Slots:
  """Shared-memory batch buffers ("slots") that the worker processes of one iteration of
  a pipeline reuse, batch after batch, in place of Grain's new shared-memory segment
  per batch (`SharedMemoryArray`): a fresh segment's pages cost about 0.17 ms per
  224 × 224 × 3 image to fault in, written in the worker and read in the main process
  (about 9% of decoding and cropping the image, `benchmarks/bench_pipeline.py`), while a
  reused slot's pages are in place.

  Protocol. The `count` slots lie in one shared segment, each behind a flag byte
  (0 free, 1 held). Worker w of W (`_set_worker`, Grain's `worker_init_fn`) uses the
  slots w, w + W, w + 2W, ... only, so each slot has one writer process. For a batch it
  claims the first free one (0 → 1, under a lock among its threads), writes the images
  into it and sends `_SlotRef(slot)`. The main process turns that into an array over
  the slot's memory (`take`, no copy) and frees the slot (1 → 0) when the last
  reference to that array (or a view of it) is gone. A worker that finds all its
  slots held writes a private array instead, which Grain sends as before, so nothing
  waits for a slot. Slots are used lowest first and a page is allocated when first
  written, so the memory used is that of the batches actually held; `count` is only
  the bound. `taken` counts the batches that came through a slot.

  The main process creates the segment and unlinks it when this object is collected
  (the iteration and every batch it gave are) or at exit; if the process is killed,
  Python's resource tracker, which the spawned workers share with it, unlinks it.
  """

  def __init__(self, count: int, shape: tuple[int, ...], dtype):
    self._setup(int(count), tuple(shape), np.dtype(dtype), None)
    shm = shared_memory.SharedMemory(create=True, size=self._offset(self.count))
    self.name, self._mem = shm.name, _mapped(shm)
    self._flags = np.ndarray((self.count,), np.uint8, buffer=self._mem)
    self._flags[:] = 0
    # the object an array given by `take` is over (a ctypes array over the slot): one
    # that can be weakly referenced, so that its collection frees the slot
    n = math.prod(self.shape) * self.dtype.itemsize
    self._lease = type("Lease", (ctypes.c_ubyte * n,), {})
    weakref.finalize(self, _unlink, shm)

  def _setup(self, count, shape, dtype, name):
    self.count, self.shape, self.dtype, self.name = count, shape, dtype, name
    page = mmap.PAGESIZE
    self._bytes = -(-math.prod(shape) * dtype.itemsize // page) * page
    self._head = -(-count // page) * page  # the flags, then the page-aligned slots
    self._lock, self.taken = None, 0

  def _offset(self, slot: int) -> int:
    return self._head + slot * self._bytes

  def __getstate__(self):
    return {"count": self.count, "shape": self.shape, "dtype": self.dtype.str,
            "name": self.name}

  def __setstate__(self, state):  # in a worker
    self._setup(state["count"], tuple(state["shape"]), np.dtype(state["dtype"]),
                state["name"])
    self._mem = _mapped(shared_memory.SharedMemory(self.name))
    self._flags = np.ndarray((self.count,), np.uint8, buffer=self._mem)
    self._lock = threading.Lock()

  def _view(self, slot: int) -> np.ndarray:
    return np.ndarray(self.shape, self.dtype, buffer=self._mem, offset=self._offset(slot))

  def claim(self) -> tuple[np.ndarray, _SlotRef] | None:
    """In a worker (its unpickled copy): (the buffer of its first free slot, its
    reference), or None when all its slots are held (or this is not a Grain worker)."""
    if _WORKER is None or self._lock is None:
      return None
    w, num = _WORKER
    with self._lock:
      for slot in range(w, self.count, num):
        if not self._flags[slot]:
          self._flags[slot] = 1
          return self._view(slot), _SlotRef(slot)
    return None

  def take(self, element):
    """In the main process: `element` with each `_SlotRef` replaced by an array over its
    slot, which is freed when that array is no longer referenced."""

    def one(a):
      if not isinstance(a, _SlotRef):
        return a
      lease = self._lease.from_buffer(self._mem, self._offset(a.slot))
      x = np.frombuffer(lease, self.dtype).reshape(self.shape)
      weakref.finalize(lease, self._free, a.slot)
      self.taken += 1
      return x

    return tuple(one(a) for a in element)

  def _free(self, slot: int) -> None:
    self._flags[slot] = 0


def _mapped(shm) -> mmap.mmap:
  """A mapping of `shm`'s segment of its own, `shm`'s closed: the arrays over the
  mapping keep it alive, and it is unmapped when the last of them goes (a
  `SharedMemory` refuses to close while arrays over its buffer live)."""
  mem = mmap.mmap(shm._fd, shm.size)  # pylint: disable=protected-access
  shm.close()
  return mem


def _unlink(shm) -> None:
  try:
    shm.unlink()  # the name: the memory is freed when the last mapping goes
  except FileNotFoundError:
    pass


class _Batches:
  """Common parts: the split, the batch geometry, the output buffers."""

  def __init__(self, split: EncodedSplit, *, batch_size: int, local_batch: int,
               process_index: int, image_size: int, dtype: str, reduce_jpeg: bool):
    self.split, self.B, self.b, self.p = split, batch_size, local_batch, process_index
    self.size, self.dtype, self.reduce = image_size, dtype, reduce_jpeg
    self.slots: _Slots | None = None  # set by `_pipeline` for worker processes
    self.n = split.num_examples

  def shape(self) -> tuple[int, int, int, int]:
    return (self.b, self.size, self.size, 3)

  def _buffers(self):
    """(x to write, what to send for x, y)."""
    claimed = self.slots.claim() if self.slots is not None else None
    if claimed is None:
      x = np.empty(self.shape(), np.dtype(self.dtype))
      claimed = x, x
    return (*claimed, np.empty((self.b,), np.int32))

  def _put(self, x: np.ndarray, j: int, image: np.ndarray) -> None:
    if self.dtype == "float32":
      x[j] = normalize(image, self.split.norm_mean, self.split.norm_std)
    else:
      x[j] = image


class _TrainBatch(_Batches):
  """Local step s -> this process's rows (x, y) of global batch s."""

  def __init__(self, split: EncodedSplit, *, seed: int, **kw):
    super().__init__(split, **kw)
    self.seed = seed
    self.spe = self.n // self.B

  def record(self, s: int, r: int) -> int:
    """The record of row r of global batch s."""
    e, k = divmod(int(s), self.spe)
    return self.split.record(epoch_permutation(self.seed, e, self.n)[k * self.B + r])

  def __call__(self, s: int):
    s = int(s)
    source = self.split.source()
    x, out, y = self._buffers()
    for j in range(self.b):
      r = self.p * self.b + j
      example = source[self.record(s, r)]
      image = train_transform(example[self.split.image_key],
                              example_rng(self.seed, s * self.B + r), self.size,
                              reduce_jpeg=self.reduce)
      self._put(x, j, image)
      y[j] = example[self.split.label_key]
    return out, y


class _EvalBatch(_Batches):
  """Batch t -> this process's rows (x, y, mask) of global rows [t·B, (t+1)·B) (zeros
  and mask False past the end of the split)."""

  def __call__(self, t: int):
    source = self.split.source()
    x, out, y = self._buffers()
    mask = np.zeros((self.b,), bool)
    for j in range(self.b):
      g = int(t) * self.B + self.p * self.b + j
      if g >= self.n:
        x[j], y[j] = 0, 0
        continue
      example = source[self.split.record(g)]
      self._put(x, j, eval_transform(example[self.split.image_key], self.size,
                                     reduce_jpeg=self.reduce))
      y[j], mask[j] = example[self.split.label_key], True
    return out, y, mask


def _decode(fn: _Batches):
  """How a consumer turns a stream's x into the normalized floats on its device: (f, aux)
  with f(x, aux) = `dequantize(x, normalization_table(...))` for a uint8 stream, None
  for a float32 one (already normalized)."""
  if fn.dtype != "uint8":
    return None
  return dequantize, normalization_table(fn.split.norm_mean, fn.split.norm_std)


def _pipeline(fn: _Batches, start: int, stop: int, *, num_workers: int,
              num_threads: int, worker_buffer: int):
  """Grain: the batches fn(start), ..., fn(stop − 1), in `num_workers` processes (each of
  its `num_threads` threads a batch ahead), through `_Slots` made for each iteration."""
  import grain  # pylint: disable=g-import-not-at-top

  def build():
    f = copy.copy(fn)
    slots = None
    if num_workers > 0:
      # a bound (unused slots cost no memory): per worker, what it holds unread (its
      # buffer, a batch per thread, the one it writes) and 8 the consumer holds
      # (`to_device` puts 4 ahead)
      count = num_workers * (worker_buffer + max(num_threads, 1) + 1 + 8)
      slots = f.slots = _Slots(count, fn.shape(), fn.dtype)
    ds = grain.MapDataset.range(start, stop).map(f)
    ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                              prefetch_buffer_size=num_threads))
    if slots is None:
      return ds, None
    from absl import flags  # pylint: disable=g-import-not-at-top
    if not flags.FLAGS.is_parsed():  # Grain's workers read its absl flags (defaults)
      flags.FLAGS.mark_as_parsed()
    # labels and masks are pickled, not sent through a shared-memory segment each
    ds = grain.experimental.WithOptionsIterDataset(
        ds, grain.experimental.DatasetOptions(min_shm_size=1 << 16))
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=num_workers, per_worker_buffer_size=worker_buffer),
        worker_init_fn=_set_worker)
    return ds.map(slots.take), slots

  return _each_iteration()(build)


@functools.cache
def _each_iteration():
  """A Grain `IterDataset` class whose pipeline is built anew for each iteration (a
  class made on first use: Grain is imported only by the streaming path)."""
  import grain  # pylint: disable=g-import-not-at-top

  class EachIteration(grain.IterDataset):
    """`slots`: the last iteration's `_Slots` (None without worker processes)."""

    def __init__(self, build):
      super().__init__([])
      self._build, self.slots = build, None

    def __iter__(self):
      ds, self.slots = self._build()
      return iter(ds)

  return EachIteration


# ------------------------------------------------------------------ the streams


class TrainStream:
  """This process's rows of the training batches of steps 0, 1, 2, ... (module
  docstring: order, seeds, sharding).

  Args:
    split: the training split (`open_split`, optionally `.subset(...)`).
    batch_size: B, the global batch (all processes together).
    image_size: the side of the square crops.
    seed: a non-negative integer < 2⁶⁴: the order and every crop and flip.
    num_workers: Grain worker processes (0: decode in this process).
    num_threads: decoding threads per process (0 or 1: one at a time).
    process_index, process_count: this process and the number reading (default: JAX's).
    dtype: "float32" (normalized) or "uint8" (as decoded).
    reduce_jpeg: decode large JPEGs at reduced scale when the crop allows (module
      docstring).
    worker_buffer: batches each worker prepares ahead.
  """

  def __init__(self, split: EncodedSplit, *, batch_size: int, image_size: int, seed: int,
               num_workers: int = 0, num_threads: int = 0,
               process_index: int | None = None, process_count: int | None = None,
               dtype: str = "float32", reduce_jpeg: bool = True, worker_buffer: int = 2):
    from mixjax.data import batching  # pylint: disable=g-import-not-at-top
    if dtype not in ("float32", "uint8"):
      raise ValueError(f"dtype must be 'float32' or 'uint8', got {dtype!r}.")
    if not 0 <= int(seed) < 2 ** 64:
      raise ValueError(f"seed must be in [0, 2**64), got {seed}.")
    self.split, self.batch_size, self.image_size = split, int(batch_size), int(image_size)
    self.seed = int(seed)
    self.process_index, self.process_count = _process(process_index, process_count)
    self.local_batch = _local_batch(self.batch_size, self.process_count)
    self.steps_per_epoch = batching.steps_per_epoch(split.num_examples, self.batch_size)
    self.num_workers, self.num_threads = int(num_workers), int(num_threads)
    self.worker_buffer = int(worker_buffer)
    self.dtype = dtype
    self._fn = _TrainBatch(split, seed=self.seed, batch_size=self.batch_size,
                           local_batch=self.local_batch, process_index=self.process_index,
                           image_size=self.image_size, dtype=dtype,
                           reduce_jpeg=reduce_jpeg)

  @property
  def decode(self):
    """`_decode` of this stream (`feeding.StreamFeeder` applies it)."""
    return _decode(self._fn)

  def records(self, step: int) -> np.ndarray:
    """The record indices (B,) int64 of global batch `step` (all processes' rows)."""
    return np.asarray([self._fn.record(int(step), r) for r in range(self.batch_size)],
                      np.int64)

  def local_records(self, step: int) -> np.ndarray:
    """This process's rows of `records(step)`: (b,) int64."""
    lo = self.process_index * self.local_batch
    return np.asarray([self._fn.record(int(step), lo + j) for j in range(self.local_batch)],
                      np.int64)

  def batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
    """This process's rows of batch `step`, decoded here (no workers): (x, y)."""
    return self._fn(step)

  def dataset(self, start_step: int = 0, num_steps: int | None = None):
    """The batches of steps start_step, start_step + 1, ... (`num_steps` of them, or
    until step 2⁴⁰) as a Grain `IterDataset` of (x (b, S, S, 3), y (b,) int32)."""
    stop = start_step + num_steps if num_steps is not None else 1 << 40
    return _pipeline(self._fn, start_step, stop, num_workers=self.num_workers,
                     num_threads=self.num_threads, worker_buffer=self.worker_buffer)

  def iterator(self, start_step: int = 0, num_steps: int | None = None):
    """`iter(dataset(start_step, num_steps))`; `close()` it to stop its workers."""
    return iter(self.dataset(start_step, num_steps))

  def state(self, step: int) -> dict[str, Any]:
    """The loader's position after `step` steps: the step and what fixes the order (a
    resumed stream checks it with `check_state`)."""
    return {"step": int(step), "seed": self.seed, "batch_size": self.batch_size,
            "image_size": self.image_size, **self.split.fingerprint()}

  def check_state(self, state: dict[str, Any]) -> int:
    """The step to resume from; ValueError when `state` was written by a stream with
    another order (dataset, split size, seed or batch size)."""
    expected = self.state(int(state.get("step", 0)))
    diff = sorted(k for k in expected if k != "step" and state.get(k) != expected[k])
    if diff:
      raise ValueError("The checkpointed input position belongs to another stream ("
                       + ", ".join(f"{k}: {state.get(k)!r} then, {expected[k]!r} now"
                                   for k in diff) + ").")
    return int(state["step"])


class EvalStream:
  """A split read once in record order: (x, y, mask) batches of this process's rows of
  global batches of B (module docstring); the last one padded (`mask` False)."""

  def __init__(self, split: EncodedSplit, *, batch_size: int, image_size: int,
               num_workers: int = 0, num_threads: int = 0,
               process_index: int | None = None, process_count: int | None = None,
               dtype: str = "float32", reduce_jpeg: bool = True, worker_buffer: int = 2):
    self.split, self.batch_size, self.image_size = split, int(batch_size), int(image_size)
    self.process_index, self.process_count = _process(process_index, process_count)
    self.local_batch = _local_batch(self.batch_size, self.process_count)
    self.num_batches = -(-split.num_examples // self.batch_size)
    self.num_workers, self.num_threads = int(num_workers), int(num_threads)
    self.worker_buffer = int(worker_buffer)
    self._fn = _EvalBatch(split, batch_size=self.batch_size, local_batch=self.local_batch,
                          process_index=self.process_index, image_size=self.image_size,
                          dtype=dtype, reduce_jpeg=reduce_jpeg)

  @property
  def decode(self):
    """`_decode` of this stream (`mixjax.eval.Predictor.batches` takes it)."""
    return _decode(self._fn)

  def dataset(self):
    """The batches as a Grain `IterDataset` of (x, y, mask)."""
    return _pipeline(self._fn, 0, self.num_batches, num_workers=self.num_workers,
                     num_threads=self.num_threads, worker_buffer=self.worker_buffer)

  def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    return iter(self.dataset())


def input_sums(stream: TrainStream, num_steps: int, *, start_step: int = 0
               ) -> tuple[np.ndarray, np.ndarray, int]:
  """Sums over this process's rows of the training batches of steps start_step …
  start_step + num_steps − 1: (Σ x float64 (S, S, 3), Σ onehot(y) float64 (c,), rows).

  Added over processes and divided by the rows, they are x̄ and ȳ of the inputs as the
  model trains on them (cropped, flipped, normalized like the stream's output): what
  test-time rescaling needs (`mixjax.theory.rescaled`: x̄ + θ̄(x − x̄) in,
  ȳ + (f − ȳ)/θ̄ out) for a dataset that is never held whole. Over one epoch
  (num_steps = steps_per_epoch) every kept example counts once, with one draw of its
  crop: an estimate of the mean over the augmentation, exact over the examples.
  """
  c = stream.split.num_classes
  sx = np.zeros((stream.image_size, stream.image_size, 3), np.float64)
  sy = np.zeros((c,), np.float64)
  rows = 0
  it = stream.iterator(start_step, num_steps)
  for x, y in it:
    sx += x.sum(axis=0, dtype=np.float64)
    sy += np.bincount(y, minlength=c)
    rows += x.shape[0]
  if hasattr(it, "close"):
    it.close()
  return sx, sy, rows


# ---------------------------------------------------------------- onto the devices


def local_rows(sharding, global_shape: tuple[int, ...]) -> tuple[int, int]:
  """[lo, hi): the rows of a (B, ...) array with `sharding` that this process's devices
  hold (ValueError unless they are one contiguous block)."""
  rows = sorted({(idx[0].start or 0, global_shape[0] if idx[0].stop is None
                  else idx[0].stop)
                 for idx in sharding.addressable_devices_indices_map(global_shape).values()})
  lo, hi = rows[0][0], rows[-1][1]
  covered = sum(b - a for a, b in rows)
  if covered != hi - lo or any(rows[i][1] != rows[i + 1][0] for i in range(len(rows) - 1)):
    raise ValueError(f"This process's devices hold rows {rows} of the batch, not one "
                     "contiguous block; build the mesh over jax.devices() (process order).")
  return lo, hi


def to_device(dataset, sharding, batch_size: int, *, process_index: int | None = None,
              buffer: int = 2):
  """An iterator of global arrays from a stream's `dataset()` of local batches: each leaf of each element becomes
  `jax.make_array_from_process_local_data(sharding, leaf, global_shape)` (B rows over
  all processes), `buffer` elements put ahead in a background thread (Grain's
  `ThreadPrefetchIterDataset`, as `grain.experimental.device_put`).

  Checks once that this process's devices hold rows [p·b, (p+1)·b) (`local_rows`).
  """
  import grain  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  p = jax.process_index() if process_index is None else process_index
  b = batch_size // jax.process_count()
  lo, hi = local_rows(sharding, (batch_size,))
  if (lo, hi) != (p * b, (p + 1) * b):
    raise ValueError(f"Process {p}'s devices hold rows [{lo}, {hi}) of the batch; the "
                     f"stream gives it rows [{p * b}, {(p + 1) * b}).")

  def put(element):
    return jax.tree.map(lambda a: jax.make_array_from_process_local_data(
        sharding, a, (batch_size,) + a.shape[1:]), element)

  prefetch = grain.experimental.ThreadPrefetchIterDataset
  ds = prefetch(dataset, prefetch_buffer_size=buffer)
  return iter(prefetch(ds.map(put), prefetch_buffer_size=buffer))
