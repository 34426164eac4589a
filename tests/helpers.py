"""Shared helpers of the test modules (plain functions; the fixtures are in conftest.py,
which no test module imports): configs of experiments/, run summaries, the method context
of the base config, and `python -m mixjax.main` run in this process."""
import gzip
import os
import struct

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def method_context(*, sampler=None, moments=None, axis_name="data", **overrides):
  """`MethodContext.from_config` of the base config with `overrides` ({"mixing.fold":
  True, ...}, dotted keys as keyword names with "__" for "."), for tests of the step and
  the methods: e.g. `method_context(sampler=samplers.beta(0.7), method__eta=0.6)`."""
  from mixjax.train import config as config_lib  # pylint: disable=g-import-not-at-top
  from mixjax.train import methods  # pylint: disable=g-import-not-at-top
  from mixjax.train import sweeps  # pylint: disable=g-import-not-at-top
  config = sweeps.sweep_config(config_lib.base_config(),
                               {k.replace("__", "."): v for k, v in overrides.items()})
  return methods.MethodContext.from_config(config, sampler=sampler, moments=moments,
                                           axis_name=axis_name)


def get_config(name, **overrides):
  """experiments/<name>.py's config (`name` may carry a `:arg`) with `overrides`
  ({"a.b": value}) applied."""
  from mixjax.train import sweeps  # pylint: disable=g-import-not-at-top
  file, _, arg = name.partition(":")
  module = sweeps.load_config_module(os.path.join(ROOT, "experiments", f"{file}.py"))
  config = module.get_config(arg) if arg else module.get_config()
  return sweeps.sweep_config(config, overrides)


def read_summary(workdir):
  """WORKDIR/summary.json."""
  import json  # pylint: disable=g-import-not-at-top
  with open(os.path.join(workdir, "summary.json")) as f:
    return json.load(f)


def comparable(records):
  """metrics.jsonl records without wall-clock rates and without the resume markers."""
  drop = ("steps_per_sec",)
  return [{k: v for k, v in r.items() if k not in drop} for r in records
          if "resumed_from_step" not in r]


def parse_main_flags(argv, monkeypatch):
  """Parses `python -m mixjax.main argv...`'s flags in this process."""
  import sys  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  from mixjax import main  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import  (defines the flags)
  argv = ["mixjax.main"] + list(argv)
  monkeypatch.setattr(sys, "argv", argv)  # config_flags reads `--config.*` from sys.argv
  flags.FLAGS.unparse_flags()
  for name in list(flags.FLAGS):  # override flags are defined per parse
    if name.startswith("config."):
      delattr(flags.FLAGS, name)
  flags.FLAGS(argv)


def run_main(argv, monkeypatch):
  """`python -m mixjax.main argv...` in this process (flags parsed, then main)."""
  from mixjax import main as main_lib  # pylint: disable=g-import-not-at-top
  parse_main_flags(argv, monkeypatch)
  main_lib.main(["mixjax.main"])


def one_line_error(capsys) -> str:
  """stderr of a failed command: exactly one non-empty line, no traceback."""
  err = capsys.readouterr().err
  lines = [l for l in err.splitlines() if l.strip()]
  assert len(lines) == 1 and "Traceback" not in err, err
  return lines[0]


# ------------------------------------------------- Fashion-MNIST in its original files
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def idx_bytes(array: np.ndarray, *, type_code: int = 0x08, ndim: int | None = None) -> bytes:
  """IDX encoding: 0x00 0x00 type ndim, big-endian uint32 dims, row-major payload."""
  ndim = array.ndim if ndim is None else ndim
  header = struct.pack(">BBBB", 0, 0, type_code, ndim)
  header += b"".join(struct.pack(">I", d) for d in array.shape)
  return header + np.ascontiguousarray(array, np.uint8).tobytes()


def make_arrays(seed: int = 0, n_train: int = 30, n_test: int = 12):
  """split -> (images uint8 (n, 28, 28), labels uint8 (n,)), every class present."""
  rng = np.random.default_rng(seed)
  out = {}
  for split, n in (("train", n_train), ("test", n_test)):
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    rng.shuffle(labels)
    out[split] = (images, labels)
  return out


def write_source(folder, arrays) -> None:
  """The IDX files (FILES) of `arrays` in `folder`, gzip'd, as Fashion-MNIST ships them."""
  os.makedirs(folder, exist_ok=True)
  for split, (images_name, labels_name) in FILES.items():
    images, labels = arrays[split]
    with open(os.path.join(folder, images_name), "wb") as f:
      f.write(gzip.compress(idx_bytes(images)))
    with open(os.path.join(folder, labels_name), "wb") as f:
      f.write(gzip.compress(idx_bytes(labels)))


