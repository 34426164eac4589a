"""mixjax.data.streaming: the transforms against their definitions (SciPy for the crop
law, PIL crop-then-resize for the fused box resize), the order as a pure function of
(seed, step), exact sharding over processes, exact restarts, workers that change
nothing, evaluation that covers the split once, and two processes over loopback."""
from __future__ import annotations

import gc
import io
import json
import math
from multiprocessing import shared_memory
import os
import pickle
import socket
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import PIL.Image
import psutil
import pytest
from scipy import stats

from mixjax import sharding
from mixjax.data import dataset as ds_lib
from mixjax.data import image_folder
from mixjax.data import streaming

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_TRAIN, NUM_TEST = 4 * 9, 4 * 3  # four classes


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  """A prepared synthetic image folder: (data_dir, name)."""
  tmp = tmp_path_factory.mktemp("streaming")
  src = image_folder.write_synthetic(str(tmp / "src"), per_class={"train": 9, "test": 3},
                                     size_range=(24, 56))
  image_folder.prepare(src, name="shapes", data_dir=str(tmp / "out"))
  return str(tmp / "out"), "shapes"


def _split(prepared, split="train"):
  data_dir, name = prepared
  return streaming.open_split(name, data_dir=data_dir, split=split)


def _stream(prepared, **kw):
  args = dict(batch_size=8, image_size=16, seed=5, process_index=0, process_count=1)
  args.update(kw)
  return streaming.TrainStream(_split(prepared), **args)


