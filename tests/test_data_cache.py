"""mixjax.data.cache: decoded tfds splits kept as arrays, checked before they are used.

A tiny Fashion-MNIST (random IDX files written here, 30 train / 12 test images) is
prepared with `mixjax.data.prepare` once per module; every load is compared with the same
load without the cache (`cache_dir=None`, tfds decoding every image), and whether tfds
decoded is counted on `tfds_data._decode`. The damaged-cache cases edit the files on disk
as a crash or a bad disk would: a flipped byte, a truncated file, a manifest that no
longer parses, a manifest of another version.
"""
from __future__ import annotations

import gzip
import json
import os
import struct

import numpy as np
import pytest
import tensorflow_datasets as tfds

from mixjax import data as data_lib
from mixjax.data import cache as cache_lib
from mixjax.data import prepare
from mixjax.data import tfds_data

FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def _idx(array: np.ndarray) -> bytes:
  header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
  return header + b"".join(struct.pack(">I", d) for d in array.shape) + array.tobytes()


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  """(data_dir, {split: (images (n, 28, 28), labels)}) of a prepared tiny Fashion-MNIST."""
  root = tmp_path_factory.mktemp("fm")
  rng = np.random.default_rng(0)
  arrays = {}
  os.makedirs(root / "src")
  for split, n in (("train", 30), ("test", 12)):
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    arrays[split] = (images, labels)
    for name, a in zip(FILES[split], (images, labels)):
      with open(root / "src" / name, "wb") as f:
        f.write(gzip.compress(_idx(a)))
  prepare.prepare("fashion_mnist", data_dir=str(root / "data"), source_dir=str(root / "src"))
  return str(root / "data"), arrays


@pytest.fixture
def decodes(monkeypatch):
  """The splits tfds decoded during the test, in order."""
  calls = []
  real = tfds_data._decode

  def counting(builder, split, **kwargs):
    calls.append(split)
    return real(builder, split, **kwargs)
  monkeypatch.setattr(tfds_data, "_decode", counting)
  return calls


def _load(data_dir, cache_dir):
  return data_lib.load_dataset("fashion_mnist", data_dir=data_dir, val_fraction=0.2,
                               seed=3, cache_dir=cache_dir)


def _assert_same(a, b):
  for f in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y", "norm_mean",
            "norm_std"):
    x, y = getattr(a, f), getattr(b, f)
    assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y), f


def _entries(cache_dir):
  """{split: entry path without extension} of the cache's fashion_mnist entries."""
  out = {}
  for dirpath, _, files in os.walk(cache_dir):
    for f in files:
      if f.endswith(".npz"):
        out[f.split(".")[0]] = os.path.join(dirpath, f[:-4])
  return out


def test_second_load_reads_the_cache_and_equals_the_decoded_data(prepared, tmp_path,
                                                                 decodes):
  data_dir, arrays = prepared
  reference = _load(data_dir, None)
  assert decodes == ["train", "test"]
  first = _load(data_dir, str(tmp_path))
  assert decodes == ["train", "test"] * 2   # decoded, then written
  second = _load(data_dir, str(tmp_path))
  assert decodes == ["train", "test"] * 2   # read back, nothing decoded
  _assert_same(first, reference)
  _assert_same(second, reference)
  # The cached test images are the source's, in tfds' stored order: the same multiset.
  images, labels = cache_lib.read_entry(
      _entries(str(tmp_path))["test"],
      *_key_source(data_dir, "test"))
  src_images, src_labels = arrays["test"]
  assert sorted(map(bytes, np.c_[labels, images.reshape(12, -1)].astype(np.uint8))) == \
      sorted(map(bytes, np.c_[src_labels, src_images.reshape(12, -1)]))


def _key_source(data_dir, split):
  builder = tfds_data.get_builder("fashion_mnist", data_dir)
  return (cache_lib.split_key(builder, split, "image", "label"),
          cache_lib.source_fingerprint(builder, split))


