r"""Prepares a tfds dataset from local files, offline, with tfds' own builder.

  python -m mixjax.data.prepare --dataset=fashion_mnist [--source_dir=DIR] --data_dir=OUT
  python -m mixjax.data.prepare --dataset=fashion_mnist_corrupted [--source_dir=DIR] \
      --data_dir=OUT [--configs=shot_noise,stripe]
  python -m mixjax.data.prepare --dataset=image_folder --source_dir=DIR --name=NAME \
      --data_dir=OUT     (your own images: `mixjax.data.image_folder`)

writes `OUT/fashion_mnist/3.0.1/` exactly as `tfds build fashion_mnist
--file_format=array_record` would (same name, version, splits `train`/`test`, features
`image` (28, 28, 1) uint8 and `label` ClassLabel(10) with tfds' class names), but from the
original gzip'd IDX files in `--source_dir` (default: Debian's `dataset-fashion-mnist`
location, /usr/share/datasets/fashion-mnist), without network and without TensorFlow.
`tfds.data_source("fashion_mnist", data_dir=OUT)` and
`mixjax.data.load_dataset("fashion_mnist", data_dir=OUT)` then read it.

How: a subclass of tfds' `FashionMNIST` builder (`tensorflow_datasets.image_classification
.mnist`) keeps its `_info` (name, version, features, citation) and replaces only where the
examples come from: `_split_generators` points at the arrays decoded here, and
`_generate_examples` yields `(index, {"image": PIL image, "label": int})`, keyed by the
example index as tfds' own generator is. tfds' own `_generate_examples` cannot be reused
as is: it reads with `tf.io.gfile` and hands NumPy arrays to the `Image` feature, whose
PNG encoder for arrays is TensorFlow's; PIL images are PNG-encoded by the same feature
without TensorFlow. tfds' `download_and_prepare` does the rest (serialization, shuffling
by key, array_record shards, `dataset_info.json`).

`fashion_mnist_corrupted` (Fashion-MNIST-C, `mixjax.data.shift`) is built the same way
from the same IDX files (only the test split's two): its builder (mixjax's, one config
per MNIST-C corruption) corrupts the decoded test images with the config's corruption
(`mixjax.data.corruptions`, fixed seeds: every build writes the same images) before tfds
serializes them. `--configs` builds a subset of the corruptions (default: all); configs
already prepared are left alone, so a later run with more configs adds the missing ones.

Safety:
  - every IDX file is decoded and checked before anything is written: gzip integrity,
    magic number (0x00000803 for images, 0x00000801 for labels), dimensions, payload size,
    label range, and equal image and label counts. A bad file stops the command with one
    message naming the file (exit code 1, no traceback);
  - the dataset is built in a temporary folder inside OUT and renamed into place, so OUT
    never holds a half-written dataset that tfds would open (with configs: every missing
    config is built first, then each is renamed into place);
  - re-running on a prepared OUT is a no-op that says so (the source files are not read).

IDX format (LeCun et al.): a big-endian header `0x00 0x00 <type> <ndim>` (type 0x08 =
unsigned byte), then `ndim` big-endian uint32 dimensions, then the row-major payload of
`prod(dims)` bytes. Images are `(n, 28, 28)`, labels `(n,)`.
"""
from __future__ import annotations

import dataclasses
import gzip
import os
import shutil
import sys
import tempfile
import zlib

from absl import logging
import numpy as np

from mixjax.data import corruptions as corruptions_lib
from mixjax.data import image_folder

IDX_UBYTE = 0x08  # the IDX type code of unsigned bytes


class PrepareError(Exception):
  """A source file is missing or invalid, or the output folder is in the way."""


