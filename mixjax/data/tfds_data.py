"""TFDS image datasets read from array_record files with `tfds.data_source`.

No TensorFlow and no download: the dataset must already be prepared (in array_record
format) under `data_dir`. The preparation check runs first and only looks at local files
(`builder.is_prepared()` reads `dataset_info.json`; nothing is fetched), so a missing
dataset fails within a second with the command that prepares it.

Reading: a split is decoded once and then read from the array cache
(`mixjax.data.cache`: keyed by dataset, config, version, split and the prepared files,
hash-checked, rebuilt when stale or damaged) when a `cache_dir` is given, as the trainer
does (`config.dataset.cache_dir`). Decoding reads the split in chunks of consecutive indices with the data source's
batched `__getitems__` (array_record reads the records of a chunk in parallel; tfds then
decodes each image), chunks spread over a small thread pool. Images are stored as uint8
and normalized per channel: `(x/255 − mean_c) / std_c` with the training split's
statistics.
"""
from __future__ import annotations

import concurrent.futures
import functools
import glob
import logging as py_logging
import os
from typing import Any, Sequence

from absl import logging
import numpy as np

from mixjax.data import cache as cache_lib
from mixjax.data import dataset as ds_lib


class _NoOpenCVAdvice(py_logging.Filter):
  """Drops tfds' "OpenCV is not installed. We recommend using OpenCV because it is
  faster ..." warning, logged on the first image it decodes. mixjax decodes with PIL on
  purpose (its images are small PNGs, read once per run; OpenCV is no dependency of
  mixjax), so the advice is noise on every run; every other record passes."""

  def filter(self, record: py_logging.LogRecord) -> bool:
    return not ("tensorflow_datasets" in record.pathname
                and str(record.msg).startswith("OpenCV is not installed"))


if not any(isinstance(f, _NoOpenCVAdvice) for f in py_logging.getLogger("absl").filters):
  py_logging.getLogger("absl").addFilter(_NoOpenCVAdvice())


class _NoMissingInfoWarning(py_logging.Filter):
  """Drops tfds' "Variant folder ... has no dataset_info.json" warning."""

  def filter(self, record: py_logging.LogRecord) -> bool:
    return not ("tensorflow_datasets" in record.pathname
                and str(record.msg).startswith("Variant folder"))


def _is_prepared(builder) -> bool:
  """`builder.is_prepared()` without tfds' warning for a folder that is missing or holds
  no dataset_info.json: a dataset that is not prepared gets `preparation_message`
  instead, which says how to prepare it."""
  quiet = _NoMissingInfoWarning()
  absl_logger = py_logging.getLogger("absl")
  absl_logger.addFilter(quiet)
  try:
    return builder.is_prepared()
  finally:
    absl_logger.removeFilter(quiet)

# name -> (num_classes, image shape)
TFDS_DATASETS = {
    "cifar10": (10, (32, 32, 3)),
    "cifar100": (100, (32, 32, 3)),
    "mnist": (10, (28, 28, 1)),
    "fashion_mnist": (10, (28, 28, 1)),
    "svhn_cropped": (10, (32, 32, 3)),
}


def default_data_dir() -> str:
  """tfds' default data directory: $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
  return os.environ.get("TFDS_DATA_DIR", os.path.expanduser("~/tensorflow_datasets"))


def manual_download_instructions(name: str) -> str | None:
  """tfds' instructions for the files of a dataset that must be downloaded by hand
  (ImageNet: `imagenet2012`, `imagenet2012_corrupted`), on one line; None for the
  others. Read from the builder class (nothing is fetched)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    cls = tfds.builder_cls(name.split("/")[0])
  except Exception:  # pylint: disable=broad-except  (unregistered: a local dataset)
    return None
  text = " ".join(str(getattr(cls, "MANUAL_DOWNLOAD_INSTRUCTIONS", None) or "").split())
  return text or None


