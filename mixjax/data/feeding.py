"""Feeding a compiled train step its data: the training set held on device, or batches
from the host.

`Feeder(ds, batch_size, mesh, data_keys, ...)(s, n)` gives the arguments, after the state,
of the program that takes steps s … s+n−1 (`train.step.make_train_step`):
`(x_src, y_src, order)`.

- On device (the training set replicated on every device, when it fits): x_src, y_src
  are the whole training split, and `order = (first_epoch, perms)` holds the
  permutations of the epochs those steps reach, perms (E, n) int32 =
  `epoch_permutations(data_key, first_epoch, E, n)` ((R, E, n) for a group: one data key
  per run), computed once per first epoch (one sort per epoch). The step slices them
  (`batch_from_permutations`), giving exactly `batch_indices(data_key, s, ...)`.
- From the host: the global batches of those steps, drawn from the same epoch
  permutations (one per epoch, cached), stacked (n, B, ...) when n > 1, split over the
  mesh axis; `order` is None.

Each run's data key is the caller's (the trainer folds it from the run's root key).

A streamed training split (`mixjax.data.streaming`) is fed by `StreamFeeder`: the same
call, `(x, y, None)` with the batches of steps s … s+n−1 of a `streaming.TrainStream`
(decoded and augmented on the host, put on the mesh a few batches ahead:
`streaming.to_device`); the loader's position is the step (`state` / `check_state`).
"""
from __future__ import annotations

from typing import Any

from absl import logging
import jax
import numpy as np

from mixjax import sharding
from mixjax.data import batching

# Hold the training set on device when it takes at most this many bytes per device.
MAX_ON_DEVICE_BYTES = 4 << 30


def fits_on_device(ds, data_on_device: bool = True) -> bool:
  """Whether the training split is held on device (`data_on_device` and ≤ 4 GiB); never
  for a streamed dataset (no `train_x`)."""
  if not hasattr(ds, "train_x"):
    return False
  return data_on_device and ds.train_x.nbytes + ds.train_y.nbytes <= MAX_ON_DEVICE_BYTES