def _jpeg(w, h, seed=0, quality=95, feature=16):
  """A JPEG of random colour blocks about `feature` pixels wide, bilinearly smoothed:
  (its bytes, its decoded pixels)."""
  rng = np.random.default_rng(seed)
  small = (rng.random((max(h // feature, 2), max(w // feature, 2), 3)) * 255
           ).astype(np.uint8)
  im = PIL.Image.fromarray(small).resize((w, h), PIL.Image.BILINEAR)
  buf = io.BytesIO()
  im.save(buf, "JPEG", quality=quality)
  return buf.getvalue(), np.asarray(PIL.Image.open(io.BytesIO(buf.getvalue())))


# ---------------------------------------------------------------- transforms


def test_crop_box_law():
  """Every try fits (scale ≤ ½ on a square): the area fraction is U(scale) and the log
  aspect ratio U(log ratio) up to rounding to whole pixels; the offsets are uniform."""
  rng = np.random.default_rng(0)
  size, n, scale = 4000, 4000, (0.08, 0.5)
  boxes = np.array([streaming.crop_box(rng, size, size, scale=scale) for _ in range(n)])
  top, left, h, w = boxes.T
  area = h * w / size ** 2
  log_ratio = np.log(w / h)
  lo, hi = math.log(3 / 4), math.log(4 / 3)
  assert stats.kstest(area, stats.uniform(scale[0], scale[1] - scale[0]).cdf).pvalue > 1e-3
  assert stats.kstest(log_ratio, stats.uniform(lo, hi - lo).cdf).pvalue > 1e-3
  assert stats.kstest(top / (size - h), stats.uniform().cdf).pvalue > 1e-3
  assert np.all((top + h <= size) & (left + w <= size))


def test_crop_box_falls_back_to_the_centre():
  """No try can fit a 10:1 strip at scale ≥ 0.99: torchvision's centre crop with the
  ratio clamped to 4/3 (h = H, w = round(4/3·H))."""
  rng = np.random.default_rng(0)
  assert streaming.crop_box(rng, 1000, 100, scale=(0.99, 1.0)) == (0, (1000 - 133) // 2,
                                                                      100, 133)
  assert streaming.crop_box(rng, 100, 1000, scale=(0.99, 1.0)) == ((1000 - 133) // 2, 0,
                                                                      133, 100)


def test_train_transform_is_crop_then_resize_then_flip():
  data, full = _jpeg(180, 120)
  for seed in range(6):
    rng = np.random.default_rng(seed)
    top, left, h, w = streaming.crop_box(rng, 180, 120)
    flip = rng.random() < 0.5
    ref = PIL.Image.fromarray(full).crop((left, top, left + w, top + h)).resize(
        (32, 32), PIL.Image.BILINEAR)
    ref = np.asarray(ref)[:, ::-1] if flip else np.asarray(ref)
    got = streaming.train_transform(data, np.random.default_rng(seed), 32,
                                    reduce_jpeg=False)
    assert got.shape == (32, 32, 3) and got.dtype == np.uint8
    assert np.abs(got.astype(int) - ref).max() <= 1


@pytest.mark.parametrize("w,h", [(200, 150), (150, 200), (97, 211)])
def test_eval_transform_is_resize_then_centre_crop(w, h):
  data, full = _jpeg(w, h)
  r = streaming.eval_size(64)
  assert (r, streaming.eval_size(224)) == (73, 256)
  new = (r, int(r * h / w)) if w <= h else (int(r * w / h), r)
  resized = PIL.Image.fromarray(full).resize(new, PIL.Image.BILINEAR)
  top, left = int(round((new[1] - 64) / 2)), int(round((new[0] - 64) / 2))
  ref = np.asarray(resized)[top:top + 64, left:left + 64]
  got = streaming.eval_transform(data, 64, reduce_jpeg=False)
  assert got.shape == (64, 64, 3)
  assert np.abs(got.astype(int) - ref).max() <= 1


def test_reduced_jpeg_decoding_is_close():
  """A 1600×1200 photo (features of ~100 pixels) to 64: decoding at ⅛ scale in the DCT
  domain gives nearly the same image (mean error under 2 of 255)."""
  data, _ = _jpeg(1600, 1200, quality=90, feature=100)
  for fn in (lambda d, r: streaming.eval_transform(d, 64, reduce_jpeg=r),
             lambda d, r: streaming.train_transform(d, np.random.default_rng(3), 64,
                                                    reduce_jpeg=r)):
    full, reduced = fn(data, False).astype(float), fn(data, True).astype(float)
    assert np.abs(full - reduced).mean() < 2.0


def test_normalize_is_the_in_memory_formula():
  x = np.random.default_rng(0).integers(0, 256, (5, 7, 7, 3), dtype=np.uint8)
  mean, std = (0.3, 0.5, 0.7), (0.2, 0.25, 0.3)
  np.testing.assert_array_equal(
      streaming.normalize(x, mean, std),
      ds_lib.normalize(x, np.asarray(mean, np.float32), np.asarray(std, np.float32),
                       scale=1 / 255))


# ---------------------------------------------------------------- order


def test_split_metadata(prepared):
  split = _split(prepared)
  assert (split.num_examples, split.num_classes) == (NUM_TRAIN, 4)
  assert split.class_names == tuple(sorted(image_folder.SYNTHETIC_CLASSES))
  with pytest.raises(ValueError, match="has no split 'val'"):
    _split(prepared, "val")


def test_each_epoch_is_a_permutation_and_the_order_a_function_of_the_seed(prepared):
  stream = _stream(prepared, batch_size=6)  # 36 = 6 × 6: no remainder
  spe = stream.steps_per_epoch
  assert spe == 6
  epochs = [np.concatenate([stream.records(s) for s in range(e * spe, (e + 1) * spe)])
            for e in range(3)]
  for order in epochs:
    assert sorted(order) == list(range(NUM_TRAIN))
  assert len({tuple(o) for o in epochs}) == 3  # reshuffled every epoch
  again = _stream(prepared, batch_size=6)
  assert all(np.array_equal(stream.records(s), again.records(s)) for s in range(20))
  other = _stream(prepared, batch_size=6, seed=6)
  assert not np.array_equal(stream.records(0), other.records(0))


def test_the_remainder_of_each_epoch_is_dropped(prepared):
  stream = _stream(prepared, batch_size=8)  # 36 = 4 × 8 + 4
  assert stream.steps_per_epoch == 4
  epoch = np.concatenate([stream.records(s) for s in range(4)])
  assert len(set(epoch)) == 32 and set(epoch) <= set(range(NUM_TRAIN))


def test_subset_reads_only_its_records(prepared):
  keep = np.arange(0, NUM_TRAIN, 3)
  stream = streaming.TrainStream(_split(prepared).subset(keep), batch_size=4,
                                 image_size=16, seed=1, process_index=0, process_count=1)
  epoch = np.concatenate([stream.records(s) for s in range(stream.steps_per_epoch)])
  assert sorted(epoch) == list(keep)


def test_processes_read_disjoint_rows_of_the_same_batches(prepared):
  """P = 2: process p's rows are rows [p·b, (p+1)·b) of the one-process batch, the same
  decoded pixels and labels (the crops and flips do not depend on P); over an epoch the
  two processes' records are disjoint and together the epoch."""
  one = _stream(prepared, batch_size=6)
  two = [_stream(prepared, batch_size=6, process_index=p, process_count=2)
         for p in range(2)]
  for s in (0, 5, 7):
    x, y = one.batch(s)
    parts = [t.batch(s) for t in two]
    np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), x)
    np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), y)
  spe = one.steps_per_epoch
  mine = [np.concatenate([t.local_records(s) for s in range(spe, 2 * spe)]) for t in two]
  assert not set(mine[0]) & set(mine[1])
  assert sorted(np.concatenate(mine)) == list(range(NUM_TRAIN))