def preparation_message(name: str, looked_in: str, data_dir: str | None,
                        problem: str = "is not prepared") -> str:
  """Why `name` cannot be read from `data_dir`, and the commands that prepare it.

  Datasets with original files that `mixjax.data.prepare` builds offline
  (`fashion_mnist`: Debian's `dataset-fashion-mnist` or the IDX files from anywhere) get
  those routes; datasets whose files must be downloaded by hand (ImageNet) get one line
  with tfds' instructions for them and the `tfds build --manual_dir` command; the others
  (CIFAR, SVHN, ...) get `tfds build` on a connected machine.
  """
  shown = data_dir if data_dir is not None else f"{default_data_dir()} (tfds default)"
  head = (f"TFDS dataset {name!r} {problem}: looked in {looked_in} (data_dir={shown}). "
          "mixjax never downloads data. ")
  manual = manual_download_instructions(name)
  if manual is not None:
    target = data_dir if data_dir is not None else default_data_dir()
    return (head + f"Its files are downloaded by hand (tfds: {manual.rstrip('.')}.); put "
            "them in a folder MANUAL, then run `pip install tensorflow "
            f"tensorflow-datasets && tfds build {name} --manual_dir=MANUAL "
            f"--data_dir={target} --file_format=array_record` and pass "
            f"--config.dataset.data_dir={target}.")
  from mixjax.data import prepare  # pylint: disable=g-import-not-at-top
  if name in prepare.SOURCES:
    target = data_dir if data_dir is not None else default_data_dir()
    return (head + prepare.instructions(name, target) + "\n"
            f"then pass --config.dataset.data_dir={target} "
            f"(or load_dataset(..., data_dir={target!r})).")
  return (
      head + "On a machine with internet access run\n"
      "  pip install tensorflow tensorflow-datasets\n"
      f"  tfds build {name} --file_format=array_record --data_dir=DIR\n"
      "then copy DIR to this machine and pass --config.dataset.data_dir=DIR "
      "(or load_dataset(..., data_dir=DIR)).")


@functools.lru_cache(maxsize=64)
def _builder(name: str, data_dir: str | None, stamp):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  del stamp  # part of the cache key only
  return tfds.builder(name, data_dir=data_dir, try_gcs=False)


def get_builder(name: str, data_dir: str | None):
  """`tfds.builder(name, data_dir=...)`, its `dataset_info.json` read once per process:
  the builder is reused while the prepared folders' `dataset_info.json` files keep their
  modification times (a dataset prepared or rebuilt since gets a new builder)."""
  root = os.path.join(data_dir if data_dir is not None else default_data_dir(),
                      *name.split("/")[:1])
  stamp = tuple(sorted((p, os.stat(p).st_mtime_ns) for p in glob.glob(
      os.path.join(glob.escape(root), "**", "dataset_info.json"), recursive=True)))
  return _builder(name, data_dir, stamp)


def check_prepared(name: str, data_dir: str | None):
  """Returns the tfds builder if `name` is prepared as array_record under `data_dir`.

  Only local metadata is read (no network, no download). Raises FileNotFoundError with
  the preparation command otherwise.
  """
  builder = get_builder(name, data_dir)
  looked_in = str(builder.data_dir)
  if not _is_prepared(builder):
    raise FileNotFoundError(preparation_message(name, looked_in, data_dir))
  file_format = builder.info.file_format
  if file_format is not None and "array_record" not in str(file_format).lower():
    raise FileNotFoundError(preparation_message(
        name, looked_in, data_dir,
        problem=f"is prepared as {file_format}, but reading without TensorFlow needs "
                "array_record"))
  return builder


def _batched_getter(source):
  """`keys -> list of examples`: `__getitems__` when it works, else one call per key."""
  getitems = getattr(source, "__getitems__", None)
  if getitems is not None:
    try:
      getitems([0])
      return getitems
    except (TypeError, NotImplementedError, AttributeError) as e:
      # tfds.testing.mock_data's data source has a broken __getitems__.
      logging.warning("Data source %r has no working __getitems__ (%s); reading one "
                      "example per call.", source, e)
  return lambda keys: [source[k] for k in keys]