class Feeder:
  """The data arguments of the train step for steps s … s+n−1 (module docstring).

  Args:
    ds: the dataset (`train_x` (n, ...), `train_y` (n,)).
    batch_size: B, the global batch.
    mesh: the 1-D mesh with axis "data".
    data_keys: the runs' data keys: a key for one run, or (R,) keys for a vmapped group.
    steps_per_epoch: the caller's steps per epoch (`batching.steps_per_epoch(n, B)`).
    steps_per_call: k, the most steps one call takes (sizes the permutations held).
    on_device: hold the training set on device (`fits_on_device`).
  """

  def __init__(self, ds, batch_size: int, mesh, data_keys, *, steps_per_epoch: int,
               steps_per_call: int = 1, on_device: bool = True):
    self.ds, self.batch_size, self.mesh, self.on_device = ds, batch_size, mesh, on_device
    self.num_train = int(ds.train_x.shape[0])
    self.spe = int(steps_per_epoch)
    self._keys = data_keys
    self._cache: dict[str, Any] = {}
    if on_device:
      self.x = sharding.put_replicated(mesh, ds.train_x)
      self.y = sharding.put_replicated(mesh, ds.train_y.astype(np.int32))
      # k steps span at most ceil((k − 1) / spe) + 1 epochs.
      num_epochs = -(-(int(steps_per_call) - 1) // self.spe) + 1
      perms_of = lambda k, e0: batching.epoch_permutations(k, e0, num_epochs,
                                                           self.num_train)
      if data_keys.ndim == 1:
        perms_of = jax.vmap(perms_of, in_axes=(0, None))
      self._perms = jax.jit(perms_of, out_shardings=sharding.replicated(mesh))
    else:
      logging.info("Training set (%.1f GB) fed from the host.",
                   (ds.train_x.nbytes + ds.train_y.nbytes) / 1e9)
      self._host_key = data_keys

  def _epoch_perm(self, e: int) -> np.ndarray:
    """Host-fed: epoch e's order, on the host (the last one cached)."""
    if self._cache.get("epoch") != e:
      self._cache.update(epoch=e, perm=np.asarray(batching.epoch_permutation(
          jax.random.fold_in(self._host_key, e), self.num_train)))
    return self._cache["perm"]

  def __call__(self, s: int, n: int = 1) -> tuple:
    if self.on_device:
      e0 = s // self.spe
      if self._cache.get("first_epoch") != e0:
        self._cache.update(first_epoch=e0, order=(
            sharding.put_replicated(self.mesh, np.int32(e0)), self._perms(self._keys, e0)))
      return self.x, self.y, self._cache["order"]
    bs, spe = self.batch_size, self.spe
    idx = np.stack([self._epoch_perm(t // spe)[(t % spe) * bs:(t % spe + 1) * bs]
                    for t in range(s, s + n)])
    if n == 1:
      idx = idx[0]
    axis = 0 if n == 1 else 1
    return (sharding.put_sharded(self.mesh, self.ds.train_x[idx], axis=axis),
            sharding.put_sharded(self.mesh, self.ds.train_y[idx].astype(np.int32),
                                 axis=axis), None)


_stack = jax.jit(lambda *a: jax.numpy.stack(a))  # n batches (B, ...) -> (n, B, ...)


class StreamFeeder:
  """The data arguments of the train step from a `streaming.TrainStream`: `(x, y, None)`
  for steps s … s+n−1, x (B, S, S, 3) float32 and y (B,) int32 sharded over the mesh's
  axis (stacked (n, B, ...) when n > 1), this process's rows decoded here
  (`stream.process_index`), `buffer` batches ahead on device. A uint8 stream
  (`dtype="uint8"`, what the trainer uses) is normalized on the device, by a lookup in
  its split's `streaming.normalization_table` (exactly the float32 stream's values).

  The stream is opened at the first step asked for (a resumed run's) and read in order
  up to `total_steps`; asking for another step reopens it there (the batches are a pure
  function of (seed, step), so nothing changes).
  """

  def __init__(self, stream, mesh, *, total_steps: int, buffer: int = 2):
    from mixjax.data import streaming  # pylint: disable=g-import-not-at-top
    self.stream, self.mesh, self.total, self.buffer = stream, mesh, int(total_steps), buffer
    self._sharding = jax.sharding.NamedSharding(mesh, sharding.P(sharding.AXIS))
    self._it, self._next = None, None
    self._to_float, decode = (lambda x: x), stream.decode
    if decode is not None:
      f, table = decode
      self._to_float = jax.jit(lambda x: f(x, table))

  def _open(self, s: int) -> None:
    from mixjax.data import streaming  # pylint: disable=g-import-not-at-top
    self.close()
    logging.info("Streaming the training split from step %d (%d workers).", s,
                 self.stream.num_workers)
    self._it = streaming.to_device(self.stream.dataset(s, self.total - s), self._sharding,
                                   self.stream.batch_size, buffer=self.buffer)
    self._next = s

  def __call__(self, s: int, n: int = 1) -> tuple:
    if self._next != s:
      self._open(s)
    batches = [(self._to_float(x), y) for x, y in (next(self._it) for _ in range(n))]
    self._next = s + n
    if n == 1:
      (x, y), = batches
      return x, y, None
    return (_stack(*[b[0] for b in batches]), _stack(*[b[1] for b in batches]), None)

  def state(self, step: int) -> dict[str, Any]:
    """The loader's position after `step` steps (`TrainStream.state`)."""
    return self.stream.state(step)

  def check_state(self, state: dict[str, Any]) -> int:
    """The step a checkpointed position resumes from (`TrainStream.check_state`)."""
    return self.stream.check_state(state)

  def close(self) -> None:
    """Stops the stream's workers and prefetch threads."""
    it, self._it, self._next = self._it, None, None
    if it is not None and hasattr(it, "close"):
      it.close()