def test_restart_reads_exactly_the_uninterrupted_batches(prepared):
  stream = _stream(prepared)
  it = stream.iterator(0, 7)
  full = list(it)
  resumed = list(_stream(prepared).iterator(4, 3))  # a new stream, as after a restart
  assert len(full) == 7 and len(resumed) == 3
  for (x, y), (rx, ry) in zip(full[4:], resumed):
    np.testing.assert_array_equal(rx, x)
    np.testing.assert_array_equal(ry, y)
  x, y = full[2]
  assert x.shape == (8, 16, 16, 3) and x.dtype == np.float32 and y.dtype == np.int32
  np.testing.assert_array_equal(x, stream.batch(2)[0])
  state = stream.state(4)
  assert _stream(prepared).check_state(json.loads(json.dumps(state))) == 4
  with pytest.raises(ValueError, match="seed: 5 then, 6 now"):
    _stream(prepared, seed=6).check_state(state)


def test_images_and_labels_match_the_records(prepared):
  """The labels of a batch are those of the records `records(step)` names."""
  stream = _stream(prepared, dtype="uint8")
  source = _split(prepared).source()
  x, y = stream.batch(3)
  assert x.dtype == np.uint8
  np.testing.assert_array_equal(y, [source[int(r)]["label"] for r in stream.records(3)])


def test_the_normalized_batch_is_the_uint8_batch_normalized(prepared):
  split = _split(prepared)
  x8, _ = _stream(prepared, dtype="uint8").batch(1)
  x32, _ = _stream(prepared).batch(1)
  np.testing.assert_array_equal(x32, streaming.normalize(x8, split.norm_mean,
                                                         split.norm_std))


@pytest.mark.slow
def test_workers_change_nothing(prepared):
  """Two Grain worker processes give the batches of in-process decoding, bit for bit."""
  ref = list(_stream(prepared).iterator(3, 4))
  it = _stream(prepared, num_workers=2).iterator(3, 4)
  got = list(it)
  it.close()
  assert len(got) == 4
  for (x, y), (gx, gy) in zip(ref, got):
    np.testing.assert_array_equal(gx, x)
    np.testing.assert_array_equal(gy, y)


# ---------------------------------------------------------------- evaluation