def read_split(source: Sequence[Any], *, image_key: str = "image",
               label_key: str = "label", chunk_size: int = 1024,
               num_threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Reads a whole tfds data source into (images uint8 (n, H, W, C), labels int64 (n,))."""
  n = len(source)
  if n == 0:
    raise ValueError(f"Data source {source!r} is empty.")
  get = _batched_getter(source)
  first = get([0])[0]
  image0 = np.asarray(first[image_key])
  images = np.empty((n, *image0.shape), image0.dtype)
  labels = np.empty((n,), np.int64)

  def read(start: int) -> None:
    stop = min(start + chunk_size, n)
    examples = get(list(range(start, stop)))
    if len(examples) != stop - start:
      raise IOError(f"Read {len(examples)} examples for indices [{start}, {stop}).")
    images[start:stop] = np.stack([np.asarray(e[image_key]) for e in examples])
    labels[start:stop] = [int(e[label_key]) for e in examples]

  starts = range(0, n, chunk_size)
  threads = num_threads or min(8, os.cpu_count() or 1)
  if threads <= 1 or len(starts) == 1:
    for s in starts:
      read(s)
  else:
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
      list(pool.map(read, starts))  # list() re-raises any reader's exception
  return images, labels


def _decode(builder, split: str, **kwargs) -> tuple[np.ndarray, np.ndarray]:
  """A prepared split read and decoded through tfds (`read_split`)."""
  return read_split(builder.as_data_source(split=split), **kwargs)


def load_tfds(name: str, *, data_dir: str | None = None, val_fraction: float = 0.1,
              seed: int = 0, train_split: str = "train", test_split: str = "test",
              label_key: str = "label", chunk_size: int = 1024,
              num_threads: int | None = None, cache_dir: str | None = None
              ) -> ds_lib.Dataset:
  """Loads a prepared tfds image dataset into host arrays (see the module docstring).

  Args:
    name: a key of `TFDS_DATASETS`.
    data_dir: tfds data directory holding `<name>/<version>/` (default: tfds's).
    val_fraction, seed: the validation split carved from `train_split`.
    train_split, test_split: tfds split names.
    label_key: e.g. "coarse_label" for cifar100's 20 superclasses (num_classes is then
      taken from the dataset info).
    chunk_size, num_threads: reading granularity and parallelism.
    cache_dir: the array cache's folder (`mixjax.data.cache`); None: decode every time.
  """
  builder = check_prepared(name, data_dir)
  num_classes = TFDS_DATASETS[name][0]
  if label_key != "label":
    num_classes = builder.info.features[label_key].num_classes
  arrays = {}
  for split in (train_split, test_split):
    decode = functools.partial(_decode, builder, split, label_key=label_key,
                               chunk_size=chunk_size, num_threads=num_threads)
    arrays[split] = cache_lib.cached_split(builder, split, decode, cache_dir=cache_dir,
                                           label_key=label_key)
  (train_x, train_y), (test_x, test_y) = arrays[train_split], arrays[test_split]
  if train_x.dtype != np.uint8:
    raise ValueError(f"{name}: expected uint8 images, got {train_x.dtype}.")
  return ds_lib.build(name, train_x, train_y, test_x, test_y, num_classes=num_classes,
                      is_image=True, val_fraction=val_fraction, seed=seed,
                      raw_scale=1.0 / 255.0)


def train_split_size(name: str, data_dir: str | None = None, train_split: str = "train",
                     **unused: Any) -> int | None:
  """The prepared training split's size from the builder's local metadata (None when
  the dataset is not prepared: loading it fails with the preparation instructions)."""
  del unused
  try:
    builder = check_prepared(name, data_dir)
  except FileNotFoundError:
    return None
  try:
    n = int(builder.info.splits[train_split].num_examples)
  except (KeyError, ValueError):  # no split metadata: the loader will tell
    return None
  return n if n > 0 else None


def _register(name: str) -> None:
  def loader(*, cache_dir: str | None = None, **kwargs):
    return load_tfds(name, cache_dir=cache_dir, **kwargs)
  loader.__doc__ = f"tfds {name!r} (array_record, no download); see `load_tfds`."
  ds_lib.DATASETS.register(name, loader)

  def size(data_dir: str | None = None, **kwargs):
    return train_split_size(name, data_dir, **kwargs)
  ds_lib.register_size(name)(size)


for _name in TFDS_DATASETS:
  _register(_name)
