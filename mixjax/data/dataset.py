"""The `Dataset` record, the DATASETS registry, `load_dataset`, splits and normalization.

Every loader returns host NumPy arrays (float32 inputs, int32 labels). The validation
split is carved from the training split by a seeded permutation (it is what temperature
scaling is fitted on; the test split is never touched). Inputs are normalized per channel
(the last axis for images, one channel for flat vectors unless stated) with the mean and
standard deviation of the final training split, recorded in `norm_mean` / `norm_std`:

    x_normalized = (x_raw · raw_scale − norm_mean) / norm_std

where `raw_scale` maps stored values to [0, 1] for images (1/255 for uint8) and is 1
otherwise.
"""
from __future__ import annotations

import dataclasses
import inspect
import os
from typing import Any, Callable, Mapping

import numpy as np

from mixjax.registry import Registry

DATASETS = Registry("dataset")
# name -> `size(*, val_fraction, seed, **kwargs) -> (num_train_and_val, ...)`: the size of
# the training split before the validation split is carved, from known sizes (offline
# datasets register one next to their loader; tfds sizes come from the builder's info).
TRAIN_SIZES = Registry("dataset size")


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
  """A dataset held in host memory.

  Attributes:
    name: registry name.
    train_x, val_x, test_x: float32 inputs `(n, *input_shape)`, normalized.
    train_y, val_y, test_y: int32 labels `(n,)` in [0, num_classes).
    num_classes: c.
    input_shape: shape of one example, e.g. (32, 32, 3) or (40,).
    is_image: True for (H, W, C) images (augmentation applies).
    norm_mean, norm_std: float32 per-channel statistics of the training split used for
      normalization (shape (C,), or (d,) for per-feature standardization).
    raw_scale: factor applied to the stored values before normalization.
    extras: loader-specific extra arrays (e.g. the two-moons points and feature map).
  """
  name: str
  train_x: np.ndarray
  train_y: np.ndarray
  val_x: np.ndarray
  val_y: np.ndarray
  test_x: np.ndarray
  test_y: np.ndarray
  num_classes: int
  input_shape: tuple[int, ...]
  is_image: bool
  norm_mean: np.ndarray
  norm_std: np.ndarray
  raw_scale: float = 1.0
  extras: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    for split in ("train", "val", "test"):
      x, y = getattr(self, f"{split}_x"), getattr(self, f"{split}_y")
      if x.shape[1:] != tuple(self.input_shape) or x.shape[0] != y.shape[0]:
        raise ValueError(f"Dataset {self.name!r}: {split} split has x {x.shape}, y "
                         f"{y.shape}; expected (n, *{tuple(self.input_shape)}) and (n,).")
      if y.dtype != np.int32 or x.dtype != np.float32:
        raise ValueError(f"Dataset {self.name!r}: {split} split has dtypes {x.dtype}, "
                         f"{y.dtype}; expected float32 inputs and int32 labels.")

  @property
  def num_train(self) -> int:
    return int(self.train_x.shape[0])

  def summary(self) -> str:
    return (f"{self.name}: train {self.train_x.shape}, val {self.val_x.shape}, test "
            f"{self.test_x.shape}, {self.num_classes} classes")


def with_label_noise(ds: Dataset, rate: float, seed: int) -> Dataset:
  """`ds` with symmetric label noise on its training split only.

  Each training example, independently with probability `rate`, gets a label drawn
  uniformly from the c − 1 *other* classes (so the fraction of wrong labels is `rate`
  in expectation; with c = 10, rate = 0.4 leaves 60% correct, no class favoured). The
  validation and test splits are untouched. Deterministic: the draw is
  `numpy.random.default_rng([seed, 0x4C4E])` over the training split's order, so the
  flipped examples are reproducible from (seed, rate) — the trainer passes
  `config.dataset.split_seed`. The clean training labels are kept in
  `extras["clean_train_y"]` (which examples were flipped: `train_y != clean_train_y`).

  Args:
    ds: the dataset.
    rate: p in [0, 1].
    seed: the noise seed.
  """
  if not 0.0 <= rate <= 1.0:
    raise ValueError(f"label noise rate {rate} must be in [0, 1].")
  if rate == 0:
    return ds
  rng = np.random.default_rng([int(seed), 0x4C4E])
  n, c = ds.train_y.shape[0], ds.num_classes
  flip = rng.random(n) < rate
  offset = rng.integers(1, c, n)
  noisy = np.where(flip, (ds.train_y + offset) % c, ds.train_y).astype(np.int32)
  return dataclasses.replace(ds, train_y=noisy,
                             extras={**ds.extras, "clean_train_y": ds.train_y})


