"""Tests for mixjax.data: offline datasets, tfds loading (mocked and on-disk array_record),
fail-fast on missing data, normalization, augmentation and device-side batching."""
from __future__ import annotations

import io
import socket
import time
from unittest import mock

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from mixjax import data
from mixjax.data import offline

# ----------------------------------------------------------------------------- helpers


def _check_arrays(ds, num_classes, input_shape):
  assert ds.num_classes == num_classes and tuple(ds.input_shape) == input_shape
  for split in ("train", "val", "test"):
    x, y = getattr(ds, f"{split}_x"), getattr(ds, f"{split}_y")
    assert x.dtype == np.float32 and y.dtype == np.int32
    assert x.shape == (y.shape[0],) + input_shape
    assert np.all(np.isfinite(x))
    assert y.min() >= 0 and y.max() < num_classes


def _reference_val_split(n, val_fraction, seed):
  """Independent restatement of the documented split: first round(f·n) of the permutation."""
  perm = np.random.default_rng(seed).permutation(n)
  n_val = int(round(val_fraction * n))
  return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def _sorted_rows(a):
  a = a.reshape(a.shape[0], -1)
  return a[np.lexsort(a.T[::-1])]


def _assert_same_arrays(a, b):
  for f in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y", "norm_mean",
            "norm_std"):
    np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)


# ----------------------------------------------------------------------------- offline


def test_mnist1d_splits_and_values_match_the_generator():
  state = np.random.get_state()
  ds = data.load_dataset("mnist1d", val_fraction=0.1, seed=3)
  # The loader restores the global NumPy RNG that mnist1d seeds internally.
  after = np.random.get_state()
  assert state[0] == after[0] and np.array_equal(state[1], after[1])
  _check_arrays(ds, 10, (40,))
  assert (ds.train_x.shape[0], ds.val_x.shape[0], ds.test_x.shape[0]) == (3600, 400, 1000)
  # Normalized with one channel: training mean 0 and std 1 over all entries.
  assert abs(ds.train_x.astype(np.float64).mean()) < 1e-5
  assert abs(ds.train_x.astype(np.float64).std() - 1) < 1e-5
  # Against mnist1d's own output (generated here with its documented seed).
  from mnist1d.data import get_dataset_args, make_dataset
  raw = make_dataset(get_dataset_args())
  np.random.set_state(state)
  unnorm = lambda x: x * ds.norm_std + ds.norm_mean
  np.testing.assert_allclose(unnorm(ds.test_x), raw["x_test"], atol=1e-4)
  np.testing.assert_array_equal(ds.test_y, raw["y_test"])
  tr, va = _reference_val_split(4000, 0.1, 3)
  np.testing.assert_allclose(unnorm(ds.train_x), raw["x"][tr], atol=1e-4)
  np.testing.assert_allclose(unnorm(ds.val_x), raw["x"][va], atol=1e-4)
  np.testing.assert_array_equal(ds.val_y, raw["y"][va])


@pytest.mark.parametrize("as_image", [False, True])
def test_digits_is_a_stratified_partition_of_sklearn_digits(as_image):
  from sklearn.datasets import load_digits
  raw = load_digits()
  ds = data.load_dataset("digits", as_image=as_image, val_fraction=0.1, seed=1)
  _check_arrays(ds, 10, (8, 8, 1) if as_image else (64,))
  assert ds.is_image == as_image
  counts = np.bincount(raw.target, minlength=10)
  np.testing.assert_array_equal(np.bincount(ds.test_y, minlength=10),
                                np.round(0.2 * counts).astype(int))
  n_trainval = 1797 - ds.test_y.size
  assert ds.val_y.size == round(0.1 * n_trainval)
  # Un-normalizing gives back integer pixels 0..16: the three splits together are exactly
  # sklearn's examples (as a multiset), each once.
  rows = np.concatenate([ds.train_x, ds.val_x, ds.test_x]).reshape(1797, -1)
  pixels = (rows * ds.norm_std.reshape(-1)[:1] + ds.norm_mean.reshape(-1)[:1]) * 16
  np.testing.assert_allclose(pixels, np.round(pixels), atol=1e-3)
  labels = np.concatenate([ds.train_y, ds.val_y, ds.test_y])
  ours = np.concatenate([np.round(pixels), labels[:, None]], axis=1)
  ref = np.concatenate([raw.data, raw.target[:, None]], axis=1)
  np.testing.assert_array_equal(_sorted_rows(ours), _sorted_rows(ref))


