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
excepted), writes it, and resumes from the newest restorable checkpoint.

Every expected failure prints one line to stderr (what is wrong: the flag or key, the
value, the valid choices, and what to do) and exits with its code, without a Python
traceback (`--debug` / `--verbose` prints it too):

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
    "each in WORKDIR/<NN>_<point>/ (see mixjax.train.groups.train_sweep).")
_NUM_CPU_DEVICES = flags.DEFINE_integer(
    "num_cpu_devices", None, "Force this many CPU devices per process (testing).")

_DEBUG = flags.DEFINE_bool(
    "debug", False, "Print Python tracebacks of the errors that otherwise end the run "
    "with a one-line message (for developers).")
flags.DEFINE_alias("verbose", "debug")

flags.mark_flags_as_required(["config", "workdir"])

EXIT_CONFIG, EXIT_NONFINITE, EXIT_DATA, EXIT_WORKDIR = 2, 3, 4, 5
_DEBUG_ARGS = ("--debug", "--verbose", "--debug=true", "--verbose=true", "--debug=1",
               "--verbose=1")


def _stop(code: int, message: str, debug: bool) -> None:
  """Ends the run: the traceback of the error being handled if `debug`, then one line."""
  if debug:
    traceback.print_exc()
  print(message, file=sys.stderr, flush=True)
  sys.exit(code)


def _config_arg(argv) -> str | None:
  """The value of --config in argv (the last one wins, as in absl), or None."""
  value = None
  for i, a in enumerate(argv):
    if a.startswith("--config="):
      value = a[len("--config="):]
    elif a == "--config" and i + 1 < len(argv):
      value = argv[i + 1]
  return value


def _config_file_problem(value: str) -> str | None:
  """A message if --config=value names no readable file, else None."""
  path = value.split(":", 1)[0]
  if os.path.isfile(path):
    return None
  folder = os.path.dirname(path) or "."
  files = sorted(f for f in os.listdir(folder) if f.endswith(".py")
                 and not f.startswith("_")) if os.path.isdir(folder) else []
  import difflib  # pylint: disable=g-import-not-at-top
  close = difflib.get_close_matches(os.path.basename(path), files, n=1)
  return (f"--config={value}: no such file. "
          + (f"Config files in {folder}/: {', '.join(files)}."
             if files else f"{folder}/ holds no config files.")
          + (f" Did you mean {os.path.join(folder, close[0])}?" if close else "")
          + " Pass a get_config() file, e.g. --config=experiments/mnist1d.py.")


def _loaded_config(argv) -> dict | None:
  """The --config file's get_config() as a dict (for messages), or None."""
  from mixjax.train import config as config_lib  # pylint: disable=g-import-not-at-top
  value = _config_arg(argv)
  try:
    return config_lib.load_config_module(value).get_config(
        *value.split(":", 1)[1:]).to_dict()
  except Exception:  # pylint: disable=broad-except
    return None


def _unknown_key_problem(argv, error: Exception) -> str:
  """The message for a --config.<key>=value override naming no config key."""
  from mixjax.train import config as config_lib  # pylint: disable=g-import-not-at-top
  config = _loaded_config(argv)
  for a in argv:
    if not a.startswith("--config.") or config is None:
      continue
    path, _, val = a[len("--config."):].partition("=")
    missing = config_lib.find_unknown_key(config, path)
    if missing is None:
      continue
    parent, key = missing
    node = config
    for p in parent.split(".")[1:]:
      node = node[p]
    whole = ""
    if parent[len("config."):] in config_lib.DICT_KNOBS:
      whole = (f" --{parent} is a dict: set it whole, e.g. "
               f"--{parent}='{{\"{key}\": {val or '...'}}}'.")
    return (f"--config.{path}={val}: {parent} has no key {key!r}. "
            f"{config_lib.unknown_key_hint(node, key)}{whole} Every knob and its default "
            "is listed in mixjax/train/config.py.")
  return f"{_one_line(error)}."


def _bad_value_problem(argv, error: Exception) -> str:
  """The message for a flag whose value does not parse (e.g. --config.batch_size=abc)."""
  import re  # pylint: disable=g-import-not-at-top
  msg = _one_line(error)
  m = re.search(r"flag --([\w.]+)=", msg)
  name = m.group(1) if m else None
  if name is None or not name.startswith("config."):
    return f"Invalid flags: {msg}"
  node = _loaded_config(argv)
  for p in name.split(".")[1:]:
    node = node.get(p) if isinstance(node, dict) else None
  if isinstance(node, dict):
    expected = ("a dict literal, e.g. "
                f"--{name}='{{\"<key>\": <value>}}' (now {node})")
  elif node is None:
    expected = "a value of its type (see mixjax/train/config.py)"
  else:
    kind = type(node).__name__
    expected = f"{'an' if kind[0] in 'aeiou' else 'a'} {kind} (now {node!r})"
  return f"Invalid config: {msg.rstrip('.')}. --{name} takes {expected}."