def load_dataset(name: str, *, data_dir: str | None = None, val_fraction: float = 0.1,
                 seed: int = 0, num_train: int = 0, cache_dir: str | None = None,
                 **kwargs: Any) -> Dataset:
  """Loads the dataset registered as `name`.

  Args:
    name: one of `DATASETS.names()`: tfds `cifar10`, `cifar100`, `mnist`,
      `fashion_mnist`, `svhn_cropped`; offline `mnist1d`, `digits`, `two_moons`.
    data_dir: tfds data directory (tfds datasets only; they are never downloaded).
    val_fraction: fraction of the training split held out for validation, in [0, 1).
    seed: seed of the validation permutation (and of any other split a loader makes
      that is documented as depending on it).
    num_train: keep only the first `num_train` examples of the training split (after
      the validation split is held out; the validation and test splits are unchanged);
      0 keeps all. Normalization statistics stay those of the whole training split.
    cache_dir: the array cache of decoded tfds splits (`mixjax.data.cache`), for the
      loaders that decode (tfds); None: decode every time. The arrays are the same.
    **kwargs: loader options (see each loader).

  Raises:
    ValueError: unknown name (lists the known ones), bad option, or (FileNotFoundError)
      a tfds dataset that is not prepared under `data_dir`.
  """
  loader = DATASETS.get(name)
  if not 0.0 <= float(val_fraction) < 1.0:
    raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}.")
  if int(num_train) < 0:
    raise ValueError(f"num_train must be >= 0 (0: all), got {num_train}.")
  if cache_dir and "cache_dir" in inspect.signature(loader).parameters:
    kwargs["cache_dir"] = os.path.expanduser(cache_dir)
  ds = loader(data_dir=data_dir, val_fraction=float(val_fraction), seed=int(seed),
              **kwargs)
  if num_train and num_train < ds.num_train:
    ds = dataclasses.replace(ds, train_x=ds.train_x[:num_train],
                             train_y=ds.train_y[:num_train])
  return ds


def register(name: str) -> Callable[[Callable[..., Dataset]], Callable[..., Dataset]]:
  return DATASETS.register(name)


def register_size(name: str) -> Callable[[Callable[..., int]], Callable[..., int]]:
  """Registers `size(**loader_kwargs) -> n`, the training split's size before the
  validation split (the loader's kwargs minus val_fraction / seed; data_dir only when
  `size` takes it; None when unknown)."""
  return TRAIN_SIZES.register(name)


def num_validation(n: int, val_fraction: float) -> int:
  """Examples `split_validation` holds out of n: round(val_fraction·n)."""
  return int(round(float(val_fraction) * n))


def train_size(name: str, *, data_dir: str | None = None, val_fraction: float = 0.1,
               seed: int = 0, num_train: int = 0, **kwargs: Any) -> int | None:
  """The number of training examples `load_dataset(name, ...)` would return, without
  reading the data: known sizes for the offline datasets, the builder's split sizes
  (local metadata) for tfds. None when unknown (a tfds dataset that is not prepared).

  Raises:
    ValueError: unknown dataset name; TypeError: a loader option it does not take.
  """
  DATASETS.get(name)
  del seed  # the validation split's size does not depend on it
  if name not in TRAIN_SIZES:
    return None
  size = TRAIN_SIZES.get(name)
  if "data_dir" in inspect.signature(size).parameters:  # tfds: the prepared metadata
    kwargs["data_dir"] = data_dir
  n = size(**kwargs)
  if n is None:
    return None
  n -= num_validation(n, val_fraction)
  return min(n, int(num_train)) if num_train else n


def split_validation(x: np.ndarray, y: np.ndarray, val_fraction: float, seed: int
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """(train_x, train_y, val_x, val_y): `round(val_fraction·n)` examples held out.

  The held-out indices are the first ones of `np.random.default_rng(seed).permutation(n)`;
  both parts keep the original order of their examples.
  """
  n = x.shape[0]
  n_val = num_validation(n, val_fraction)
  if n_val >= n:
    raise ValueError(f"val_fraction={val_fraction} leaves no training examples (n={n}).")
  perm = np.random.default_rng(seed).permutation(n)
  val_idx, train_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])
  return x[train_idx], y[train_idx], x[val_idx], y[val_idx]


