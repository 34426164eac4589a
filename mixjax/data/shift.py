"""Shifted test sets: Fashion-MNIST-C as a tfds dataset, and its loading for evaluation;
ImageNet-C and ImageNetV2 (tfds' own builders) for ImageNet.

`fashion_mnist_corrupted` is the 10,000 Fashion-MNIST test images under each of the 15
MNIST-C corruptions (`mixjax.data.corruptions`), built offline from the same IDX files as
`fashion_mnist`:

  python -m mixjax.data.prepare --dataset=fashion_mnist_corrupted [--source_dir=DIR] \\
      --data_dir=OUT [--configs=shot_noise,stripe]

One tfds builder config per corruption, as tfds' own `mnist_corrupted` does: a config is
a dataset folder of its own, `OUT/fashion_mnist_corrupted/<corruption>/1.0.0/`, so a
subset of corruptions can be built, read or added later on its own, and a version bump
of one corruption leaves the others valid. Each config has one split, `test`, with
fashion_mnist's features (`image` (28, 28, 1) uint8, `label` ClassLabel with its class
names) and its keys (the example index), so tfds stores the examples in the same order
as fashion_mnist's test split: example j of every corruption is a corruption of clean
test example j, with the same label. Read it with
`tfds.data_source("fashion_mnist_corrupted/<corruption>", split="test", data_dir=OUT)`.

For evaluation, `shift_test_sets(name, data_dir=..., ds=...)` returns every corruption's
(x, y), normalized exactly like `ds.test_x` (the clean dataset's training statistics), and
`check_shift_prepared` is the start-up check (FileNotFoundError with the prepare command).

ImageNet's shifted sets are tfds' registered datasets, prepared with `tfds build` (the
`check_shift_prepared` message says how) and read by streaming like ImageNet itself
(`streamed=True`: too large to hold, variable-size images):
  - `imagenet2012_corrupted`: ImageNet-C (Hendrycks & Dietterich, 2019), the 50,000
    validation images under 15 corruptions at severities 1–5, one config each
    (`gaussian_noise_1` … `jpeg_compression_5`: the 75 that the official mixup ImageNet
    code averages; tfds' four extra corruptions can be named too); split `validation`.
  - `imagenet_v2`: ImageNetV2 (Recht et al., 2019), 10,000 new test images;
    `matched-frequency` (the one the official code reports), `threshold-0.7`,
    `topimages`; split `test`.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Sequence

import numpy as np

from mixjax.data import corruptions as corruptions_lib
from mixjax.data import dataset as ds_lib

# Fashion-MNIST's class names, as in tfds' FashionMNIST builder.
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")


@dataclasses.dataclass(frozen=True)
class ShiftDataset:
  """A tfds dataset of shifted copies of a clean dataset's test split.

  Attributes:
    name: tfds name of the shifted dataset.
    clean: the `mixjax.data` dataset whose test split it shifts (a model must have been
      trained on it).
    configs: tfds builder configs, one per shift (corruption); the name alone means all
      of them.
    version: the dataset version (every config's).
    split: the split each config holds.
    streamed: a tfds-registered dataset read by streaming (ImageNet's), not mixjax's
      own builder read into memory (`shift_test_sets`).
    extra_configs: configs that may be named but are not part of "all".
  """
  name: str
  clean: str
  configs: tuple[str, ...]
  version: str
  split: str = "test"
  streamed: bool = False
  extra_configs: tuple[str, ...] = ()

  @property
  def known_configs(self) -> tuple[str, ...]:
    return self.configs + self.extra_configs


# ImageNet-C's 15 corruptions (Hendrycks & Dietterich, 2019; the official mixup ImageNet
# code's list) and tfds' four extra ones, at severities 1–5.
IMAGENET_C_CORRUPTIONS = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur",
    "motion_blur", "zoom_blur", "snow", "frost", "fog", "brightness", "contrast",
    "elastic_transform", "pixelate", "jpeg_compression")
IMAGENET_C_EXTRA = ("gaussian_blur", "saturate", "spatter", "speckle_noise")
IMAGENET_C_SEVERITIES = (1, 2, 3, 4, 5)


SHIFT_DATASETS = {
    "fashion_mnist_corrupted": ShiftDataset(
        name="fashion_mnist_corrupted", clean="fashion_mnist",
        configs=corruptions_lib.CORRUPTIONS, version="1.0.0"),
    "imagenet2012_corrupted": ShiftDataset(
        name="imagenet2012_corrupted", clean="imagenet2012",
        configs=tuple(f"{c}_{s}" for c in IMAGENET_C_CORRUPTIONS
                      for s in IMAGENET_C_SEVERITIES),
        version="3.1.0", split="validation", streamed=True,
        extra_configs=tuple(f"{c}_{s}" for c in IMAGENET_C_EXTRA
                            for s in IMAGENET_C_SEVERITIES)),
    "imagenet_v2": ShiftDataset(
        name="imagenet_v2", clean="imagenet2012",
        configs=("matched-frequency", "threshold-0.7", "topimages"), version="3.0.0",
        split="test", streamed=True),
}


def get_shift_dataset(name: str) -> ShiftDataset:
  if name not in SHIFT_DATASETS:
    raise ValueError(f"Unknown shifted dataset {name!r}. Known: "
                     f"{', '.join(sorted(SHIFT_DATASETS))}.")
  return SHIFT_DATASETS[name]


@functools.cache
def builder_class():
  """tfds' builder of `fashion_mnist_corrupted` (created on first use: importing tfds is
  slow). Not registered with tfds: the prepared folders are read from their files
  (`dataset_info.json`), which is what `tfds.data_source` does for an unregistered name.

  The class describes the dataset (configs, version, features, citation);
  `mixjax.data.prepare` feeds it the decoded IDX arrays, and `transform_images` applies
  the config's corruption to them before tfds serializes the examples.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  spec = SHIFT_DATASETS["fashion_mnist_corrupted"]

  class FashionMnistCorrupted(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Fashion-MNIST's test split under MNIST-C's 15 corruptions."""
    name = spec.name
    VERSION = tfds.core.Version(spec.version)
    RELEASE_NOTES = {spec.version: "MNIST-C's corruptions of the Fashion-MNIST test "
                                   f"split, seed {corruptions_lib.SEED}."}
    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(name=c, description=f"Corruption: {c} (MNIST-C's "
                                "severity).") for c in spec.configs]
    code_path = None  # no checksums folder: nothing is downloaded

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self,
          description=(
              "The 10,000 Fashion-MNIST test images under one of the 15 corruptions of "
              "MNIST-C (Mu & Gilmer 2019), at MNIST-C's severities, built offline by "
              "mixjax (mixjax.data.corruptions; fixed seeds)."),
          features=tfds.features.FeaturesDict({
              "image": tfds.features.Image(shape=(28, 28, 1)),
              "label": tfds.features.ClassLabel(names=list(FASHION_MNIST_CLASSES)),
          }),
          supervised_keys=("image", "label"),
          homepage="https://github.com/google-research/mnist-c",
          citation=(
              "@article{mu2019mnist, title={MNIST-C: A Robustness Benchmark for Computer "
              "Vision}, author={Mu, Norman and Gilmer, Justin}, journal={arXiv preprint "
              "arXiv:1906.02337}, year={2019}}\n"
              "@article{xiao2017fashion, title={Fashion-MNIST: a Novel Image Dataset for "
              "Benchmarking Machine Learning Algorithms}, author={Xiao, Han and Rasul, "
              "Kashif and Vollgraf, Roland}, journal={arXiv preprint arXiv:1708.07747}, "
              "year={2017}}"),
      )

    def transform_images(self, images: np.ndarray) -> np.ndarray:
      """uint8 (n, 28, 28, 1) -> the config's corruption of them (same shape)."""
      return corruptions_lib.corrupt(images, self.builder_config.name)

    def _split_generators(self, dl_manager):
      raise NotImplementedError("Build it with python -m mixjax.data.prepare "
                                f"--dataset={spec.name} (offline, from the IDX files).")

    def _generate_examples(self, **unused):
      raise NotImplementedError

  return FashionMnistCorrupted


# ------------------------------------------------------------------ checks and reads


def config_folder(spec: ShiftDataset, config: str, data_dir: str) -> str:
  """Where tfds keeps a prepared config: `data_dir/<name>/<config>/<version>`."""
  return os.path.join(data_dir, spec.name, config, spec.version)


@functools.lru_cache(maxsize=64)
def _config_builder(config: str, data_dir: str, stamp):
  del stamp  # part of the cache key only
  return builder_class()(config=config, data_dir=data_dir)


def config_builder(spec: ShiftDataset, config: str, data_dir: str):
  """The tfds builder of a prepared config, its `dataset_info.json` read once per process
  (reused while that file keeps its modification time)."""
  info = os.path.join(config_folder(spec, config, data_dir), "dataset_info.json")
  return _config_builder(config, data_dir, os.stat(info).st_mtime_ns)


def _config_state(spec: ShiftDataset, config: str, data_dir: str) -> tuple[str, str]:
  """(folder, state) of one config: 'prepared', 'missing', or why it is unusable."""
  folder = config_folder(spec, config, data_dir)
  if not os.path.exists(os.path.join(folder, "dataset_info.json")):
    return folder, "missing"  # (a builder on a missing folder logs warnings)
  if spec.streamed:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    builder = tfds.builder(f"{spec.name}/{config}", data_dir=data_dir, try_gcs=False)
  else:
    builder = config_builder(spec, config, data_dir)
  if not builder.is_prepared() or os.fspath(builder.data_dir) != folder:
    return folder, "not a complete tfds dataset"
  file_format = str(builder.info.file_format or "")
  if "array_record" not in file_format.lower():
    return folder, f"prepared as {file_format}, but reading it needs array_record"
  return folder, "prepared"


def check_shift_prepared(name: str, data_dir: str | None,
                         configs: Sequence[str] | None = None) -> tuple[str, ...]:
  """Start-up check: every config of shifted dataset `name` (or `configs`) is prepared as
  array_record under `data_dir`. Only local metadata is read (fast, no network).

  Returns:
    The configs checked, in order.

  Raises:
    ValueError: unknown dataset or config (the message lists the known ones).
    FileNotFoundError: a config is missing or unusable; the message names them and
      gives the command that prepares them.
  """
  from mixjax.data import tfds_data  # pylint: disable=g-import-not-at-top
  spec = get_shift_dataset(name)
  configs = tuple(spec.configs if configs is None else configs)
  unknown = [c for c in configs if c not in spec.known_configs]
  if unknown or not configs:
    raise ValueError(f"Unknown {name} configs {unknown or list(configs)}; known: "
                     f"{', '.join(spec.known_configs)}.")
  root = os.path.expanduser(data_dir) if data_dir else tfds_data.default_data_dir()
  bad = {}
  for c in configs:
    folder, state = _config_state(spec, c, root)
    if state != "prepared":
      bad[c] = (folder, state)
  if bad and spec.streamed:  # tfds' own builders: `tfds build`, one line
    first, (folder, state) = next(iter(bad.items()))
    if len(bad) == 1:
      raise FileNotFoundError(tfds_data.preparation_message(
          f"{name}/{first}", folder, data_dir, problem=f"is {state}"))
    # `tfds build NAME` builds every config of NAME.
    raise FileNotFoundError(tfds_data.preparation_message(
        name, folder, data_dir,
        problem=f"has {len(bad)} of the requested configs {state} "
                f"({', '.join(list(bad)[:4])}{', ...' if len(bad) > 4 else ''})"))
  if bad:
    from mixjax.data import prepare  # pylint: disable=g-import-not-at-top
    listed = "; ".join(f"{c} ({state}: {folder})" for c, (folder, state) in bad.items())
    subset = "" if len(bad) == len(spec.configs) else f" --configs={','.join(bad)}"
    raise FileNotFoundError(
        f"Shifted test sets of {name} are not prepared: {listed}. mixjax never downloads "
        "data. " + prepare.instructions(name, root, extra_flags=subset) + "\n"
        f"then pass the same data_dir (--config.dataset.data_dir={root}).")
  return configs


def _streamed_sets(spec: ShiftDataset, root: str, ds, configs
                   ) -> dict[str, Any]:
  """{config: `streaming.EvalSet`} of a streamed shifted dataset (ImageNet-C,
  ImageNetV2): each config's split, normalized like `ds` (a `StreamedDataset`), read
  at its image size by its evaluation workers."""
  from mixjax.data import streaming  # pylint: disable=g-import-not-at-top
  out = {}
  for c in configs:
    split = streaming.open_split(f"{spec.name}/{c}", data_dir=root, split=spec.split,
                                 norm=(ds.norm_mean, ds.norm_std))
    if split.num_classes != ds.num_classes:
      raise ValueError(f"{spec.name}/{c} has {split.num_classes} classes, the model "
                       f"{ds.num_classes}.")
    out[c] = streaming.EvalSet(split, ds.image_size, ds.num_workers)
  return out


def shift_test_sets(name: str, *, data_dir: str | None, ds: ds_lib.Dataset,
                    configs: Sequence[str] | None = None, cache_dir: str | None = None
                    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """The shifted test sets of `name`, preprocessed like the clean test split of `ds`.

  Args:
    name: a key of `SHIFT_DATASETS` (`fashion_mnist_corrupted`).
    data_dir: the tfds data directory it was prepared in.
    ds: the clean dataset the model was trained on (`ds.name` must be the shifted
      dataset's `clean`); its normalization is applied: x = (pixel · raw_scale −
      norm_mean) / norm_std, exactly as `ds.test_x`.
    configs: a subset of the shifts (default: all).
    cache_dir: the array cache's folder (`mixjax.data.cache`; each config's split is
      decoded once); None: decode every time.

  Returns:
    {config: (x float32 (n, 28, 28, 1), y int32 (n,))}, in `configs` order; example j
    of each is the shift of clean test example j (labels equal `ds.test_y`). For a
    streamed dataset (`ShiftDataset.streamed`: ImageNet-C, ImageNetV2; `ds` a
    `streaming.StreamedDataset`), {config: `streaming.EvalSet`}: read when evaluated,
    with labels of its own.

  Raises:
    FileNotFoundError (with the prepare command) when a config is not prepared;
    ValueError when `ds` is not the clean dataset.
  """
  from mixjax.data import cache as cache_lib  # pylint: disable=g-import-not-at-top
  from mixjax.data import tfds_data  # pylint: disable=g-import-not-at-top
  spec = get_shift_dataset(name)
  if ds.name != spec.clean:
    raise ValueError(f"{name} shifts the test split of {spec.clean}, but the model was "
                     f"trained on {ds.name!r}; evaluate it on a shift of its own data.")
  configs = check_shift_prepared(name, data_dir, configs)
  root = os.path.expanduser(data_dir) if data_dir else tfds_data.default_data_dir()
  if spec.streamed:
    return _streamed_sets(spec, root, ds, configs)
  out = {}
  for c in configs:
    builder = config_builder(spec, c, root)
    decode = lambda b=builder: tfds_data.read_split(b.as_data_source(split=spec.split))
    images, labels = cache_lib.cached_split(builder, spec.split, decode,
                                            cache_dir=cache_dir)
    if images.dtype != np.uint8 or images.shape[1:] != tuple(ds.input_shape):
      raise ValueError(f"{name}/{c}: images {images.dtype} {images.shape[1:]}, expected "
                       f"uint8 {tuple(ds.input_shape)}.")
    x = ds_lib.normalize(images, ds.norm_mean, ds.norm_std, scale=ds.raw_scale)
    out[c] = (x, labels.astype(np.int32))
  return out