@pytest.mark.parametrize("process_count", [1, 2])
def test_eval_reads_every_example_once(prepared, process_count):
  split = _split(prepared, "test")
  source = split.source()
  streams = [streaming.EvalStream(split, batch_size=10, image_size=16, dtype="uint8",
                                  process_index=p, process_count=process_count)
             for p in range(process_count)]
  assert streams[0].num_batches == 2  # 12 examples, the second batch padded
  batches = [list(s) for s in streams]
  x = np.concatenate([np.concatenate([b[t][0] for b in batches]) for t in range(2)])
  y = np.concatenate([np.concatenate([b[t][1] for b in batches]) for t in range(2)])
  mask = np.concatenate([np.concatenate([b[t][2] for b in batches]) for t in range(2)])
  assert x.shape == (20, 16, 16, 3) and mask.sum() == NUM_TEST
  np.testing.assert_array_equal(mask, np.arange(20) < NUM_TEST)
  np.testing.assert_array_equal(y[:NUM_TEST], [source[i]["label"] for i in range(NUM_TEST)])
  for i in (0, 7, 11):
    np.testing.assert_array_equal(x[i], streaming.eval_transform(source[i]["image"], 16))
  assert not x[NUM_TEST:].any()


# ---------------------------------------------------------------- devices


def test_to_device_assembles_the_global_batch(prepared):
  mesh = sharding.make_mesh()
  batch_sharding = jax.sharding.NamedSharding(mesh, sharding.P(sharding.AXIS))
  stream = _stream(prepared)
  it = streaming.to_device(stream.dataset(2, 3), batch_sharding, 8)
  got = list(it)
  assert len(got) == 3
  for s, (x, y) in enumerate(got, start=2):
    assert x.sharding == batch_sharding and x.shape == (8, 16, 16, 3)
    rx, ry = stream.batch(s)
    np.testing.assert_array_equal(np.asarray(x), rx)
    np.testing.assert_array_equal(np.asarray(y), ry)


def test_dequantize_on_device_is_normalize_bit_for_bit():
  """Every uint8 value in every channel, normalized by the jitted table lookup, equals
  the host formula `normalize` exactly (which equals the in-memory formula: above)."""
  mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
  x = np.stack(np.meshgrid(np.arange(256), np.arange(256), np.arange(256)[::-1],
                           indexing="ij"), -1)[:, :4].astype(np.uint8)  # (256, 4, 256, 3)
  table = streaming.normalization_table(mean, std)
  assert table.shape == (256, 3) and table.dtype == np.float32
  got = jax.jit(lambda x: streaming.dequantize(x, table))(x)
  assert got.dtype == np.float32
  np.testing.assert_array_equal(np.asarray(got), streaming.normalize(x, mean, std))


def test_stream_feeder_normalizes_a_uint8_stream_on_device(prepared):
  """The trainer's feed (a uint8 stream, normalized on the device) gives exactly the
  float32 stream's batches, one step or several per call."""
  from mixjax.data import feeding  # pylint: disable=g-import-not-at-top
  mesh = sharding.make_mesh()
  feed = feeding.StreamFeeder(_stream(prepared, dtype="uint8"), mesh, total_steps=6)
  ref = _stream(prepared)
  x, y, order = feed(1)
  assert order is None and x.dtype == np.float32 and x.shape == (8, 16, 16, 3)
  rx, ry = ref.batch(1)
  np.testing.assert_array_equal(np.asarray(x), rx)
  np.testing.assert_array_equal(np.asarray(y), ry)
  x, y, _ = feed(2, 2)
  assert x.shape == (2, 8, 16, 16, 3)
  for k, s in enumerate((2, 3)):
    np.testing.assert_array_equal(np.asarray(x[k]), ref.batch(s)[0])
  feed.close()