@pytest.mark.parametrize("feature_map", ["relu", "fourier", "none"])
def test_two_moons_geometry_features_and_split(feature_map):
  ds = data.load_dataset("two_moons", feature_map=feature_map, num_features=64,
                         val_fraction=0.1, seed=0)
  d = 2 if feature_map == "none" else 64
  _check_arrays(ds, 2, (d,))
  assert ds.test_y.size == 150 and ds.train_y.size + ds.val_y.size == 150
  np.testing.assert_array_equal(np.bincount(ds.test_y), [75, 75])
  ex = ds.extras
  # make_moons' closed form: class 0 on the unit upper half-circle centred at (0, 0),
  # class 1 on the lower one centred at (1, 0.5); noise 0.01 → 6 σ = 0.06.
  for split in ("train", "val", "test"):
    pts, y = ex[f"{split}_points"], getattr(ds, f"{split}_y")
    centers = np.where(y[:, None] == 0, [0.0, 0.0], [1.0, 0.5])
    assert np.max(np.abs(np.linalg.norm(pts - centers, axis=1) - 1)) < 0.06
    # The stored feature map reproduces the inputs.
    feats = offline.random_features(pts, ex["feature_w"], ex["feature_b"], feature_map)
    np.testing.assert_allclose((feats - ds.norm_mean) / ds.norm_std,
                               getattr(ds, f"{split}_x"), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name,kwargs", [("mnist1d", {}), ("digits", {}),
                                         ("two_moons", dict(num_features=16))])
def test_offline_datasets_are_deterministic(name, kwargs):
  a = data.load_dataset(name, seed=5, **kwargs)
  b = data.load_dataset(name, seed=5, **kwargs)
  _assert_same_arrays(a, b)
  c = data.load_dataset(name, seed=6, **kwargs)
  np.testing.assert_array_equal(a.test_y, c.test_y)  # the test split never moves
  assert not np.array_equal(a.val_x, c.val_x)  # the validation split follows the seed


def test_split_helpers_and_errors():
  x, y = np.arange(20)[:, None], np.arange(20) % 3
  tx, ty, vx, vy = data.split_validation(x, y, 0.25, seed=0)
  assert vx.shape == (5, 1) and tx.shape == (15, 1)
  assert set(tx[:, 0]) | set(vx[:, 0]) == set(range(20)) and not set(tx[:, 0]) & set(vx[:, 0])
  tx0, _, vx0, _ = data.split_validation(x, y, 0.0, seed=0)
  assert vx0.shape == (0, 1) and tx0.shape == (20, 1)
  tr, te = data.stratified_split(np.repeat([0, 1], [10, 30]), 0.5, seed=0)
  assert te.size == 20 and np.intersect1d(tr, te).size == 0
  with pytest.raises(ValueError, match="Known datasets: cifar10, cifar100, digits"):
    data.load_dataset("imagenet")
  with pytest.raises(ValueError, match="val_fraction"):
    data.load_dataset("digits", val_fraction=1.0)
  with pytest.raises(ValueError, match="feature_map"):
    data.load_dataset("two_moons", feature_map="rbf")


