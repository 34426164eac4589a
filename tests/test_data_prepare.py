"""mixjax.data.prepare: tfds `fashion_mnist` and `fashion_mnist_corrupted` (Fashion-MNIST-C,
mixjax.data.shift) built offline from local IDX files.

References are independent of the code under test: the tests write small IDX files
themselves (headers packed with `struct`, payload with NumPy, gzip'd), and the real-data
test decodes Debian's files with `gzip` + `np.frombuffer`. tfds shuffles records by key
when it writes, so the read-back is compared as a multiset of (label, image) rows, split
by split, and the counts are checked separately.

The real-data test runs when /usr/share/datasets/fashion-mnist exists (Debian's
`dataset-fashion-mnist`); under CI (`CI` set) its absence is a failure, not a skip.
"""
from __future__ import annotations

import dataclasses
import gzip
import json
import os
import struct
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from helpers import FILES, idx_bytes, make_arrays, write_source  # pylint: disable=g-bad-import-order
from mixjax import data as data_lib
from mixjax.data import prepare
from mixjax.data import tfds_data
from mixjax.train import config as config_lib
from mixjax.train import sweeps
from mixjax.train import validate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
# tfds' own FashionMNIST class names (tensorflow_datasets/image_classification/mnist.py).
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
               "Sneaker", "Bag", "Ankle boot"]


def rows(images: np.ndarray, labels: np.ndarray) -> list[bytes]:
  """The multiset of (label, image) pairs as sorted byte strings."""
  images = np.asarray(images, np.uint8).reshape(len(labels), -1)
  table = np.concatenate([np.asarray(labels, np.uint8)[:, None], images], axis=1)
  return sorted(r.tobytes() for r in table)


def read_back(data_dir, split, name="fashion_mnist"):
  """(images (n, 28, 28, 1), labels (n,)) through `tfds.data_source`, one key at a time,
  in the order tfds stored them."""
  source = tfds.data_source(name, split=split, data_dir=str(data_dir),
                            download=False, try_gcs=False)
  examples = [source[i] for i in range(len(source))]
  return (np.stack([np.asarray(e["image"]) for e in examples]),
          np.array([int(e["label"]) for e in examples]))


def assert_nothing_prepared(out) -> None:
  """No dataset, no temporary folder: `out` is absent or empty."""
  assert not os.path.exists(out) or os.listdir(out) == [], os.listdir(out)
  assert not tfds.builder("fashion_mnist", data_dir=str(out), try_gcs=False).is_prepared()


def run(args, **kwargs):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=240, **kwargs)


@pytest.fixture
def source(tmp_path):
  arrays = make_arrays()
  folder = tmp_path / "src"
  write_source(folder, arrays)
  return folder, arrays


# ------------------------------------------------------------------------- the build


def test_prepare_reads_back_exactly_with_tfds_features(source, tmp_path):
  src, arrays = source
  out = tmp_path / "tfds"
  path, built = prepare.prepare("fashion_mnist", data_dir=str(out), source_dir=str(src))
  assert built and path == str(out / "fashion_mnist" / "3.0.1")
  assert sorted(os.listdir(out)) == ["fashion_mnist"]  # no temporary folder left

  for split, (images, labels) in arrays.items():
    got_images, got_labels = read_back(out, split)
    assert got_images.shape == (len(labels), 28, 28, 1) and got_images.dtype == np.uint8
    assert rows(got_images, got_labels) == rows(images, labels)

  # Name, version, splits and features of tfds' own builder (its class, not our files).
  own = tfds.builder("fashion_mnist", data_dir=str(tmp_path / "empty"), try_gcs=False)
  info = tfds.builder("fashion_mnist", data_dir=str(out), try_gcs=False).info
  assert (info.name, str(info.version)) == ("fashion_mnist", str(own.info.version))
  assert str(info.version) == "3.0.1"
  assert "array_record" in str(info.file_format).lower()
  assert {s: info.splits[s].num_examples for s in info.splits} == {"train": 30, "test": 12}
  assert info.features.to_json() == own.info.features.to_json()
  assert info.features["image"].shape == (28, 28, 1)
  assert info.features["image"].np_dtype == np.uint8
  assert info.features["label"].names == CLASS_NAMES
  assert info.supervised_keys == own.info.supervised_keys

  # mixjax's loader reads it: undoing the normalization gives the same pixels.
  ds = data_lib.load_dataset("fashion_mnist", data_dir=str(out), val_fraction=0.0)
  assert ds.num_classes == 10 and ds.input_shape == (28, 28, 1)
  pixels = np.rint((ds.test_x * ds.norm_std + ds.norm_mean) / ds.raw_scale)
  assert rows(pixels.astype(np.uint8), ds.test_y) == rows(*arrays["test"])