def test_evaluation_normalizes_a_uint8_stream_on_device(prepared):
  """The trainer's evaluation (`load_streamed(...).eval_batches`: uint8, normalized by
  the evaluation program with the stream's `decode`) gives exactly the logits of the
  float32 stream, of a convolutional model on 3-channel images."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  from mixjax.eval import predict as predict_lib  # pylint: disable=g-import-not-at-top

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      x = nn.relu(nn.Conv(4, (3, 3))(x))
      return nn.Dense(4)(x.reshape(x.shape[0], -1))

  data_dir, name = prepared
  ds = streaming.load_streamed(name, data_dir=data_dir, image_size=16)
  stream = ds.eval_batches("test", 8)
  assert stream.decode is not None
  net = Net()
  variables = net.init(jax.random.key(0), np.zeros((1, 16, 16, 3), np.float32))
  predict = predict_lib.Predictor(net, 8, sharding.make_mesh())
  got, labels = predict_lib.split_logits(predict, variables, ds, "test", rescale=False)
  ref_stream = streaming.EvalStream(ds.test, batch_size=8, image_size=16,
                                    process_index=0, process_count=1)
  assert ref_stream.decode is None
  ref = predict.batches(variables, ((x, m) for x, _, m in ref_stream))
  assert got.shape == (NUM_TEST, 4) and labels.shape == (NUM_TEST,)
  np.testing.assert_array_equal(got, ref)
  np.testing.assert_array_equal(labels, ds.test_y)


TWO_PROCESS_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    from mixjax.main import initialize_distributed
    port, pid, data_dir, out = sys.argv[1:]
    initialize_distributed(f"127.0.0.1:{port}", 2, int(pid), num_cpu_devices=2)
    import jax
    from mixjax import sharding
    from mixjax.data import streaming
    split = streaming.open_split("shapes", data_dir=data_dir, split="train")
    stream = streaming.TrainStream(split, batch_size=12, image_size=16, seed=5)
    spe = stream.steps_per_epoch
    mesh = sharding.make_mesh()
    batch = jax.sharding.NamedSharding(mesh, sharding.P(sharding.AXIS))
    it = streaming.to_device(stream.dataset(spe, spe), batch, 12)
    local = lambda a: np.concatenate([np.asarray(s.data) for s in sorted(
        a.addressable_shards, key=lambda s: s.index[0].start)])
    labels = [local(y).tolist() for _, y in it]
    records = [stream.local_records(s).tolist() for s in range(spe, 2 * spe)]
    json.dump({"process": jax.process_index(), "count": jax.process_count(),
               "records": records, "labels": labels,
               "rows": streaming.local_rows(batch, (12,))}, open(out, "w"))
""")


