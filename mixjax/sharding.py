"""The device mesh and moving host arrays onto it: one 1-D mesh with axis "data" over all
devices (of all processes), replicated or split along that axis."""
from __future__ import annotations

import jax
import numpy as np

AXIS = "data"
P = jax.sharding.PartitionSpec


def make_mesh(devices=None) -> jax.sharding.Mesh:
  """A 1-D mesh with axis 'data' over `devices` (default: all devices of all processes)."""
  devices = jax.devices() if devices is None else list(devices)
  return jax.sharding.Mesh(np.asarray(devices), (AXIS,),
                           axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
  return jax.sharding.NamedSharding(mesh, P())


def put_replicated(mesh: jax.sharding.Mesh, value: np.ndarray) -> jax.Array:
  """A host array replicated on every device of `mesh` (works across processes: every
  process passes the same value)."""
  value = np.asarray(value)
  return jax.make_array_from_callback(value.shape, replicated(mesh), lambda idx: value[idx])


def put_sharded(mesh: jax.sharding.Mesh, value: np.ndarray, axis: int = 0) -> jax.Array:
  """A host array (the same global value on every process) split over 'data' on `axis`
  (1 for k stacked batches (k, B, ...))."""
  value = np.asarray(value)
  sharding = jax.sharding.NamedSharding(mesh, P(*([None] * axis), AXIS))
  return jax.make_array_from_callback(value.shape, sharding, lambda idx: value[idx])


def to_host(x) -> np.ndarray:
  """A replicated (possibly multi-process) array as a host NumPy array."""
  if getattr(x, "is_fully_addressable", True):
    return np.asarray(x)
  return np.asarray(x.addressable_data(0))