@dataclasses.dataclass(frozen=True)
class LocalSource:
  """Where a tfds dataset's original files live and what they must contain.

  Attributes:
    name: the tfds dataset name (also the name of the builder written).
    builder: `"module:Class"` of tfds' builder whose `_info` is kept.
    default_dir: default `--source_dir`.
    debian_package: the Debian package that installs the files into `default_dir`.
    files: split -> (images file, labels file), names inside the source folder.
    image_shape: (H, W, C) of one image.
    num_classes: labels must lie in [0, num_classes).
    url: where the files can be fetched on a connected machine.
    configs: the builder's configs, each built as a dataset folder of its own (empty:
      a builder without configs). A builder may define `transform_images(images) ->
      images` (uint8 (n, H, W, C)), applied to each split's images before they are
      written (`fashion_mnist_corrupted`: the config's corruption).
  """
  name: str
  builder: str
  default_dir: str
  debian_package: str
  files: dict[str, tuple[str, str]]
  image_shape: tuple[int, int, int]
  num_classes: int
  url: str
  configs: tuple[str, ...] = ()


SOURCES = {
    "fashion_mnist": LocalSource(
        name="fashion_mnist",
        builder="tensorflow_datasets.image_classification.mnist:FashionMNIST",
        default_dir="/usr/share/datasets/fashion-mnist",
        debian_package="dataset-fashion-mnist",
        files={"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
               "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")},
        image_shape=(28, 28, 1),
        num_classes=10,
        url="https://github.com/zalandoresearch/fashion-mnist"),
    "fashion_mnist_corrupted": LocalSource(
        name="fashion_mnist_corrupted",
        builder="mixjax.data.shift:builder_class",
        default_dir="/usr/share/datasets/fashion-mnist",
        debian_package="dataset-fashion-mnist",
        files={"test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")},
        image_shape=(28, 28, 1),
        num_classes=10,
        url="https://github.com/zalandoresearch/fashion-mnist",
        configs=corruptions_lib.CORRUPTIONS),
}


def get_source(name: str) -> LocalSource:
  if name not in SOURCES:
    raise PrepareError(f"No local preparation for dataset {name!r}. Datasets that "
                       f"mixjax.data.prepare can build: {', '.join(sorted(SOURCES))}.")
  return SOURCES[name]


def instructions(name: str, data_dir: str = "DIR", extra_flags: str = "") -> str:
  """The two offline routes to prepare `name` into `data_dir` (for error messages);
  `extra_flags` (e.g. " --configs=a,b") is appended to the command."""
  src = get_source(name)
  files = ", ".join(f for pair in src.files.values() for f in pair)
  cmd = f"python -m mixjax.data.prepare --dataset={name}{extra_flags}"
  return (
      f"Prepare it offline from the original IDX files, either way:\n"
      f"  (a) from Debian's package {src.debian_package} (installs {src.default_dir}):\n"
      f"        apt-get install {src.debian_package}\n"
      f"        {cmd} --data_dir={data_dir}\n"
      f"  (b) from the files {files} obtained anywhere (e.g. {src.url}), put in one "
      f"folder SRC:\n"
      f"        {cmd} --source_dir=SRC --data_dir={data_dir}")


def read_idx(path: str, *, ndim: int) -> np.ndarray:
  """Decodes one gzip'd IDX file of unsigned bytes with `ndim` dimensions.

  Returns:
    uint8 array of the shape given by the header.

  Raises:
    PrepareError naming `path`: missing file, not gzip / corrupted or truncated gzip
    stream, bad magic number, short header, or a payload whose size is not the product
    of the dimensions.
  """
  expected_magic = (IDX_UBYTE << 8) | ndim
  try:
    with gzip.open(path, "rb") as f:
      raw = f.read()
  except FileNotFoundError:
    raise PrepareError(f"{path}: no such file.") from None
  except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError
    raise PrepareError(f"{path}: not a valid gzip file ({e}); expected the gzip'd IDX "
                       "file as distributed.") from None
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != IDX_UBYTE or raw[3] != ndim:
    got = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
    raise PrepareError(
        f"{path}: bad IDX magic number "
        f"{'(file shorter than 4 bytes)' if got is None else f'0x{got:08x}'}; expected "
        f"0x{expected_magic:08x} (unsigned bytes, {ndim} dimension(s)).")
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise PrepareError(f"{path}: truncated IDX header ({len(raw)} bytes, expected at "
                       f"least {header}).")
  dims = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
  size = int(np.prod(dims, dtype=np.int64))
  if len(raw) - header != size:
    what = "truncated" if len(raw) - header < size else "has trailing bytes"
    raise PrepareError(f"{path}: {what}: the header gives dimensions {dims} "
                       f"({size} bytes of data), the file holds {len(raw) - header}.")
  return np.frombuffer(raw, np.uint8, count=size, offset=header).reshape(dims)