def _one_line(error: BaseException) -> str:
  """The last non-empty line of an exception's message (its type name if empty)."""
  lines = [l.strip() for l in str(error).splitlines() if l.strip()]
  return lines[-1] if lines else type(error).__name__


def parse_flags(argv):
  """`app.run`'s flags parser: absl parsing, with every bad --config file or override
  turned into one line on stderr and exit code 2 (`--debug`: with the traceback)."""
  debug = any(a.lower() in _DEBUG_ARGS for a in argv)
  value = _config_arg(argv)
  if value is not None:
    problem = _config_file_problem(value)
    if problem is not None:
      _stop(EXIT_CONFIG, f"Invalid config: {problem}", debug)
  try:
    rest = flags.FLAGS(argv)
  except SyntaxError as e:  # the config file does not parse
    _stop(EXIT_CONFIG, f"Invalid config: --config={value}: {e.filename}, line {e.lineno}: "
          f"{e.msg}. Fix the file.", debug)
  except flags.IllegalFlagValueError as e:
    if "Error whilst parsing config file" in str(e):  # get_config() raised
      _stop(EXIT_CONFIG, f"Invalid config: --config={value}: get_config() raised "
            f"{_one_line(e).rstrip('.')}. Fix the file or its argument.", debug)
    if value is not None and "Flag --config must have a value" in str(e):
      _stop(EXIT_CONFIG, f"Invalid config: --config={value}: get_config() returned "
            "NoneType, not a ConfigDict. Return the config.", debug)
    _stop(EXIT_CONFIG, _bad_value_problem(argv, e), debug)
  except flags.Error as e:  # unknown or missing flags
    _stop(EXIT_CONFIG, f"Invalid flags: {_one_line(e).rstrip('.')}. See --helpfull.", debug)
  except (AttributeError, KeyError, TypeError, ValueError) as e:  # --config.<bad key>
    _stop(EXIT_CONFIG, f"Invalid config: {_unknown_key_problem(argv, e)}", debug)
  except Exception as e:  # pylint: disable=broad-except  (get_config() raised)
    _stop(EXIT_CONFIG, f"Invalid config: --config={value}: loading it raised "
          f"{type(e).__name__}: {_one_line(e).rstrip('.')}. Fix the file or its "
          "argument.", debug)
  try:
    config = _CONFIG.value
    ok = hasattr(config, "to_dict")
  except OSError as e:  # config_flags defers a file it could not read
    _stop(EXIT_CONFIG, f"Invalid config: --config={value}: {_one_line(e)}", debug)
  if not ok:
    _stop(EXIT_CONFIG, f"Invalid config: --config={value}: get_config() returned "
          f"{type(config).__name__}, not a ConfigDict. Return the config.", debug)
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
  from mixjax import train  # pylint: disable=g-import-not-at-top
  from mixjax.train import config as config_lib  # pylint: disable=g-import-not-at-top
  config = _CONFIG.value
  debug = _DEBUG.value
  points = None
  try:
    validate_config(config)
    if _SWEEP.value:
      points = config_lib.sweep_point_configs(
          config, config_flags.get_config_filename(flags.FLAGS["config"]))
    workdir = config_lib.make_workdir(_WORKDIR.value)
  except ValueError as e:  # ConfigError, or a registry's unknown name
    _stop(EXIT_CONFIG, f"Invalid config: {e}", debug)
  except config_lib.WorkdirError as e:
    _stop(EXIT_WORKDIR, f"Unusable workdir: {e}", debug)

  logging.info("JAX %s, process %d/%d, %d local / %d global devices: %s", jax.__version__,
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count(), jax.devices())
  logging.info("Config:\n%s", config)
  try:
    if points is not None:
      train.train_sweep(points, workdir)
    else:
      train.train_and_evaluate(config, workdir)
  except config_lib.ConfigError as e:
    _stop(EXIT_CONFIG, f"Invalid config: {e}", debug)
  except train.NonFiniteLossError as e:
    _stop(EXIT_NONFINITE, str(e), debug)
  except config_lib.WorkdirError as e:
    _stop(EXIT_WORKDIR, f"Unusable workdir: {e}", debug)
  except FileNotFoundError as e:  # a dataset that is not prepared: say how
    _stop(EXIT_DATA, f"Missing data: {e}", debug)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