def test_channel_stats_and_normalize_against_numpy():
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, size=(37, 5, 4, 3), dtype=np.uint8)
  mean, std = data.channel_stats(x, scale=1 / 255, chunk=8)  # several chunks
  xf = x.astype(np.float64) / 255
  np.testing.assert_allclose(mean, xf.mean(axis=(0, 1, 2)), rtol=1e-6)
  np.testing.assert_allclose(std, xf.std(axis=(0, 1, 2)), rtol=1e-6)
  out = data.normalize(x, mean, std, scale=1 / 255, chunk=10)
  np.testing.assert_allclose(out, (xf - mean) / std, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- tfds


def test_missing_tfds_dataset_fails_fast_without_network(tmp_path, monkeypatch):
  attempts = []

  def no_network(*args, **kwargs):
    attempts.append(args)
    raise OSError("network disabled in this test")

  monkeypatch.setattr(socket, "getaddrinfo", no_network)
  monkeypatch.setattr(socket.socket, "connect", no_network)
  start = time.monotonic()
  with pytest.raises(FileNotFoundError) as err:
    data.load_dataset("cifar10", data_dir=str(tmp_path))
  elapsed = time.monotonic() - start
  assert elapsed < 10, f"took {elapsed:.1f} s"
  msg = str(err.value)
  assert "tfds build cifar10 --file_format=array_record" in msg
  assert str(tmp_path) in msg and "--config.dataset.data_dir=" in msg
  assert attempts == []
  assert list(tmp_path.iterdir()) == []  # nothing was written either


def _png(image):
  import PIL.Image
  buf = io.BytesIO()
  PIL.Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(
      buf, format="PNG")
  return buf.getvalue()


def _write_array_record_dataset(data_dir, name, splits, file_format="array_record"):
  """Writes a tiny prepared tfds dataset (real array_record files + dataset_info.json).

  tfds cannot encode images without TensorFlow, so the images are PNG-encoded with PIL
  and handed to the feature serializer as bytes.
  """
  import tensorflow_datasets as tfds
  from array_record.python import array_record_module
  builder = tfds.builder(name, data_dir=str(data_dir), file_format=file_format)
  features = builder.info.features
  path = builder.data_path
  path.mkdir(parents=True, exist_ok=True)
  split_infos = []
  for split, (images, labels) in splits.items():
    if file_format == "array_record":
      writer = array_record_module.ArrayRecordWriter(
          str(path / f"{name}-{split}.array_record-00000-of-00001"), "group_size:1")
      for i, (im, lab) in enumerate(zip(images, labels)):
        writer.write(features.serialize_example(
            {"id": f"{split}_{i}", "image": _png(im), "label": int(lab)}))
      writer.close()
    split_infos.append(tfds.core.SplitInfo(
        name=split, shard_lengths=[len(labels)], num_bytes=0,
        filename_template=tfds.core.ShardedFileTemplate(
            data_dir=path, template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
            dataset_name=name, split=split, filetype_suffix=file_format)))
  builder.info.set_splits(tfds.core.SplitDict(split_infos))
  builder.info.write_to_directory(path)


def test_cifar10_from_real_array_record_files(tmp_path):
  rng = np.random.default_rng(0)
  train = (rng.integers(0, 256, (50, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 50))
  test = (rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 12))
  _write_array_record_dataset(tmp_path, "cifar10", {"train": train, "test": test})
  ds = data.load_dataset("cifar10", data_dir=str(tmp_path), val_fraction=0.2, seed=4,
                         chunk_size=8, num_threads=3)
  _check_arrays(ds, 10, (32, 32, 3))
  assert ds.is_image
  # NumPy reference: documented split, per-channel training statistics, x/255.
  tr, va = _reference_val_split(50, 0.2, 4)
  xf = train[0].astype(np.float64) / 255
  mean, std = xf[tr].mean(axis=(0, 1, 2)), xf[tr].std(axis=(0, 1, 2))
  np.testing.assert_allclose(ds.norm_mean, mean, rtol=1e-6)
  np.testing.assert_allclose(ds.norm_std, std, rtol=1e-6)
  np.testing.assert_allclose(ds.train_x, (xf[tr] - mean) / std, atol=1e-5)
  np.testing.assert_allclose(ds.val_x, (xf[va] - mean) / std, atol=1e-5)
  np.testing.assert_allclose(ds.test_x, (test[0] / 255 - mean) / std, atol=1e-5)
  np.testing.assert_array_equal(ds.train_y, train[1][tr])
  np.testing.assert_array_equal(ds.val_y, train[1][va])
  np.testing.assert_array_equal(ds.test_y, test[1])


def test_tfds_prepared_as_tfrecord_is_rejected_with_instructions(tmp_path):
  _write_array_record_dataset(tmp_path, "mnist", {"train": (np.zeros((0, 28, 28, 1)), [])},
                              file_format="tfrecord")
  with pytest.raises(FileNotFoundError, match="(?s)needs array_record.*tfds build mnist"):
    data.load_dataset("mnist", data_dir=str(tmp_path))


def test_cifar10_under_tfds_mock_data(tmp_path):
  """tfds.testing.mock_data fakes the reading; the preparation check (is_prepared and the
  file format, which mock_data leaves alone) is patched to pass."""
  import tensorflow_datasets as tfds
  n = 30
  with tfds.testing.mock_data(num_examples=n), \
      mock.patch.object(tfds.core.DatasetBuilder, "is_prepared", return_value=True), \
      mock.patch.object(tfds.core.DatasetInfo, "file_format", new_callable=mock.PropertyMock,
                        return_value=tfds.core.FileFormat.ARRAY_RECORD):
    ds = data.load_dataset("cifar10", data_dir=str(tmp_path), val_fraction=0.1, seed=2,
                           chunk_size=7)
    # Reference: the same mocked examples read one at a time.
    src = {s: tfds.data_source("cifar10", split=s) for s in ("train", "test")}
    raw = {s: (np.stack([src[s][i]["image"] for i in range(n)]),
               np.array([src[s][i]["label"] for i in range(n)])) for s in src}
  _check_arrays(ds, 10, (32, 32, 3))
  assert (ds.train_x.shape[0], ds.val_x.shape[0], ds.test_x.shape[0]) == (27, 3, 30)
  assert raw["train"][0].dtype == np.uint8
  tr, va = _reference_val_split(n, 0.1, 2)
  xf = raw["train"][0].astype(np.float64) / 255
  mean, std = xf[tr].mean(axis=(0, 1, 2)), xf[tr].std(axis=(0, 1, 2))
  np.testing.assert_allclose(ds.train_x, (xf[tr] - mean) / std, atol=1e-5)
  np.testing.assert_allclose(ds.test_x, (raw["test"][0] / 255 - mean) / std, atol=1e-5)
  np.testing.assert_array_equal(ds.val_y, raw["train"][1][va])
  np.testing.assert_array_equal(ds.test_y, raw["test"][1])


# ----------------------------------------------------------------------------- augment


def _images(b=6, h=5, w=4, c=2, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=(b, h, w, c)), jnp.float32)


