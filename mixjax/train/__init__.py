"""Training: the per-device step under jax.jit(jax.shard_map(...)), the loop, Orbax
checkpoints, metric writers, the METHODS registry and the config schema."""
from mixjax.train.config import base_config
from mixjax.train.config import validate_config
from mixjax.train.loop import NonFiniteLossError
from mixjax.train.loop import train_and_evaluate
from mixjax.train.methods import METHODS
from mixjax.train.state import TrainState