def read_split(images_path: str, labels_path: str, *, image_shape: tuple[int, int, int],
               num_classes: int) -> tuple[np.ndarray, np.ndarray]:
  """(images uint8 (n, H, W, C), labels int64 (n,)) from a pair of IDX files, checked."""
  h, w, c = image_shape
  images = read_idx(images_path, ndim=3 if c == 1 else 4)
  if images.shape[1:] != ((h, w) if c == 1 else (h, w, c)):
    raise PrepareError(f"{images_path}: images of shape {images.shape[1:]}, expected "
                       f"{(h, w) if c == 1 else (h, w, c)}.")
  labels = read_idx(labels_path, ndim=1)
  if images.shape[0] != labels.shape[0]:
    raise PrepareError(f"{images_path} holds {images.shape[0]} images but {labels_path} "
                       f"holds {labels.shape[0]} labels; the counts must agree.")
  if images.shape[0] == 0:
    raise PrepareError(f"{images_path}: no images.")
  if labels.max() >= num_classes:
    raise PrepareError(f"{labels_path}: label {int(labels.max())} outside "
                       f"[0, {num_classes}).")
  return images.reshape(-1, h, w, c), labels.astype(np.int64)


def read_source(source: LocalSource, source_dir: str
                ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Decodes and checks every split's files: split -> (images, labels)."""
  return {split: read_split(os.path.join(source_dir, im), os.path.join(source_dir, lb),
                            image_shape=source.image_shape,
                            num_classes=source.num_classes)
          for split, (im, lb) in source.files.items()}


def _local_builder_class(source: LocalSource,
                         arrays: dict[str, tuple[np.ndarray, np.ndarray]]):
  """tfds' builder for `source`, fed from `arrays` instead of downloads (not registered)."""
  import importlib  # pylint: disable=g-import-not-at-top
  import PIL.Image  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  module, cls_name = source.builder.split(":")
  base = getattr(importlib.import_module(module), cls_name)
  if not isinstance(base, type):  # a factory (its module imports tfds lazily)
    base = base()

  class LocalBuilder(base, skip_registration=True):
    """`base` with its `_info`, fed from local arrays."""
    name = base.name
    # No code folder: no URL checksums to load (nothing is downloaded), and tfds'
    # `code_path` needs the `importlib_resources` backport, which it does not install.
    code_path = None

    def _split_generators(self, dl_manager):
      del dl_manager  # nothing to download
      return [tfds.core.SplitGenerator(name=split, gen_kwargs={"split": split})
              for split in arrays]

    # Nothing is downloaded: no "Downloading and preparing dataset ..." / "Dataset ...
    # downloaded and prepared to <temporary folder>" lines (tfds prints them with
    # termcolor); `main` says what was prepared, and where.
    def _log_download_bytes(self):
      pass

    def _log_download_done(self):
      pass

    def _generate_examples(self, split):
      images, labels = arrays[split]
      if hasattr(self, "transform_images"):
        images = self.transform_images(images)
      mode = "L" if images.shape[-1] == 1 else "RGB"
      for i in range(images.shape[0]):  # per example: tfds serializes one at a time
        img = images[i, ..., 0] if mode == "L" else images[i]
        yield i, {"image": PIL.Image.fromarray(img, mode), "label": int(labels[i])}

  LocalBuilder.__name__ = LocalBuilder.__qualname__ = f"Local{cls_name}"
  # DatasetInfo records the builder's module; name tfds' own (whose `_info` this is), so
  # that dataset_info.json is the one tfds' build writes and tfds does not report a
  # mismatch with its registered class on every load.
  LocalBuilder.__module__ = base.__module__
  return LocalBuilder


def _is_prepared(name: str, data_dir: str):
  """The tfds builder of `name` under `data_dir`, and whether it is prepared (a folder
  that does not exist is not asked: tfds would warn that it "has no dataset_info.json")."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder(name, data_dir=data_dir, try_gcs=False)
  return builder, os.path.isdir(builder.data_dir) and builder.is_prepared()


def prepare(name: str, *, data_dir: str, source_dir: str | None = None,
            configs: tuple[str, ...] | None = None) -> tuple[str, bool]:
  """Builds tfds dataset `name` (array_record) under `data_dir` from local files.

  Args:
    name: a key of `SOURCES` (`fashion_mnist`, `fashion_mnist_corrupted`).
    data_dir: the tfds data directory to write `<name>/<version>/` (or, for a builder
      with configs, `<name>/<config>/<version>/`) into.
    source_dir: the folder of the original files (default: the source's `default_dir`).
    configs: for a builder with configs, the ones to build (default: all).

  Returns:
    (the dataset folder (`data_dir/<name>` for a builder with configs), True if
    something was built now / False if everything was already prepared).

  Raises:
    PrepareError: a missing or invalid source file (named in the message), an unknown
      config, or a dataset folder in the way that is not a prepared dataset. Nothing is
      left under `data_dir/<name>/...` that tfds would open then.
  """
  source = get_source(name)
  source_dir = source_dir or source.default_dir
  data_dir = os.path.abspath(os.path.expanduser(data_dir))
  if source.configs:
    return _prepare_configs(source, data_dir, source_dir, configs)
  if configs:
    raise PrepareError(f"{name} has no configs; drop --configs.")
  builder, prepared = _is_prepared(name, data_dir)
  final = os.fspath(builder.data_dir)
  if prepared:
    _check_format(builder, final)
    return final, False
  if os.path.exists(final):
    raise PrepareError(f"{final} exists but is not a prepared dataset (no "
                       "dataset_info.json); remove it and run again.")
  if not os.path.isdir(source_dir):
    raise PrepareError(f"Source folder {source_dir} does not exist.\n"
                       + instructions(name, data_dir))
  arrays = read_source(source, source_dir)  # everything is checked before writing

  os.makedirs(data_dir, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{name}-prepare-", dir=data_dir)
  try:
    cls = _local_builder_class(source, arrays)
    local = cls(data_dir=tmp, file_format="array_record")
    local.download_and_prepare()
    built = os.fspath(local.data_dir)
    for split, (_, labels) in arrays.items():
      got = local.info.splits[split].num_examples
      if got != labels.shape[0]:
        raise PrepareError(f"tfds wrote {got} {split} examples, expected "
                           f"{labels.shape[0]}; nothing was installed.")
    os.makedirs(os.path.dirname(final), exist_ok=True)
    os.rename(built, final)  # same filesystem: atomic
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return final, True


def _check_format(builder, folder: str) -> None:
  file_format = str(builder.info.file_format or "")
  if "array_record" not in file_format.lower():
    raise PrepareError(f"{folder} holds {builder.name} prepared as {file_format}; reading "
                       "it without TensorFlow needs array_record. Remove it and run again.")


def _prepare_configs(source: LocalSource, data_dir: str, source_dir: str,
                     configs: tuple[str, ...] | None) -> tuple[str, bool]:
  """`prepare` for a builder with configs: the missing ones built in one temporary folder,
  then each renamed into `data_dir/<name>/<config>/<version>`."""
  import importlib  # pylint: disable=g-import-not-at-top
  configs = tuple(source.configs if not configs else configs)
  unknown = [c for c in configs if c not in source.configs]
  if unknown:
    raise PrepareError(f"Unknown {source.name} configs: {', '.join(unknown)}. Known: "
                       f"{', '.join(source.configs)}.")
  module, factory = source.builder.split(":")
  base = getattr(importlib.import_module(module), factory)
  base = base if isinstance(base, type) else base()
  root = os.path.join(data_dir, source.name)
  missing = {}
  for c in configs:
    final = os.path.join(root, c, str(base.VERSION))
    if os.path.exists(os.path.join(final, "dataset_info.json")):
      _check_format(base(config=c, data_dir=data_dir), final)
    elif os.path.exists(final):
      raise PrepareError(f"{final} exists but is not a prepared dataset (no "
                         "dataset_info.json); remove it and run again.")
    else:
      missing[c] = final
  if not missing:
    return root, False
  if not os.path.isdir(source_dir):
    raise PrepareError(f"Source folder {source_dir} does not exist.\n"
                       + instructions(source.name, data_dir))
  arrays = read_source(source, source_dir)  # everything is checked before writing

  os.makedirs(data_dir, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{source.name}-prepare-", dir=data_dir)
  try:
    cls = _local_builder_class(source, arrays)
    built = {}
    for c in missing:
      local = cls(config=c, data_dir=tmp, file_format="array_record")
      local.download_and_prepare()
      for split, (_, labels) in arrays.items():
        got = local.info.splits[split].num_examples
        if got != labels.shape[0]:
          raise PrepareError(f"tfds wrote {got} {split} examples of {c}, expected "
                             f"{labels.shape[0]}; nothing was installed.")
      built[c] = os.fspath(local.data_dir)
      assert os.path.relpath(built[c], tmp) == os.path.relpath(missing[c], data_dir)
    for c, final in missing.items():  # all built: install each config (atomic rename)
      os.makedirs(os.path.dirname(final), exist_ok=True)
      os.rename(built[c], final)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return root, True


def main(argv) -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top
  from absl import app  # pylint: disable=g-import-not-at-top
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  tfds.disable_progress_bar()
  if f.dataset == image_folder.DATASET:  # your own images: mixjax.data.image_folder
    sys.exit(image_folder.command(source_dir=f.source_dir, name=f.name,
                                  data_dir=f.data_dir))
  try:
    path, built = prepare(f.dataset, data_dir=f.data_dir, source_dir=f.source_dir,
                          configs=tuple(f.configs) if f.configs else None)
  except PrepareError as e:
    print(f"mixjax.data.prepare: {e}", file=sys.stderr, flush=True)
    sys.exit(1)
  if built:
    print(f"Prepared {f.dataset} in {path} (array_record). Use it with "
          f"--config.dataset.data_dir={f.data_dir}.", flush=True)
  else:
    print(f"{f.dataset} is already prepared in {path}; nothing to do.", flush=True)


def _define_flags() -> None:
  """Flags of the command only (importing this module defines none)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("dataset", "fashion_mnist",
                      f"Dataset to prepare: one of {', '.join(sorted(SOURCES))}, or "
                      f"{image_folder.DATASET} (a folder of your own images: "
                      "--source_dir=DIR --name=NAME).")
  flags.DEFINE_string("name", None, f"--dataset={image_folder.DATASET} only: the name "
                      "of the dataset made from --source_dir.")
  flags.DEFINE_string("source_dir", None,
                      "Folder of the original files (default: the Debian package's, "
                      "e.g. /usr/share/datasets/fashion-mnist).")
  flags.DEFINE_string("data_dir", None, "tfds data directory to write into.")
  flags.DEFINE_list("configs", None,
                    "For datasets with configs, the ones to build (default: all); "
                    "fashion_mnist_corrupted's are its corruptions: "
                    f"{', '.join(corruptions_lib.CORRUPTIONS)}.")
  flags.mark_flags_as_required(["data_dir"])


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  _define_flags()
  logging.set_verbosity(logging.WARNING)
  app.run(main)