def test_augment_identity_and_forced_flip():
  x = _images()
  key = jax.random.key(0)
  np.testing.assert_array_equal(data.augment(key, x, crop_padding=0, flip=False), x)
  np.testing.assert_array_equal(
      data.augment(key, x, crop_padding=0, flip=True, flip_prob=1.0), x[:, :, ::-1])


def test_augment_windows_are_shifted_copies_of_the_padded_input():
  x, p = _images(b=8), 2
  out, (offsets, flips) = jax.jit(
      lambda k, x: data.augment(k, x, crop_padding=p, return_draw=True))(jax.random.key(1), x)
  assert out.shape == x.shape and out.dtype == x.dtype
  xn, on = np.asarray(x), np.asarray(out)
  padded = np.pad(xn, ((0, 0), (p, p), (p, p), (0, 0)))
  h, w = xn.shape[1:3]
  for i in range(xn.shape[0]):  # brute force over every window and flip (NumPy)
    found = [(dy, dx, f) for dy in range(2 * p + 1) for dx in range(2 * p + 1)
             for f in (False, True)
             if np.array_equal(on[i], (lambda win: win[:, ::-1] if f else win)(
                 padded[i, dy:dy + h, dx:dx + w]))]
    assert found, f"example {i} is not a window of its padded input"
    assert (int(offsets[i, 0]), int(offsets[i, 1]), bool(flips[i])) in found


def test_augment_draws_depend_on_key_and_are_uniform():
  b, p = 4000, 4
  x = _images(b=b, h=3, w=3, c=1)
  aug = jax.jit(lambda k: data.augment(k, x, crop_padding=p, return_draw=True))
  out1, (off1, fl1) = aug(jax.random.key(0))
  out2, (off2, _) = aug(jax.random.key(1))
  assert np.mean(np.asarray(off1) != np.asarray(off2)) > 0.5
  assert not np.array_equal(out1, out2)
  # Offsets uniform on {0..2p}: each frequency within 5 standard errors of 1/(2p+1).
  q = 1 / (2 * p + 1)
  for axis in (0, 1):
    freq = np.bincount(np.asarray(off1[:, axis]), minlength=2 * p + 1) / b
    assert freq.size == 2 * p + 1
    assert np.all(np.abs(freq - q) < 5 * np.sqrt(q * (1 - q) / b))
  assert abs(np.mean(np.asarray(fl1)) - 0.5) < 5 * np.sqrt(0.25 / b)


def test_augment_rejects_bad_arguments():
  with pytest.raises(ValueError, match="crop_padding"):
    data.augment(jax.random.key(0), _images(), crop_padding=-1)
  with pytest.raises(ValueError, match="flip_prob"):
    data.augment(jax.random.key(0), _images(), flip_prob=1.5)


# ----------------------------------------------------------------------------- batching


def test_epoch_permutation_and_batch_indices():
  key, n, b = jax.random.key(3), 23, 5
  perm = np.asarray(data.epoch_permutation(key, n))
  np.testing.assert_array_equal(np.sort(perm), np.arange(n))
  spe = data.steps_per_epoch(n, b)
  assert spe == 4
  get = jax.jit(lambda s: data.batch_indices(key, s, num_examples=n, batch_size=b))
  epoch0 = np.concatenate([np.asarray(get(s)) for s in range(spe)])
  assert np.unique(epoch0).size == spe * b  # no repeats within an epoch
  # Exactly the documented slices of the documented permutation.
  ref = np.asarray(data.epoch_permutation(jax.random.fold_in(key, 0), n))[:spe * b]
  np.testing.assert_array_equal(epoch0, ref)
  epoch1 = np.concatenate([np.asarray(get(s)) for s in range(spe, 2 * spe)])
  assert not np.array_equal(epoch0, epoch1)
  np.testing.assert_array_equal(get(6), get(6))  # a pure function of (key, step)
  x = jnp.arange(n * 2.0).reshape(n, 2)
  xb, yb = data.take((x, jnp.arange(n)), get(1))
  np.testing.assert_array_equal(yb, get(1))
  np.testing.assert_array_equal(xb, np.asarray(x)[np.asarray(get(1))])
  with pytest.raises(ValueError, match="batch_size"):
    data.steps_per_epoch(3, 5)



