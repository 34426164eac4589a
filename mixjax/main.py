r"""Entry point: flags and config in, one library call out.

  python -m mixjax.main --config=experiments/mnist1d.py --workdir=runs/mnist1d
  python -m mixjax.main --config=experiments/cifar10.py --workdir=runs/c10 \
      --config.method.name=erm --config.sampler.params='{"alpha": 0.2}'
  python -m mixjax.main --config=experiments/mnist1d.py:mlp --workdir=runs/m8 \
      --config.num_seeds=8                      # a seed group (WORKDIR/seed_<s>/ each)
  python -m mixjax.main --config=experiments/mnist1d.py --workdir=runs/sweep --sweep
                                                # every get_sweep() point, WORKDIR/<NN>_<point>/

Multi-host: `--jax_distributed` calls `jax.distributed.initialize()`, from the
environment (Slurm, Cloud TPU, ...) or from `--coordinator_address`, `--num_processes`,
`--process_id`; on CPU the collectives go through gloo. See `launch/`.

Order: parse flags (`parse_flags`: a bad --config file or override stops here) ->
(distributed init) -> `validate_config` (nothing loaded or compiled yet) -> create the
workdir -> log devices and the resolved config ->
`mixjax.train.train_and_evaluate(config, workdir)`, which checks the config against
WORKDIR/config.json (a changed config is refused, `mixjax.train.config.RESUMABLE_CHANGES`
excepted; see `mixjax.train.workdir`), writes it, and resumes from the newest restorable
checkpoint.

Every expected failure prints one line to stderr (what is wrong: the flag or key, the
value, the valid choices, and what to do) and exits with its code, without a Python
traceback (`--debug` / `--verbose` prints it too). mixjax raises the errors of
`mixjax.errors`, each carrying its exit code; bad --config files and overrides are
found by `mixjax.train.validate.check_config_flags` before absl parses, so no absl message is interpreted:

  2  bad config or flags: unknown or mistyped --config.<key>, a config file that is
     missing, does not parse or whose get_config() raises, an unknown name, an
     impossible value, a batch larger than the training split (nothing loaded or
     compiled yet);
  3  non-finite loss (the step is named; the last finite checkpoint is kept); in a seed
     group, only when every run failed (a failed run is marked in its summary); in a
     sweep, after the other points finished, naming the failed ones;
  4  dataset not prepared (the message says how to prepare it);
  5  unusable workdir or checkpoint: the workdir cannot be created or written, it holds a
     run started with a different config, or none of its checkpoints can be restored.
"""
from __future__ import annotations

import os
import sys
import traceback

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from mixjax import errors

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
_SWEEP = flags.DEFINE_bool(
    "sweep", False, "Run every point of the config file's get_sweep() in this process, "
    "each in WORKDIR/<NN>_<point>/ (see mixjax.train.sweeps.train_sweep).")
_COMPILATION_CACHE = flags.DEFINE_string(
    "compilation_cache_dir", "~/.cache/mixjax/jax",
    "JAX's persistent compilation cache: compiled programs are kept here and a rerun of "
    "the same program loads them instead of compiling (docs/speed.md says when to clear "
    "it). '' turns it off; a cache dir already set for JAX (JAX_COMPILATION_CACHE_DIR) "
    "is kept.")
_NUM_CPU_DEVICES = flags.DEFINE_integer(
    "num_cpu_devices", None, "Force this many CPU devices per process (testing).")

_DEBUG = flags.DEFINE_bool(
    "debug", False, "Print Python tracebacks of the errors that otherwise end the run "
    "with a one-line message (for developers).")
flags.DEFINE_alias("verbose", "debug")

flags.mark_flags_as_required(["config", "workdir"])

_DEBUG_ARGS = ("--debug", "--verbose", "--debug=true", "--verbose=true", "--debug=1",
               "--verbose=1")


def _stop(error: BaseException, message: str, debug: bool) -> None:
  """Ends the run: the traceback of `error` if `debug`, then one line; the exit code is
  the error's (`mixjax.errors`), 4 for a missing dataset, 2 for bad flags."""
  if debug:
    traceback.print_exception(error)
  print(message, file=sys.stderr, flush=True)
  sys.exit(getattr(error, "exit_code", errors.DataError.exit_code
                   if isinstance(error, FileNotFoundError) else errors.ConfigError.exit_code))


def parse_flags(argv):
  """`app.run`'s flags parser: `validate.check_config_flags`, then absl's parsing; every bad
  --config file, override or flag ends with one line on stderr and exit code 2
  (`--debug`: with the traceback)."""
  from mixjax.train import validate  # pylint: disable=g-import-not-at-top
  debug = any(a.lower() in _DEBUG_ARGS for a in argv)
  try:
    validate.check_config_flags(argv)
    rest = flags.FLAGS(argv)
  except errors.ConfigError as e:
    _stop(e, f"{e.prefix}: {e}", debug)
  except flags.Error as e:  # unknown or missing flags, or a value absl rejects
    _stop(e, f"Invalid flags: {errors.one_line(e).rstrip('.')}. See --helpfull.", debug)
  return rest


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


# Programs that compile faster than this are not worth a cache entry (JAX's default: 1 s).
_CACHE_MIN_COMPILE_SECS = 0.5


def use_compilation_cache(path: str) -> str | None:
  """Points JAX's persistent compilation cache at `path` (before anything compiles),
  unless JAX already has a cache dir (the environment's JAX_COMPILATION_CACHE_DIR, or a
  caller's setting, is kept). Returns the cache dir in use, or None."""
  import jax  # pylint: disable=g-import-not-at-top
  if jax.config.jax_compilation_cache_dir:
    return jax.config.jax_compilation_cache_dir
  if not path:
    return None
  path = os.path.expanduser(path)
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", _CACHE_MIN_COMPILE_SECS)
  return path


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  cache_dir = use_compilation_cache(_COMPILATION_CACHE.value)
  if _DISTRIBUTED.value:
    initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                           _NUM_CPU_DEVICES.value)
  elif _NUM_CPU_DEVICES.value:
    import jax  # pylint: disable=g-import-not-at-top
    jax.config.update("jax_num_cpu_devices", _NUM_CPU_DEVICES.value)
  import jax  # pylint: disable=g-import-not-at-top
  from mixjax import train  # pylint: disable=g-import-not-at-top
  from mixjax.train import sweeps  # pylint: disable=g-import-not-at-top
  from mixjax.train import validate  # pylint: disable=g-import-not-at-top
  from mixjax.train import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  config = _CONFIG.value
  try:
    validate.validate_config(config)
    points = None
    if _SWEEP.value:
      points = sweeps.sweep_point_configs(
          config, config_flags.get_config_filename(flags.FLAGS["config"]))
    workdir = workdir_lib.make_workdir(_WORKDIR.value)
    logging.info("JAX %s, process %d/%d, %d local / %d global devices: %s",
                 jax.__version__, jax.process_index(), jax.process_count(),
                 jax.local_device_count(), jax.device_count(), jax.devices())
    logging.info("Config:\n%s", config)
    logging.info("Compilation cache: %s.", cache_dir or "off")
    if points is not None:
      train.train_sweep(points, workdir)
    else:
      train.train_and_evaluate(config, workdir)
  except errors.MixjaxError as e:
    _stop(e, f"{e.prefix}: {e}" if e.prefix else str(e), _DEBUG.value)
  except FileNotFoundError as e:  # a dataset that is not prepared: the loader says how
    _stop(e, f"Missing data: {e}", _DEBUG.value)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