def test_rerun_is_a_noop_that_does_not_read_the_sources(source, tmp_path):
  src, _ = source
  out = tmp_path / "tfds"
  path, built = prepare.prepare("fashion_mnist", data_dir=str(out), source_dir=str(src))
  assert built
  before = {f: os.stat(os.path.join(path, f)).st_mtime_ns for f in os.listdir(path)}
  # Sources gone: a no-op must not need them.
  for f in os.listdir(src):
    os.remove(src / f)
  assert prepare.prepare("fashion_mnist", data_dir=str(out), source_dir=str(src)) == (
      path, False)
  assert {f: os.stat(os.path.join(path, f)).st_mtime_ns for f in os.listdir(path)} == before


def _truncate_payload(blob):  # valid gzip, IDX payload 100 bytes short
  return gzip.compress(gzip.decompress(blob)[:-100])


def _set_magic(magic):
  def edit(blob):
    raw = bytearray(gzip.decompress(blob))
    raw[:4] = struct.pack(">I", magic)
    return gzip.compress(bytes(raw))
  return edit


def _corrupt_deflate(blob):  # flip bytes inside the compressed stream
  b = bytearray(blob)
  for i in range(20, 60):
    b[i] ^= 0xFF
  return bytes(b)


CORRUPTIONS = {
    # name: (file, edit of the gzip'd bytes, fragment of the message)
    "bad_magic": ("train-images-idx3-ubyte.gz", _set_magic(0x00000801),
                  "bad IDX magic number 0x00000801; expected 0x00000803"),
    "bad_label_magic": ("t10k-labels-idx1-ubyte.gz", _set_magic(0x00000903),
                        "bad IDX magic number 0x00000903; expected 0x00000801"),
    "truncated_payload": ("t10k-images-idx3-ubyte.gz", _truncate_payload, "truncated"),
    "truncated_gzip": ("train-labels-idx1-ubyte.gz", lambda b: b[:len(b) // 2],
                       "not a valid gzip file"),
    "not_gzip": ("train-images-idx3-ubyte.gz", gzip.decompress, "not a valid gzip file"),
    "corrupted_gzip": ("train-images-idx3-ubyte.gz", _corrupt_deflate,
                       "not a valid gzip file"),
    "empty_file": ("t10k-labels-idx1-ubyte.gz", lambda b: b"", "bad IDX magic number"),
    "missing_file": ("t10k-labels-idx1-ubyte.gz", None, "no such file"),
}


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_corrupted_file_is_named_and_nothing_is_written(source, tmp_path, name):
  src, _ = source
  filename, edit, fragment = CORRUPTIONS[name]
  bad = src / filename
  if edit is None:
    os.remove(bad)
  else:
    bad.write_bytes(edit(bad.read_bytes()))
  out = tmp_path / "tfds"
  with pytest.raises(prepare.PrepareError) as err:
    prepare.prepare("fashion_mnist", data_dir=str(out), source_dir=str(src))
  msg = str(err.value)
  assert str(bad) in msg and fragment in msg, msg
  assert_nothing_prepared(out)


@pytest.mark.parametrize("name", ["count_mismatch", "wrong_image_size", "label_range"])
def test_inconsistent_files_are_refused(tmp_path, name):
  arrays = make_arrays()
  images, labels = arrays["test"]
  if name == "count_mismatch":
    arrays["test"] = (images, labels[:-1])
  elif name == "wrong_image_size":
    arrays["test"] = (images[:, :27], labels)
  else:
    labels = labels.copy()
    labels[3] = 10
    arrays["test"] = (images, labels)
  src, out = tmp_path / "src", tmp_path / "tfds"
  write_source(src, arrays)
  with pytest.raises(prepare.PrepareError) as err:
    prepare.prepare("fashion_mnist", data_dir=str(out), source_dir=str(src))
  msg = str(err.value)
  named = FILES["test"][1] if name == "label_range" else FILES["test"][0]
  assert str(src / named) in msg, msg
  expected = {"count_mismatch": "holds 12 images but",
              "wrong_image_size": "images of shape (27, 28), expected (28, 28)",
              "label_range": "label 10 outside [0, 10)"}[name]
  assert expected in msg, msg
  if name == "count_mismatch":
    assert str(src / FILES["test"][1]) in msg and "holds 11 labels" in msg
  assert_nothing_prepared(out)


def test_failure_inside_the_tfds_build_leaves_nothing(source, tmp_path, monkeypatch):
  """A build that dies half-way (here: the example generator raises after 5 examples)
  leaves neither a dataset nor the temporary folder."""
  src, _ = source
  original = prepare._local_builder_class

  def failing(src_info, arrays):
    cls = original(src_info, arrays)

    class Failing(cls, skip_registration=True):
      name = cls.name

      def _generate_examples(self, split):
        for i, example in enumerate(super()._generate_examples(split)):
          if i == 5:
            raise RuntimeError("disk full (simulated)")
          yield example
    return Failing

  monkeypatch.setattr(prepare, "_local_builder_class", failing)
  out = tmp_path / "tfds"
  with pytest.raises(RuntimeError, match="simulated"):
    prepare.prepare("fashion_mnist", data_dir=str(out), source_dir=str(src))
  assert_nothing_prepared(out)


def test_folder_in_the_way_is_refused(source, tmp_path):
  src, _ = source
  out = tmp_path / "tfds"
  (out / "fashion_mnist" / "3.0.1").mkdir(parents=True)
  with pytest.raises(prepare.PrepareError, match="exists but is not a prepared dataset"):
    prepare.prepare("fashion_mnist", data_dir=str(out), source_dir=str(src))
  assert os.listdir(out / "fashion_mnist" / "3.0.1") == []


# ------------------------------------------------------ the missing-data message + CLI


def test_missing_data_message_gives_both_routes(tmp_path):
  with pytest.raises(FileNotFoundError) as err:
    data_lib.load_dataset("fashion_mnist", data_dir=str(tmp_path))
  msg = str(err.value)
  assert "apt-get install dataset-fashion-mnist" in msg
  assert f"python -m mixjax.data.prepare --dataset=fashion_mnist --data_dir={tmp_path}" in msg
  assert (f"python -m mixjax.data.prepare --dataset=fashion_mnist --source_dir=SRC "
          f"--data_dir={tmp_path}") in msg
  assert all(f in msg for pair in FILES.values() for f in pair)
  assert f"--config.dataset.data_dir={tmp_path}" in msg
  assert list(tmp_path.iterdir()) == []
  # CIFAR keeps its own route (tfds build on a connected machine).
  cifar = tfds_data.preparation_message("cifar10", "X", str(tmp_path))
  assert "tfds build cifar10" in cifar and "apt-get" not in cifar


def test_cli_follows_the_message(source, tmp_path):
  """The CLI: a corrupted file exits 1 naming it (no traceback, nothing written); then
  the --source_dir command of the missing-data message, run as printed, prepares the
  data; run again, it says there is nothing to do."""
  src, arrays = source
  out = tmp_path / "tfds"
  bad = src / FILES["train"][0]
  good = bad.read_bytes()
  bad.write_bytes(good[:len(good) // 3])
  r = run(["-m", "mixjax.data.prepare", "--dataset=fashion_mnist", f"--source_dir={src}",
           f"--data_dir={out}"])
  assert r.returncode == 1, r.stderr[-2000:]
  assert str(bad) in r.stderr and "Traceback" not in r.stderr + r.stdout
  assert_nothing_prepared(out)
  bad.write_bytes(good)

  msg = tfds_data.preparation_message("fashion_mnist", "X", str(out))
  line = next(l for l in msg.splitlines() if "--source_dir=SRC" in l)
  cmd = line.strip().replace("SRC", str(src)).split()
  assert cmd[:3] == ["python", "-m", "mixjax.data.prepare"]
  r = run(cmd[1:])
  assert r.returncode == 0, r.stderr[-2000:]
  assert "Prepared fashion_mnist" in r.stdout
  assert rows(*read_back(out, "test")) == rows(*arrays["test"])
  r = run(cmd[1:])
  assert r.returncode == 0 and "already prepared" in r.stdout and "nothing to do" in r.stdout


_QUIET_LOAD = """
import sys
from mixjax import data
ds = data.load_dataset("fashion_mnist", data_dir=sys.argv[1], val_fraction=0.0)
print(ds.test_x.shape[0])
try:
  data.load_dataset("fashion_mnist", data_dir=sys.argv[2])
except FileNotFoundError:
  print("missing")
"""


def test_offline_preparation_and_loading_are_quiet(source, tmp_path):
  """Preparing offline prints one line, "Prepared ...", and nothing on stderr: no tfds
  "Downloading and preparing dataset" / "downloaded and prepared to" wording and no
  "has no dataset_info.json" warning (for either dataset). Loading it prints no OpenCV
  advice (when OpenCV is absent, tfds gives it on the first image decoded), and a
  missing dataset raises without the dataset_info.json warning."""
  src, arrays = source
  out = tmp_path / "tfds"
  for args in (["--dataset=fashion_mnist"],
               ["--dataset=fashion_mnist_corrupted", "--configs=shot_noise"]):
    r = run(["-m", "mixjax.data.prepare", *args, f"--source_dir={src}",
             f"--data_dir={out}"])
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [l for l in r.stdout.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("Prepared "), r.stdout
    assert not r.stderr.strip(), r.stderr
  (tmp_path / "empty").mkdir()
  r = run(["-c", _QUIET_LOAD, str(out), str(tmp_path / "empty")])
  assert r.returncode == 0, r.stderr[-2000:]
  assert r.stdout.split() == [str(len(arrays["test"][1])), "missing"], r.stdout
  for noise in ("OpenCV", "dataset_info.json", "Downloading"):
    assert noise not in r.stderr, r.stderr
  try:
    import cv2  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError:  # the advice would be given: check that it is given without mixjax
    plain = run(["-c", "import sys, tensorflow_datasets as tfds; "
                 "s = tfds.data_source('fashion_mnist', split='test', data_dir=sys.argv[1]); "
                 "s[0]", str(out)])
    assert "OpenCV is not installed" in plain.stderr, plain.stderr[-2000:]


def test_main_without_data_exits_4_with_both_routes(tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  r = run(["-m", "mixjax.main", "--config=experiments/fashion_mnist.py",
           f"--workdir={tmp_path / 'w'}", f"--config.dataset.data_dir={empty}"])
  assert r.returncode == 4, r.stderr[-3000:]
  lines = [l for l in r.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and not r.stdout.strip(), r.stderr[-3000:] + r.stdout
  err = lines[0]
  assert "Traceback" not in err + r.stdout
  assert "apt-get install dataset-fashion-mnist" in err
  assert "--source_dir=SRC" in err and f"--data_dir={empty}" in err
  assert list(empty.iterdir()) == []


# --------------------------------------------------------------------------- configs


def test_fashion_mnist_configs():
  module = sweeps.load_config_module(os.path.join(ROOT, "experiments",
                                                      "fashion_mnist.py"))
  base_keys = set(config_lib.base_config().to_dict())
  for arg in (None, *module.VARIANTS):
    c = module.get_config(arg)
    assert c.dataset.name == "fashion_mnist" and set(c.to_dict()) == base_keys
    assert c.augment.enabled and c.augment.flip and 2 <= c.augment.crop_padding <= 4
    for ndev in (1, 4):
      validate.validate_config(c, num_devices=ndev, check_data=False)
    for point in module.get_sweep():
      validate.validate_config(sweeps.sweep_config(c, point), num_devices=4, check_data=False)
  gpu = module.get_config("gpu")
  assert (gpu.model.name, gpu.num_epochs, gpu.batch_size) == ("preact_resnet18", 200, 128)
  assert (gpu.optimizer.name, gpu.optimizer.lr, gpu.optimizer.momentum) == ("sgd", 0.1, 0.9)
  assert (gpu.optimizer.schedule, gpu.optimizer.weight_decay) == ("cosine", 5e-4)
  assert {p.get("method.name") for p in module.get_sweep()} == {"erm", "mixup"}
  with pytest.raises(ValueError, match="cpu, gpu, cpu_he"):
    module.get_config("tpu")
  # The CPU recipe initializes as PyTorch does; "cpu_he" is the same recipe with the
  # models' default initialization (the studies' base), and differs in nothing else.
  cpu, he = module.get_config("cpu").to_dict(), module.get_config("cpu_he").to_dict()
  assert cpu["model"]["kwargs"].pop("weight_init") == "torch"
  assert "weight_init" not in he["model"]["kwargs"] and cpu == he


# ------------------------------------------------------------------------- real data


def decode_idx(path: str, magic: int, header: int) -> np.ndarray:
  """The test's own IDX decoding: check the magic, skip the header."""
  with gzip.open(path, "rb") as f:
    raw = f.read()
  assert struct.unpack(">I", raw[:4])[0] == magic
  return np.frombuffer(raw, np.uint8, offset=header)


@pytest.mark.slow
def test_real_fashion_mnist_prepare_and_train(tmp_path):
  """Debian's Fashion-MNIST: all 70,000 examples read back exactly; two corruptions of
  Fashion-MNIST-C built from the same files and read as shifted test sets; then 300 steps
  of the CPU recipe (a narrower CNN) on real images reach a sane test accuracy."""
  if not os.path.exists(os.path.join(DEBIAN_DIR, FILES["train"][0])):
    if os.environ.get("CI"):
      pytest.fail(f"CI is set but {DEBIAN_DIR} is missing: .ci/run installs "
                  "dataset-fashion-mnist (apt-get) before the tests.")
    pytest.skip(f"{DEBIAN_DIR} absent (apt-get install dataset-fashion-mnist)")
  out = tmp_path / "tfds"
  _, built = prepare.prepare("fashion_mnist", data_dir=str(out))  # default source_dir
  assert built
  for split, (images_name, labels_name) in FILES.items():
    images = decode_idx(os.path.join(DEBIAN_DIR, images_name), 0x803, 16)
    labels = decode_idx(os.path.join(DEBIAN_DIR, labels_name), 0x801, 8)
    n = {"train": 60000, "test": 10000}[split]
    assert labels.shape == (n,) and images.shape == (n * 28 * 28,)
    source = tfds.data_source("fashion_mnist", split=split, data_dir=str(out),
                              download=False, try_gcs=False)
    got_images, got_labels = tfds_data.read_split(source)
    assert got_images.shape == (n, 28, 28, 1)
    assert rows(got_images, got_labels) == rows(images, labels)

  # Fashion-MNIST-C: two corruptions of the whole test split (default source_dir), read
  # for evaluation like the clean test split: same order and labels, same normalization.
  shifts = ("shot_noise", "stripe")
  _, built = prepare.prepare("fashion_mnist_corrupted", data_dir=str(out), configs=shifts)
  assert built
  ds = data_lib.load_dataset("fashion_mnist", data_dir=str(out))
  sets = data_lib.shift_test_sets("fashion_mnist_corrupted", data_dir=str(out), ds=ds,
                                  configs=shifts)
  raw = np.rint((ds.test_x * ds.norm_std + ds.norm_mean) / ds.raw_scale)
  for c, (x, y) in sets.items():
    assert x.shape == (10000, 28, 28, 1)
    np.testing.assert_array_equal(y, ds.test_y)
    assert np.mean(np.abs(x - ds.test_x)) > 0.1, c
  raw[:, :, :7] = 255 - raw[:, :, :7]
  raw[:, :, 21:] = 255 - raw[:, :, 21:]
  np.testing.assert_allclose(sets["stripe"][0],
                             (raw * ds.raw_scale - ds.norm_mean) / ds.norm_std, atol=1e-5)
  del ds, sets, raw

  module = sweeps.load_config_module(os.path.join(ROOT, "experiments",
                                                      "fashion_mnist.py"))
  config = sweeps.sweep_config(module.get_config(), {
      "dataset.data_dir": str(out), "num_steps": 300, "eval.every_epochs": 0,
      "model.kwargs": {"stages": ((32,), (64,)), "dense_sizes": (256,)},
      "log_every_steps": 100, "checkpoint_every_steps": 1000,
      "eval.shift": tuple(f"fashion_mnist_corrupted/{c}" for c in shifts)})
  from mixjax.train import groups  # pylint: disable=g-import-not-at-top
  summary = groups.train_and_evaluate(config, str(tmp_path / "run"),
                                    devices=jax.devices()[:1])
  with open(tmp_path / "run" / "summary.json") as f:
    assert json.load(f)["test"]["accuracy"] == summary["test"]["accuracy"]
  # Chance is 10%; these 300 steps reached 0.801 on the 2-core development CPU (seed 0).
  assert summary["test"]["accuracy"] >= 0.75, summary["test"]
  # The shifted sets: each corruption's metrics, recomputed from predictions.npz, and
  # their mean; stripes (inverted image borders) cost accuracy.
  z = np.load(tmp_path / "run" / "predictions.npz")
  for col, suffix in (("shift", ""), ("shift_rescaled", "_rescaled")):
    res = summary[col]
    assert set(res) == set(shifts) | {"mean"}
    for c in shifts:
      logits = z[f"shift_{c}_logits{suffix}"]
      acc = float(np.mean(np.argmax(logits, 1) == z["test_labels"]))
      assert res[c]["accuracy"] == pytest.approx(acc, abs=1e-6)
    assert res["mean"]["accuracy"] == pytest.approx(
        np.mean([res[c]["accuracy"] for c in shifts]), abs=1e-12)
  assert summary["shift"]["stripe"]["accuracy"] < summary["test"]["accuracy"] - 0.05

  # CutMix (a mask law, one box per example) through the same recipe.
  cutmix = sweeps.sweep_config(config, {"sampler.name": "cutmix",
                                        "sampler.params": {"alpha": 1.0},
                                        "eval.shift": ()})
  summary = groups.train_and_evaluate(cutmix, str(tmp_path / "cutmix"),
                                      devices=jax.devices()[:1])
  assert summary["sampler"] == {"name": "cutmix", "params": {"alpha": 1.0},
                                "label": "CutMix(1)"}
  assert 0.5 < summary["theta_bar"] < 1 and summary["strength"] > 0
  assert summary["test"]["accuracy"] >= 0.7, summary["test"]


# ------------------------------------------------- fashion_mnist_corrupted (Fashion-MNIST-C)

CONFIGS = ("shot_noise", "stripe", "rotate")


def corrupted_names(out):
  return sorted(os.listdir(os.path.join(out, "fashion_mnist_corrupted")))


@pytest.fixture(scope="module")
def corrupted(tmp_path_factory):
  """A synthetic source, fashion_mnist and three corruptions of it prepared from it."""
  root = tmp_path_factory.mktemp("corrupted")
  arrays = make_arrays(seed=3, n_train=30, n_test=40)
  write_source(root / "src", arrays)
  out = root / "tfds"
  prepare.prepare("fashion_mnist", data_dir=str(out), source_dir=str(root / "src"))
  path, built = prepare.prepare("fashion_mnist_corrupted", data_dir=str(out),
                                source_dir=str(root / "src"), configs=CONFIGS)
  assert built and path == str(out / "fashion_mnist_corrupted")
  return out, arrays


def test_corrupted_configs_are_corruptions_of_the_clean_test_split_in_its_order(corrupted):
  """Each config's test split, read with tfds.data_source, holds corruption(clean test
  image j) at the position where fashion_mnist's test split holds clean image j (same
  keys, same tfds order), with the same label; the features are fashion_mnist's."""
  from mixjax.data import corruptions  # pylint: disable=g-import-not-at-top
  out, arrays = corrupted
  src_images, src_labels = arrays["test"]
  assert sorted(os.listdir(out)) == ["fashion_mnist", "fashion_mnist_corrupted"]
  assert corrupted_names(out) == sorted(CONFIGS)
  clean_images, clean_labels = read_back(out, "test")
  # Where each clean example came from in the source (the synthetic images are distinct).
  index = {img.tobytes(): i for i, img in enumerate(src_images)}
  origin = np.array([index[img[..., 0].tobytes()] for img in clean_images])
  np.testing.assert_array_equal(src_labels[origin], clean_labels)
  own = tfds.builder("fashion_mnist", data_dir=str(out), try_gcs=False).info
  for c in CONFIGS:
    images, labels = read_back(out, "test", f"fashion_mnist_corrupted/{c}")
    np.testing.assert_array_equal(labels, clean_labels)
    want = corruptions.corrupt(src_images, c)[origin]
    np.testing.assert_array_equal(images[..., 0], want)
    assert np.any(images[..., 0] != src_images[origin])
    info = tfds.builder(f"fashion_mnist_corrupted/{c}", data_dir=str(out),
                        try_gcs=False).info
    assert (info.name, str(info.version), info.config_name) == (
        "fashion_mnist_corrupted", "1.0.0", c)
    assert "array_record" in str(info.file_format).lower()
    assert {s: info.splits[s].num_examples for s in info.splits} == {"test": 40}
    assert info.features.to_json() == own.features.to_json()
    assert info.supervised_keys == own.supervised_keys


def test_shift_test_sets_are_preprocessed_like_the_clean_test_split(corrupted):
  out, _ = corrupted
  ds = data_lib.load_dataset("fashion_mnist", data_dir=str(out), val_fraction=0.2)
  sets = data_lib.shift_test_sets("fashion_mnist_corrupted", data_dir=str(out), ds=ds,
                                  configs=("stripe", "rotate"))
  assert list(sets) == ["stripe", "rotate"]
  raw = np.rint((ds.test_x * ds.norm_std + ds.norm_mean) / ds.raw_scale)
  striped = raw.copy()
  striped[:, :, :7] = 255 - striped[:, :, :7]
  striped[:, :, 21:] = 255 - striped[:, :, 21:]
  for c, (x, y) in sets.items():
    assert x.dtype == np.float32 and x.shape == ds.test_x.shape
    np.testing.assert_array_equal(y, ds.test_y)
  np.testing.assert_allclose(sets["stripe"][0],
                             (striped * ds.raw_scale - ds.norm_mean) / ds.norm_std,
                             atol=1e-5)
  # The default is every corruption: here three are missing, named with the fix.
  with pytest.raises(FileNotFoundError) as err:
    data_lib.shift_test_sets("fashion_mnist_corrupted", data_dir=str(out), ds=ds)
  msg = str(err.value)
  assert "impulse_noise (missing:" in msg and "stripe (" not in msg
  assert (f"python -m mixjax.data.prepare --dataset=fashion_mnist_corrupted --configs="
          f"impulse_noise,glass_blur,motion_blur,shear,scale,brightness,translate,fog,"
          f"spatter,dotted_line,zigzag,canny_edges --data_dir={out}") in msg
  assert "apt-get install dataset-fashion-mnist" in msg
  other = dataclasses.replace(ds, name="mnist")
  with pytest.raises(ValueError, match="shifts the test split of fashion_mnist"):
    data_lib.shift_test_sets("fashion_mnist_corrupted", data_dir=str(out), ds=other)


def test_check_shift_prepared_at_start_up(corrupted, tmp_path):
  out, _ = corrupted
  assert data_lib.check_shift_prepared("fashion_mnist_corrupted", str(out),
                                       CONFIGS) == CONFIGS
  with pytest.raises(FileNotFoundError) as err:
    data_lib.check_shift_prepared("fashion_mnist_corrupted", str(tmp_path))
  msg = str(err.value)  # nothing prepared: the command builds everything (no --configs)
  assert (f"python -m mixjax.data.prepare --dataset=fashion_mnist_corrupted "
          f"--data_dir={tmp_path}") in msg
  assert list(tmp_path.iterdir()) == []
  with pytest.raises(ValueError, match="Unknown fashion_mnist_corrupted configs"):
    data_lib.check_shift_prepared("fashion_mnist_corrupted", str(out), ("frost",))
  with pytest.raises(ValueError, match="Unknown shifted dataset"):
    data_lib.check_shift_prepared("cifar10_corrupted", str(out))


def test_corrupted_rerun_is_a_noop_and_a_larger_run_adds_only_the_missing(source,
                                                                          tmp_path):
  src, _ = source
  out = tmp_path / "tfds"
  kwargs = dict(data_dir=str(out), source_dir=str(src))
  _, built = prepare.prepare("fashion_mnist_corrupted", configs=("stripe",), **kwargs)
  assert built
  folder = out / "fashion_mnist_corrupted" / "stripe" / "1.0.0"
  before = {f: os.stat(folder / f).st_mtime_ns for f in os.listdir(folder)}
  saved = {f: (src / f).read_bytes() for f in os.listdir(src)}
  for f in saved:  # a no-op needs no source
    os.remove(src / f)
  assert prepare.prepare("fashion_mnist_corrupted", configs=("stripe",), **kwargs)[1] is False
  for f, b in saved.items():
    (src / f).write_bytes(b)
  _, built = prepare.prepare("fashion_mnist_corrupted", configs=("brightness", "stripe"),
                             **kwargs)
  assert built and corrupted_names(out) == ["brightness", "stripe"]
  assert {f: os.stat(folder / f).st_mtime_ns for f in os.listdir(folder)} == before
  assert sorted(os.listdir(out)) == ["fashion_mnist_corrupted"]  # no temporary folder


def test_corrupted_build_failing_half_way_installs_no_config(source, tmp_path,
                                                             monkeypatch):
  """The second config's corruption fails: neither config is installed (the first was
  built, but configs are renamed into place only once all are built)."""
  from mixjax.data import corruptions  # pylint: disable=g-import-not-at-top
  src, _ = source
  original = corruptions.corrupt

  def failing(images, name, **kw):
    if name == "brightness":
      raise RuntimeError("out of memory (simulated)")
    return original(images, name, **kw)

  monkeypatch.setattr(corruptions, "corrupt", failing)
  out = tmp_path / "tfds"
  with pytest.raises(RuntimeError, match="simulated"):
    prepare.prepare("fashion_mnist_corrupted", data_dir=str(out), source_dir=str(src),
                    configs=("stripe", "brightness"))
  assert not out.exists() or list(out.iterdir()) == []


@pytest.mark.parametrize("name", ["truncated_payload", "missing_file"])
def test_corrupted_build_refuses_a_bad_source(source, tmp_path, name):
  src, _ = source
  filename, edit, fragment = {
      "truncated_payload": ("t10k-images-idx3-ubyte.gz", _truncate_payload, "truncated"),
      "missing_file": ("t10k-labels-idx1-ubyte.gz", None, "no such file")}[name]
  bad = src / filename
  if edit is None:
    os.remove(bad)
  else:
    bad.write_bytes(edit(bad.read_bytes()))
  out = tmp_path / "tfds"
  with pytest.raises(prepare.PrepareError) as err:
    prepare.prepare("fashion_mnist_corrupted", data_dir=str(out), source_dir=str(src),
                    configs=("stripe",))
  assert str(bad) in str(err.value) and fragment in str(err.value)
  assert not out.exists() or list(out.iterdir()) == []


def test_corrupted_build_refuses_bad_configs_and_folders_in_the_way(source, tmp_path):
  src, _ = source
  out = tmp_path / "tfds"
  with pytest.raises(prepare.PrepareError, match="Unknown fashion_mnist_corrupted "
                                                 "configs: frost"):
    prepare.prepare("fashion_mnist_corrupted", data_dir=str(out), source_dir=str(src),
                    configs=("stripe", "frost"))
  with pytest.raises(prepare.PrepareError, match="has no configs"):
    prepare.prepare("fashion_mnist", data_dir=str(out), source_dir=str(src),
                    configs=("stripe",))
  (out / "fashion_mnist_corrupted" / "stripe" / "1.0.0").mkdir(parents=True)
  with pytest.raises(prepare.PrepareError, match="exists but is not a prepared dataset"):
    prepare.prepare("fashion_mnist_corrupted", data_dir=str(out), source_dir=str(src),
                    configs=("stripe",))


def test_corrupted_cli_follows_the_start_up_message(source, tmp_path):
  """The command that check_shift_prepared prints, run as printed (with --source_dir),
  builds the missing config; run again, it has nothing to do."""
  src, arrays = source
  out = tmp_path / "tfds"
  with pytest.raises(FileNotFoundError) as err:
    data_lib.check_shift_prepared("fashion_mnist_corrupted", str(out), ("stripe",))
  line = next(l for l in str(err.value).splitlines() if "--source_dir=SRC" in l)
  cmd = line.strip().replace("SRC", str(src)).split()
  assert cmd[:3] == ["python", "-m", "mixjax.data.prepare"] and "--configs=stripe" in cmd
  r = run(cmd[1:])
  assert r.returncode == 0, r.stderr[-2000:]
  assert "Prepared fashion_mnist_corrupted" in r.stdout
  images, labels = read_back(out, "test", "fashion_mnist_corrupted/stripe")
  want = arrays["test"][0].copy()
  want[:, :, :7] = 255 - want[:, :, :7]
  want[:, :, 21:] = 255 - want[:, :, 21:]
  assert rows(images, labels) == rows(want, arrays["test"][1])
  r = run(cmd[1:])
  assert r.returncode == 0 and "nothing to do" in r.stdout


def real_data_or_skip():
  if not os.path.exists(os.path.join(DEBIAN_DIR, FILES["test"][0])):
    if os.environ.get("CI"):
      pytest.fail(f"CI is set but {DEBIAN_DIR} is missing: .ci/run installs "
                  "dataset-fashion-mnist (apt-get) before the tests.")
    pytest.skip(f"{DEBIAN_DIR} absent (apt-get install dataset-fashion-mnist)")


# The build on real images (the first 50 Debian test images, three corruptions with
# random draws): what tfds stores is `corruptions.corrupt` of the clean images, in order
# and with their labels, and the draws are fixed per image: building again gives the same
# bytes, and image i does not depend on how many images are built.
SMALL_BUILD_CONFIGS = ("impulse_noise", "glass_blur", "zigzag")


def test_real_small_build_is_the_corruption_of_each_image_and_deterministic(tmp_path):
  from mixjax.data import corruptions  # pylint: disable=g-import-not-at-top
  real_data_or_skip()
  images = decode_idx(os.path.join(DEBIAN_DIR, FILES["test"][0]), 0x803, 16)
  labels = decode_idx(os.path.join(DEBIAN_DIR, FILES["test"][1]), 0x801, 8)
  images = images.reshape(-1, 28, 28)[:50]
  labels = labels[:50]
  src = tmp_path / "src"
  src.mkdir()
  for name, array in zip(FILES["test"], (images, labels)):
    (src / name).write_bytes(gzip.compress(idx_bytes(array)))
  built = []
  for k in range(2):
    out = tmp_path / f"tfds{k}"
    prepare.prepare("fashion_mnist_corrupted", data_dir=str(out), source_dir=str(src),
                    configs=SMALL_BUILD_CONFIGS)
    built.append({c: read_back(out, "test", f"fashion_mnist_corrupted/{c}")
                  for c in SMALL_BUILD_CONFIGS})
  for c in SMALL_BUILD_CONFIGS:
    got_images, got_labels = built[0][c]
    assert rows(got_images, got_labels) == rows(corruptions.corrupt(images, c), labels)
    np.testing.assert_array_equal(built[1][c][0], got_images)   # same bytes again
    np.testing.assert_array_equal(built[1][c][1], got_labels)
    everything = np.asarray(corruptions.corrupt(images, c))
    np.testing.assert_array_equal(corruptions.corrupt(images[:7], c), everything[:7])
    changed = np.any(everything.reshape(50, -1) != images.reshape(50, -1), axis=1)
    assert changed.sum() >= 45, (c, changed.sum())              # it did corrupt them