def test_batches_from_precomputed_epoch_permutations_equal_batch_indices():
  """The trainer's path (each epoch's permutation computed once, then sliced) gives
  `batch_indices` for every step of three epochs, from any first epoch."""
  key, n, b = jax.random.key(3), 53, 8
  spe = n // b
  perms = data.epoch_permutations(key, 1, 2, n)
  chex.assert_shape(perms, (2, n))
  get = jax.jit(lambda s: data.batch_from_permutations(perms, jnp.int32(1), s,
                                                       batch_size=b, steps_per_epoch=spe))
  for s in range(spe, 3 * spe):
    np.testing.assert_array_equal(
        np.asarray(get(s)), np.asarray(data.batch_indices(key, s, num_examples=n,
                                                          batch_size=b)))

def test_local_indices_under_shard_map():
  mesh = jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  idx = data.batch_indices(jax.random.key(0), 2, num_examples=50, batch_size=8)
  f = jax.jit(jax.shard_map(lambda i: data.local_indices(i, "data"), mesh=mesh,
                            in_specs=P(), out_specs=P("data")))
  np.testing.assert_array_equal(f(idx), idx)


def test_num_train_keeps_the_first_examples_of_the_training_split():
  from mixjax.data import dataset as dataset_lib
  full = data.load_dataset("digits", val_fraction=0.1, seed=3)
  sub = data.load_dataset("digits", val_fraction=0.1, seed=3, num_train=100)
  np.testing.assert_array_equal(sub.train_x, full.train_x[:100])
  np.testing.assert_array_equal(sub.train_y, full.train_y[:100])
  for split in ("val_x", "val_y", "test_x", "test_y"):
    np.testing.assert_array_equal(getattr(sub, split), getattr(full, split))
  assert dataset_lib.train_size("digits", val_fraction=0.1, num_train=100) == 100
  assert dataset_lib.train_size("digits", val_fraction=0.1) == full.num_train
  big = data.load_dataset("digits", val_fraction=0.1, seed=3, num_train=10**6)
  assert big.num_train == full.num_train
  with pytest.raises(ValueError, match="num_train"):
    data.load_dataset("digits", num_train=-1)


def test_label_noise_flips_the_training_labels_only_at_its_rate():
  """`dataset.label_noise=p` through the trainer's loader: the fraction of flipped
  training labels is within 4 binomial standard deviations of p, every flipped label is
  another class, the new labels are uniform over the other classes (chi-square test at
  level 1e-3), validation and test splits are untouched, and the same split_seed gives
  the same flips (another gives others)."""
  from scipy import stats as scipy_stats  # pylint: disable=g-import-not-at-top
  from mixjax.train import config as config_lib  # pylint: disable=g-import-not-at-top
  from mixjax.train import setup  # pylint: disable=g-import-not-at-top
  clean_cfg = config_lib.base_config()
  clean = setup.load_data(clean_cfg)
  for p in (0.2, 0.4):
    cfg = config_lib.base_config()
    cfg.dataset.label_noise = p
    ds = setup.load_data(cfg)
    n = clean.train_y.shape[0]
    np.testing.assert_array_equal(ds.extras["clean_train_y"], clean.train_y)
    flipped = ds.train_y != clean.train_y
    assert abs(flipped.mean() - p) <= 4 * np.sqrt(p * (1 - p) / n), flipped.mean()
    c = ds.num_classes
    offsets = (ds.train_y[flipped] - clean.train_y[flipped]) % c
    assert offsets.min() >= 1
    counts = np.bincount(offsets, minlength=c)[1:]
    assert scipy_stats.chisquare(counts).pvalue > 1e-3
    for split in ("val", "test"):
      np.testing.assert_array_equal(getattr(ds, f"{split}_y"), getattr(clean, f"{split}_y"))
      np.testing.assert_array_equal(getattr(ds, f"{split}_x"), getattr(clean, f"{split}_x"))
    again = setup.load_data(cfg)
    np.testing.assert_array_equal(again.train_y, ds.train_y)
  cfg.dataset.split_seed = 1
  other = setup.load_data(cfg)
  assert not np.array_equal(other.train_y != other.extras["clean_train_y"],
                            ds.train_y != clean.train_y)