def _flip_byte(path):
  with open(path, "r+b") as f:
    f.seek(os.path.getsize(path) // 2)
    b = f.read(1)
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([b[0] ^ 0xFF]))


def _truncate(path):
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) - 100)


@pytest.mark.parametrize("damage", ["flipped byte", "truncated", "manifest garbage",
                                    "npz missing", "other version"])
def test_damaged_entry_is_rebuilt_never_trusted(prepared, tmp_path, decodes, damage):
  data_dir, _ = prepared
  reference = _load(data_dir, None)
  _load(data_dir, str(tmp_path))
  entry = _entries(str(tmp_path))["train"]
  good = open(entry + ".npz", "rb").read()
  if damage == "flipped byte":
    _flip_byte(entry + ".npz")
  elif damage == "truncated":
    _truncate(entry + ".npz")
  elif damage == "manifest garbage":
    with open(entry + ".json", "w") as f:
      f.write("{not json")
  elif damage == "npz missing":
    os.remove(entry + ".npz")
  else:  # an entry of another version of the dataset at this place
    manifest = json.load(open(entry + ".json"))
    manifest["key"]["version"] = "2.9.9"
    json.dump(manifest, open(entry + ".json", "w"))
  del decodes[:]
  _assert_same(_load(data_dir, str(tmp_path)), reference)
  assert decodes == ["train"]                       # only the damaged split decoded again
  assert open(entry + ".npz", "rb").read() == good  # and rewritten whole
  del decodes[:]
  _load(data_dir, str(tmp_path))
  assert decodes == []                              # the rebuilt entry is used


def test_version_change_invalidates(prepared, tmp_path, decodes, monkeypatch):
  """A builder of another version finds no entry of its own and decodes."""
  data_dir, _ = prepared
  _load(data_dir, str(tmp_path))
  del decodes[:]
  real_key = cache_lib.split_key
  monkeypatch.setattr(cache_lib, "split_key", lambda *a, **k: {**real_key(*a, **k),
                                                               "version": "3.0.2"})
  _load(data_dir, str(tmp_path))
  assert decodes == ["train", "test"]
  versions = {os.path.relpath(d, tmp_path).split(os.sep)[2]
              for d, _, files in os.walk(tmp_path) if any(f.endswith(".npz") for f in files)}
  assert versions == {"3.0.1", "3.0.2"}  # each version its own entries


def test_reprepared_dataset_makes_the_entry_stale(prepared, tmp_path, decodes):
  """A shard rewritten since the entry was made (its size or time changed) is decoded."""
  data_dir, _ = prepared
  _load(data_dir, str(tmp_path))
  builder = tfds_data.get_builder("fashion_mnist", data_dir)
  shard = os.fspath(builder.info.splits["test"].filepaths[0])
  st = os.stat(shard)
  try:
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    del decodes[:]
    _load(data_dir, str(tmp_path))
    assert decodes == ["test"]
  finally:
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_two_data_dirs_never_share_an_entry(prepared, tmp_path):
  data_dir, _ = prepared
  key, source = _key_source(data_dir, "train")
  other = dict(source, folder=source["folder"] + "_elsewhere")
  assert cache_lib.entry_path(str(tmp_path), key, source) != cache_lib.entry_path(
      str(tmp_path), key, other)


def test_unwritable_cache_falls_back_to_decoding(prepared, tmp_path, decodes):
  data_dir, _ = prepared
  blocker = tmp_path / "file"
  blocker.write_text("")  # a file where the cache folder would be
  _assert_same(_load(data_dir, str(blocker / "cache")), _load(data_dir, None))


def test_dataset_info_is_read_once(prepared, monkeypatch):
  """The size check, the preparation check and the load share one tfds builder."""
  data_dir, _ = prepared
  calls = []
  real = tfds.builder
  monkeypatch.setattr(tfds, "builder", lambda *a, **k: calls.append(a) or real(*a, **k))
  tfds_data._builder.cache_clear()
  data_lib.dataset.train_size("fashion_mnist", data_dir=data_dir)
  _load(data_dir, None)
  _load(data_dir, None)
  assert len(calls) == 1
