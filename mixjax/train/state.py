"""The training state: everything a resumed run needs to continue exactly.

`TrainState` is a pytree (flax.struct) holding the parameters, the BatchNorm running
statistics, the optimizer state, the step counter, the run's root PRNG key, and the
first step whose loss or gradient was non-finite (`NO_NONFINITE` while none was). The
data position is not stored separately: the example order of epoch e is the permutation
drawn from `fold_in(data_key, e)` and step s reads batch s mod steps_per_epoch of epoch
s // steps_per_epoch, so `step` *is* the data position (the checkpoint also records it
explicitly, as `epoch` and `batch_in_epoch`, in its metadata).
"""
from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

# Sentinel for "no non-finite step seen" (int32 max: larger than any real step).
NO_NONFINITE = 2**31 - 1

# fold_in tags of the root key: one stream per purpose.
KEY_INIT = 0
KEY_DATA = 1
KEY_STEP = 2


@flax.struct.dataclass
class TrainState:
  """params / batch_stats: model variables (batch_stats is {} for models without BN).

  opt_state: optax state. step: int32 scalar, the number of updates applied so far.
  rng: the root PRNG key (raw uint32 key data, so that Orbax saves it as an array);
  step keys are `fold_in(fold_in(rng, KEY_STEP), step)`. first_nonfinite: int32 scalar,
  the (1-based) step whose loss or gradients were NaN/inf, or NO_NONFINITE.
  """
  params: Any
  batch_stats: Any
  opt_state: Any
  step: jax.Array
  rng: jax.Array
  first_nonfinite: jax.Array

  @property
  def variables(self) -> dict[str, Any]:
    if self.batch_stats:
      return {"params": self.params, "batch_stats": self.batch_stats}
    return {"params": self.params}


def create_state(model, tx: optax.GradientTransformation, rng: jax.Array,
                 sample_input: jax.Array) -> TrainState:
  """Initializes a TrainState (jit-able; call under jit with replicated out_shardings).

  Args:
    model: a Linen module with `apply(variables, x, train=...)`.
    tx: the optimizer.
    rng: the run's root key (typed or raw); init uses `fold_in(rng, KEY_INIT)`.
    sample_input: (1, ...) input of the dataset's shape.
  """
  rng = jax.random.key_data(rng) if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key) else rng
  init_key = jax.random.fold_in(jax.random.wrap_key_data(rng), KEY_INIT)
  variables = model.init(init_key, sample_input, train=False)
  params = variables["params"]
  batch_stats = variables.get("batch_stats", {})
  return TrainState(params=params, batch_stats=batch_stats, opt_state=tx.init(params),
                    step=jnp.zeros((), jnp.int32), rng=rng,
                    first_nonfinite=jnp.full((), NO_NONFINITE, jnp.int32))


def root_key(state: TrainState) -> jax.Array:
  return jax.random.wrap_key_data(state.rng)
