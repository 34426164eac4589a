r"""Entry point: flags and config in, one library call out.

  python -m mixjax.main --config=experiments/mnist1d.py --workdir=runs/mnist1d
  python -m mixjax.main --config=experiments/cifar10.py --workdir=runs/c10 \
      --config.method.name=erm --config.sampler.params='{"alpha": 0.2}'

Multi-host: `--jax_distributed` calls `jax.distributed.initialize()`, from the
environment (Slurm, Cloud TPU, ...) or from `--coordinator_address`, `--num_processes`,
`--process_id`; on CPU the collectives go through gloo. See `launch/`.

Order: parse flags -> (distributed init) -> `validate_config` (nothing compiled yet) ->
log devices and the resolved config -> write WORKDIR/config.json ->
`mixjax.train.train_and_evaluate(config, workdir)`.

Exit codes: 2 invalid config (nothing compiled), 3 non-finite loss (the last finite
checkpoint is kept), 4 dataset not prepared (the message says how to prepare it).
"""
from __future__ import annotations

import json
import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to an experiments/*.py config file (get_config()).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")
_DISTRIBUTED = flags.DEFINE_bool(
    "jax_distributed", False, "Call jax.distributed.initialize() (multi-host).")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0 (else from the environment).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
_NUM_CPU_DEVICES = flags.DEFINE_integer(
    "num_cpu_devices", None, "Force this many CPU devices per process (testing).")

flags.mark_flags_as_required(["config", "workdir"])


def initialize_distributed(coordinator_address=None, num_processes=None, process_id=None,
                           num_cpu_devices=None) -> None:
  """`jax.distributed.initialize` from arguments or the environment (gloo on CPU)."""
  import jax  # pylint: disable=g-import-not-at-top
  if num_cpu_devices:
    jax.config.update("jax_num_cpu_devices", int(num_cpu_devices))
  if os.environ.get("JAX_PLATFORMS", "").startswith("cpu") or num_cpu_devices:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  kwargs = {}
  if coordinator_address:
    kwargs["coordinator_address"] = coordinator_address
  if num_processes is not None:
    kwargs["num_processes"] = num_processes
  if process_id is not None:
    kwargs["process_id"] = process_id
  jax.distributed.initialize(**kwargs)


def validate_config(config, num_devices=None) -> None:
  """See `mixjax.train.config.validate_config` (this is the same function)."""
  from mixjax.train import config as config_lib  # pylint: disable=g-import-not-at-top
  config_lib.validate_config(config, num_devices=num_devices)


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if _DISTRIBUTED.value:
    initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                           _NUM_CPU_DEVICES.value)
  elif _NUM_CPU_DEVICES.value:
    import jax  # pylint: disable=g-import-not-at-top
    jax.config.update("jax_num_cpu_devices", _NUM_CPU_DEVICES.value)
  import jax  # pylint: disable=g-import-not-at-top
  config = _CONFIG.value
  workdir = _WORKDIR.value
  try:
    validate_config(config)
  except ValueError as e:
    logging.error("Invalid config: %s", e)
    print(f"Invalid config: {e}", file=sys.stderr, flush=True)
    sys.exit(2)

  logging.info("JAX %s, process %d/%d, %d local / %d global devices: %s", jax.__version__,
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count(), jax.devices())
  logging.info("Config:\n%s", config)
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2) if hasattr(config, "to_json_best_effort")
              else json.dumps(config.to_dict(), indent=2, default=str))

  from mixjax import train  # pylint: disable=g-import-not-at-top
  try:
    train.train_and_evaluate(config, workdir)
  except train.NonFiniteLossError as e:
    print(str(e), file=sys.stderr, flush=True)
    sys.exit(3)
  except FileNotFoundError as e:  # a dataset that is not prepared: say how, no traceback
    logging.error("Missing data: %s", e)
    print(f"Missing data: {e}", file=sys.stderr, flush=True)
    sys.exit(4)


if __name__ == "__main__":
  app.run(main)