def stratified_split(y: np.ndarray, test_fraction: float, seed: int
                     ) -> tuple[np.ndarray, np.ndarray]:
  """(train_idx, test_idx), sorted, with `round(test_fraction·n_k)` of each class k held out."""
  rng = np.random.default_rng(seed)
  test = []
  for k in np.unique(y):  # a loop over classes, not examples
    idx = np.flatnonzero(y == k)
    test.append(rng.permutation(idx)[:int(round(test_fraction * idx.size))])
  test_idx = np.sort(np.concatenate(test))
  train_idx = np.setdiff1d(np.arange(y.shape[0]), test_idx)
  return train_idx, test_idx


def channel_stats(x: np.ndarray, *, scale: float = 1.0, chunk: int = 4096
                  ) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and (population) std of `scale·x` over all axes but the last.

  Computed in float64, `chunk` examples at a time (two passes), so a uint8 array of
  CIFAR size is never converted whole to float64. Returns float32 arrays of shape (C,).
  """
  c = x.shape[-1]
  n = x.size // c
  total = np.zeros(c, np.float64)
  for i in range(0, x.shape[0], chunk):
    total += x[i:i + chunk].reshape(-1, c).sum(axis=0, dtype=np.float64)
  mean = total / n
  sq = np.zeros(c, np.float64)
  for i in range(0, x.shape[0], chunk):
    d = x[i:i + chunk].reshape(-1, c).astype(np.float64) - mean
    sq += np.einsum("ij,ij->j", d, d)
  std = np.sqrt(sq / n)
  return (mean * scale).astype(np.float32), (std * scale).astype(np.float32)


def normalize(x: np.ndarray, mean: np.ndarray, std: np.ndarray, *, scale: float = 1.0,
              chunk: int = 8192) -> np.ndarray:
  """float32 `(scale·x − mean) / std`, broadcasting over the last axis, in chunks."""
  if np.any(std <= 0):
    raise ValueError("A channel has zero standard deviation on the training split; it "
                     "cannot be standardized.")
  out = np.empty(x.shape, np.float32)
  mean = np.asarray(mean, np.float32)
  inv = (1.0 / np.asarray(std, np.float64)).astype(np.float32)
  for i in range(0, x.shape[0], chunk):
    out[i:i + chunk] = (x[i:i + chunk].astype(np.float32) * np.float32(scale) - mean) * inv
  return out


def build(name: str, train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
          test_y: np.ndarray, *, num_classes: int, is_image: bool, val_fraction: float,
          seed: int, raw_scale: float = 1.0, per_feature: bool = False,
          extras: Mapping[str, Any] | None = None) -> Dataset:
  """Carves the validation split, normalizes with training statistics, returns a Dataset.

  Args:
    per_feature: standardize each feature of a flat input separately (features that are
      constant on the training split are only centered); otherwise the statistics are per
      channel (last axis) for images and a single pair for vectors.
  """
  train_y = np.asarray(train_y).astype(np.int32)
  test_y = np.asarray(test_y).astype(np.int32)
  for split, y in (("train", train_y), ("test", test_y)):
    if y.size and (y.min() < 0 or y.max() >= num_classes):
      raise ValueError(f"Dataset {name!r}: {split} labels outside [0, {num_classes}).")
  tx, ty, vx, vy = split_validation(train_x, train_y, val_fraction, seed)
  if is_image or per_feature:
    stats_view = tx
  else:  # one channel for flat signals
    stats_view = tx.reshape(-1, 1)
  mean, std = channel_stats(stats_view, scale=raw_scale)
  if per_feature:  # a feature constant on the training split is only centered
    std = np.where(std > 0, std, np.float32(1.0)).astype(np.float32)
  if not (is_image or per_feature):
    mean = np.broadcast_to(mean, tx.shape[-1:]).copy()
    std = np.broadcast_to(std, tx.shape[-1:]).copy()
  norm = lambda a: normalize(a, mean, std, scale=raw_scale)
  return Dataset(
      name=name, train_x=norm(tx), train_y=ty, val_x=norm(vx), val_y=vy,
      test_x=norm(test_x), test_y=test_y, num_classes=int(num_classes),
      input_shape=tuple(tx.shape[1:]), is_image=bool(is_image), norm_mean=mean,
      norm_std=std, raw_scale=float(raw_scale), extras=dict(extras or {}))