@pytest.mark.slow
def test_two_processes_over_loopback_read_disjoint_halves(prepared, tmp_path):
  """Two JAX processes (jax.distributed, 2 CPU devices each): each reads its half of
  every batch (the rows its devices hold), their records of an epoch are disjoint and
  together the epoch, and the global arrays hold them."""
  data_dir, _ = prepared
  script = tmp_path / "two.py"
  script.write_text(TWO_PROCESS_SCRIPT)
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(
      [ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
  procs = [subprocess.Popen([sys.executable, str(script), str(port), str(p), data_dir,
                             str(tmp_path / f"p{p}.json")], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for p in range(2)]
  logs = [p.communicate(timeout=300)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], "\n".join(l[-2000:] for l in logs)
  res = [json.loads((tmp_path / f"p{p}.json").read_text()) for p in range(2)]
  assert [(r["process"], r["count"]) for r in res] == [(0, 2), (1, 2)]
  assert [tuple(r["rows"]) for r in res] == [(0, 6), (6, 12)]
  mine = [set(np.concatenate(r["records"]).tolist()) for r in res]
  assert not mine[0] & mine[1] and sorted(mine[0] | mine[1]) == list(range(NUM_TRAIN))
  # The same rows as one process computing the whole batches (pure function of (seed, s)).
  one = _stream(prepared, batch_size=12)
  spe = one.steps_per_epoch
  source = _split(prepared).source()
  for k, s in enumerate(range(spe, 2 * spe)):
    np.testing.assert_array_equal(np.concatenate([r["records"][k] for r in res]),
                                  one.records(s))
    for p in range(2):
      assert res[p]["labels"][k] == [source[int(i)]["label"]
                                     for i in one.records(s)[6 * p:6 * (p + 1)]]


# ---------------------------------------------------------------- the trainer's view


def test_load_streamed_holds_out_validation_as_the_in_memory_path(prepared):
  data_dir, name = prepared
  ds = streaming.load_streamed(name, data_dir=data_dir, image_size=24, val_fraction=0.25,
                               seed=3)
  keep, _, held, _ = ds_lib.split_validation(np.arange(NUM_TRAIN), np.arange(NUM_TRAIN),
                                             0.25, 3)
  np.testing.assert_array_equal(ds.train.indices, keep)
  np.testing.assert_array_equal(ds.val.indices, held)
  assert (ds.val.num_examples, ds.num_train) == (9, 27)
  assert (ds.test.split, ds.test.num_examples) == ("test", NUM_TEST)
  assert (ds.input_shape, ds.num_classes, ds.is_image) == ((24, 24, 3), 4, True)
  assert streaming.is_variable_size(name, data_dir)
  none = streaming.load_streamed(name, data_dir=data_dir, image_size=24, val_fraction=0,
                                 num_train=10)
  assert none.val is None and list(none.train.indices) == list(range(10))


def test_num_classes_must_agree_with_the_folders(prepared):
  data_dir, name = prepared
  with pytest.raises(ValueError, match="num_classes=10 but dataset 'shapes' has 4 "
                                       "classes"):
    streaming.load_streamed(name, data_dir=data_dir, image_size=24, num_classes=10)


def test_a_val_folder_is_the_validation_split(tmp_path):
  src = image_folder.write_synthetic(str(tmp_path / "src"), size_range=(16, 24),
                                     per_class={"train": 4, "val": 2, "test": 1},
                                     num_classes=2)
  image_folder.prepare(src, name="with_val", data_dir=str(tmp_path / "out"))
  ds = streaming.load_streamed("with_val", data_dir=str(tmp_path / "out"), image_size=8)
  assert (ds.train.num_examples, ds.val.split, ds.val.num_examples, ds.test.split,
          ds.test.num_examples) == (8, "val", 4, "test", 2)
  assert ds.train.indices is None  # nothing held out of train


def test_input_sums_are_the_sums_of_the_transformed_rows(prepared):
  """Over one epoch (each kept record once): Σ x against the rows rebuilt one by one from
  the public pieces (record, generator, transform, normalization), Σ onehot(y) against
  the records' labels."""
  stream = _stream(prepared, batch_size=6)
  split = _split(prepared)
  spe = stream.steps_per_epoch
  sx, sy, rows = streaming.input_sums(stream, spe, start_step=spe)
  assert rows == 36
  source = split.source()
  ref_x, ref_y = np.zeros((16, 16, 3)), np.zeros(4)
  for s in range(spe, 2 * spe):
    for r, rec in enumerate(stream.records(s)):
      img = streaming.train_transform(source[int(rec)]["image"],
                                      streaming.example_rng(5, s * 6 + r), 16)
      ref_x += streaming.normalize(img, split.norm_mean, split.norm_std)
      ref_y[source[int(rec)]["label"]] += 1
  np.testing.assert_allclose(sx, ref_x, rtol=1e-6, atol=1e-4)
  np.testing.assert_array_equal(sy, ref_y)
  assert list(sy) == [9, 9, 9, 9]  # every example once: 9 per class



@pytest.mark.slow
def test_workers_reuse_their_shared_memory_slots(prepared):
  """One worker, 12 batches, each dropped before the next is read: all through one
  shared-memory slot, rewritten each time, the batches still those of in-process
  decoding; the segment is unlinked when the iteration is collected."""
  ref = list(_stream(prepared).iterator(2, 12))
  ds = _stream(prepared, num_workers=1, num_threads=1).dataset(2, 12)
  it = iter(ds)
  for x, y in ref:
    gx, gy = next(it)
    np.testing.assert_array_equal(gx, x)
    np.testing.assert_array_equal(gy, y)
    del gx  # frees the slot
  with pytest.raises(StopIteration):
    next(it)
  slots = ds.slots
  assert slots.count == 1 * (2 + 1 + 1 + 8) and slots.taken == 12
  name = slots.name
  it.close()
  del it, ds, slots
  gc.collect()
  with pytest.raises(FileNotFoundError):
    shared_memory.SharedMemory(name)


def test_slot_protocol(monkeypatch):
  """Worker 1 of 2 (its copy of the slots: what unpickling gives it) claims its first
  free slot (1, 3, 5); the main process's `take` gives an array over it, no copy; the
  slot is freed when the last reference to that array, views included, is gone."""
  slots = streaming._Slots(6, (2, 4), np.uint8)  # pylint: disable=protected-access
  worker = pickle.loads(pickle.dumps(slots))
  assert worker.claim() is None  # not a Grain worker
  monkeypatch.setattr(streaming, "_WORKER", (1, 2))
  refs = []
  for expected in (1, 3, 5):
    view, ref = worker.claim()
    assert ref == streaming._SlotRef(expected)  # pylint: disable=protected-access
    view[...] = expected
    refs.append(ref)
  assert worker.claim() is None  # all three held: the worker writes a private array
  x, label = slots.take((refs[0], "y"))
  assert label == "y" and x.dtype == np.uint8 and x.shape == (2, 4) and (x == 1).all()
  part = x[1:]
  del x
  assert worker.claim() is None  # a view still holds slot 1
  del part
  view, ref = worker.claim()
  assert ref == refs[0]
  view[...] = 9  # the same memory: the next batch written into the freed slot
  (again,) = slots.take((ref,))
  assert (again == 9).all() and slots.taken == 2


@pytest.mark.slow
def test_a_killed_process_leaves_no_workers_and_no_shared_memory(prepared, tmp_path):
  """SIGKILL a process reading through two workers: the workers exit, and the resource
  tracker then unlinks the slots' segment."""
  data_dir, name = prepared
  script = tmp_path / "reader.py"
  script.write_text(textwrap.dedent(f"""
      import time
      import psutil
      from mixjax.data import streaming

      if __name__ == "__main__":  # the spawned workers import this module
        split = streaming.open_split({name!r}, data_dir={data_dir!r}, split="train")
        stream = streaming.TrainStream(split, batch_size=8, image_size=16, seed=5,
                                       num_workers=2, process_index=0, process_count=1)
        ds = stream.dataset(0, 100)
        it = iter(ds)
        batch = next(it)
        workers = [c.pid for c in psutil.Process().children()
                   if "spawn_main" in " ".join(c.cmdline())]
        print(ds.slots.name, *workers, flush=True)
        time.sleep(300)
      """))
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(
      [ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
  proc = subprocess.Popen([sys.executable, str(script)], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
  try:
    shm_name, *workers = proc.stdout.readline().split()
  finally:
    proc.kill()
    proc.wait(timeout=30)
  assert len(workers) == 2
  shared_memory.SharedMemory(shm_name).close()  # it existed while the reader ran
  deadline = time.monotonic() + 30
  while time.monotonic() < deadline and (
      any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
          for p in map(int, workers)) or os.path.exists(f"/dev/shm/{shm_name}")):
    time.sleep(0.2)
  assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                 for p in map(int, workers))
  with pytest.raises(FileNotFoundError):
    shared_memory.SharedMemory(shm_name)
