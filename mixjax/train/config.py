"""The training configuration: every knob, its one name and its one default.

`base_config()` returns the full `ml_collections.ConfigDict` that `experiments/*.py`
start from (they change values, never add knobs), and `validate_config` checks a
resolved config *before anything is compiled*: unknown names list the valid choices
(through the registries), impossible values say what to change.

Layout (override any leaf with `--config.<path>=value`; dict-valued leaves such as
`sampler.params` or `model.kwargs` take a dict literal, e.g.
`--config.sampler.params='{"lam": 0.7}'`):

  seed                         the run's randomness: init, data order, λ, augment, dropout
  num_seeds                    K > 1: train seeds seed, seed+1, …, seed+K−1 as one seed
                               group (`train_and_evaluate`; each run in WORKDIR/seed_<s>/)
  group_mode                   how a group runs: auto | vmap (one program, runs vmapped) |
                               sequential (one after another, one compiled step); auto =
                               sequential for convolutional models on CPU, vmap otherwise
  dataset.name / data_dir / val_fraction / kwargs (loader options, e.g. two_moons' features)
  dataset.split_seed           seed of the validation split (fixed across run seeds, so
                               the runs of a seed group see the same data)
  dataset.num_train            train on the first N examples of the training split (0: all)
  dataset.cache_dir            where decoded tfds splits are kept as arrays (`data.cache`:
                               decoded once, hash-checked, rebuilt when stale or damaged);
                               "" decodes on every run
  dataset.streaming            auto | True | False: read the training and evaluation splits
                               by streaming (`mixjax.data.streaming`: encoded images decoded
                               on the host by Grain workers, random-resized crop + flip for
                               training, resize + centre crop for evaluation, batches put
                               on device) instead of holding them in memory; auto streams
                               the tfds datasets whose images have no fixed size (image
                               folders, ImageNet: `streaming.is_variable_size`) and holds
                               every other dataset in memory
  dataset.image_size           S: streamed images are S × S × 3 (unset: a streamed dataset
                               needs it; ignored in memory)
  dataset.num_workers          Grain worker processes decoding a streamed split (0: decode
                               in the trainer's process; the batches are the same)
  dataset.num_classes          the number of classes the run expects (unset: the dataset's);
                               set, it must equal the dataset's (a ConfigError otherwise)
  dataset.label_noise          p: symmetric label noise on the training split only (each
                               label, w.p. p, replaced by a uniformly random other class;
                               fixed by dataset.split_seed; `data.with_label_noise`)
  model.name / kwargs          `mixjax.models.get_model(name, num_classes, **kwargs)`
  model.input_shape            reshape each example to this shape inside the model (e.g.
                               (40, 1, 1) to run LeNet on MNIST-1D signals); data, stats and
                               mixing stay in the dataset's shape
  model.dtype                  the computation dtype: float32 | bfloat16 (mixed precision:
                               products and convolutions in bfloat16; parameters, optimizer
                               state, the loss, BatchNorm statistics and metrics float32;
                               `models.build_model(..., dtype=)`)
  method.name                  erm | mixup | regmixup | erm_transformed | perturbed_erm |
                               approx | label_smoothing_matched (ERM on Theorem 1's labels:
                               smoothing towards ȳ with ε = 1 − θ̄ of the configured law)
  method.loss                  per-example loss name (`mixjax.losses.LOSSES`)
  method.eta                   RegMixup weight η (regmixup only)
  method.label_smoothing       ε: labels smoothed towards uniform, (1 − ε) y + ε/c, before
                               any method (then mixed, as timm does); per run in groups
  method.num_draws             perturbation draws per example (perturbed_erm only)
  method.estimator / num_probes / terms   approx only (`approx_mixup_risk`)
  sampler.name / params        `mixjax.samplers.make_sampler(name, **params)`: λ-laws (beta,
                               w_shaped, …) and mask laws (cutmix, gmix, switch; images only)
  mixing.granularity / pairing / fold / global_draw
  mixing.prob                  the share of the batch that is mixed (timm's / mmpretrain's
                               `prob`): each example is mixed with probability prob, else
                               kept as it is (λ = 1); 1: every example (`methods.draw_mix`)
  optimizer.name               sgd (momentum, nesterov) | adam
  optimizer.lr / weight_decay / schedule (constant | piecewise | cosine)
  optimizer.boundaries / decay_factor     piecewise: multiply lr by decay_factor at these epochs
  optimizer.warmup_epochs      linear warm-up from 0 (any schedule)
  batch_size                   global batch (all devices together)
  num_epochs / num_steps       num_steps > 0 overrides num_epochs
  augment.enabled / crop_padding / flip   in-memory images only (random crop + horizontal
                               flip on device; a streamed dataset crops and flips on the
                               host, and augment.enabled=True is refused there)
  stats.rank                   top-k principal directions kept in DataStats (None: none)
  eval.every_epochs / batch_size / num_bins / rescale
  eval.pooled_every_epoch      also compute the pooled metrics (adaptive ECE, SmoothECE,
                               AURC: they need every prediction at once) at the quick
                               evaluations during training; the final one always has them
  eval.shift                   shifted test sets the final model is also evaluated on, e.g.
                               ("fashion_mnist_corrupted",) (every corruption) or
                               ("fashion_mnist_corrupted/stripe", ...) (some); prepared with
                               `python -m mixjax.data.prepare --dataset=<name>`
  log_every_steps / checkpoint_every_steps / max_to_keep
  tensorboard                  TensorBoard files besides metrics.jsonl (False: JSONL only)
  data_on_device               hold the training set on device (replicated) if it fits
  steps_per_call               k train steps per dispatch, as a lax.scan in the compiled
                               program (1: one dispatch per step, the fastest measured on
                               XLA:CPU for convolutions; larger k pays where dispatch
                               dominates: tiny models, accelerators). Same steps for any k
  allow_config_change          resume a workdir whose config.json differs in keys outside
                               `RESUMABLE_CHANGES` (default False: refused, see below)

This module holds the knobs, their defaults and the ranges of the numeric ones: a knob
with a range is declared `c.method.eta = Range(1.0, "[0, inf)")`, its default and valid
interval side by side; `base_config()` holds the default and `RANGES` the interval, which
`validate.validate_config` checks. Config files are loaded by path
(`load_config_module`). Checking a config is `validate.py`'s job, the workdir
and resume policy `workdir.py`'s (the keys of `RESUMABLE_CHANGES` may change when a run
resumes), sweeps `sweeps.py`'s.
"""
from __future__ import annotations

import importlib.util
import math
import os
import types
from typing import Any, NamedTuple

import ml_collections
from ml_collections import config_dict

# Dict-valued knobs: overridden whole with a dict literal (their keys are free).
DICT_KNOBS = ("dataset.kwargs", "model.kwargs", "sampler.params")
# Keys (and dotted prefixes) a resumed run may change (`workdir.check_workdir_config`):
# the length of training, logging, checkpoint cadence, evaluation, the data folder. On a
# finished run the evaluation keys re-evaluate it; nothing else can change there.
RESUMABLE_CHANGES = ("num_epochs", "num_steps", "log_every_steps", "eval",
                     "checkpoint_every_steps", "max_to_keep", "dataset.data_dir",
                     "allow_config_change", "steps_per_call", "tensorboard",
                     "dataset.cache_dir", "dataset.num_workers")


class Range(NamedTuple):
  """A numeric knob's default and its valid values, declared together in `_knobs`.

  Attributes:
    default: the default (an int, a float, or a `config_dict.placeholder`: None allowed).
    interval: the valid values, "[lo, hi]" with "(" / ")" for an open end and inf for
      none, e.g. "[0, 1)" or "(0, inf)". NaN and ±inf are never valid.
    note: what a boundary value means, appended to the error (e.g. "0: no smoothing").
  """
  default: Any
  interval: str
  note: str = ""

  def _bounds(self) -> tuple[float, float, bool, bool]:
    lo, hi = (float(b) for b in self.interval[1:-1].split(","))
    return lo, hi, self.interval[0] == "[", self.interval[-1] == "]"

  def contains(self, value) -> bool:
    """Whether `value` is valid (None is: an unset placeholder)."""
    if value is None:
      return True
    lo, hi, lo_closed, hi_closed = self._bounds()
    value = float(value)
    return (math.isfinite(value) and (value >= lo if lo_closed else value > lo)
            and (value <= hi if hi_closed else value < hi))

  def describe(self) -> str:
    """'in [0, 1)', '>= 0' or '> 0', and the note: what an error message says."""
    lo, hi, lo_closed, _ = self._bounds()
    text = (f"{'>=' if lo_closed else '>'} {lo:g}" if math.isinf(hi)
            else f"in {self.interval}")
    return text + (f" ({self.note})" if self.note else "")


def base_config() -> ml_collections.ConfigDict:
  """All knobs with their defaults (a small MLP with mixup Beta(1, 1) on MNIST-1D)."""
  return _defaults(_knobs(), "", {})


def _defaults(node: ml_collections.ConfigDict, prefix: str, ranges: dict[str, Range]
              ) -> ml_collections.ConfigDict:
  """`node` with each `Range` replaced by its default (recorded in `ranges` by its
  dotted key); placeholders stay placeholders."""
  out = ml_collections.ConfigDict()
  for key, value in node.items(preserve_field_references=True):
    if isinstance(value, ml_collections.ConfigDict):
      value = _defaults(value, f"{prefix}{key}.", ranges)
    elif isinstance(value, Range):
      ranges[prefix + key] = value
      value = value.default
    out[key] = value
  return out


def _knobs() -> ml_collections.ConfigDict:
  """Every knob: its default, and for numeric knobs with limits its `Range`."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.num_seeds = Range(1, "[1, inf)", "1: a single run")
  c.group_mode = "auto"

  c.dataset = ml_collections.ConfigDict()
  c.dataset.name = "mnist1d"
  c.dataset.data_dir = config_dict.placeholder(str)
  c.dataset.val_fraction = Range(0.1, "[0, 1)")
  c.dataset.split_seed = 0
  c.dataset.num_train = Range(0, "[0, inf)", "0: the whole training split")
  c.dataset.label_noise = Range(0.0, "[0, 1)", "0: clean labels")
  c.dataset.cache_dir = "~/.cache/mixjax/arrays"
  # "auto", True or False: typed `object` so that a config file or a flag may set a bool.
  c.dataset.streaming = config_dict.FieldReference("auto", field_type=object)
  c.dataset.image_size = Range(config_dict.placeholder(int), "[1, inf)", "or unset")
  c.dataset.num_workers = Range(2, "[0, inf)", "0: decode in this process")
  c.dataset.num_classes = Range(config_dict.placeholder(int), "[2, inf)",
                                "or unset: the dataset's")
  c.dataset.kwargs = ml_collections.ConfigDict()

  c.model = ml_collections.ConfigDict()
  c.model.name = "mlp"
  c.model.kwargs = ml_collections.ConfigDict()
  c.model.input_shape = config_dict.placeholder(tuple)
  c.model.dtype = "float32"

  c.method = ml_collections.ConfigDict()
  c.method.name = "mixup"
  c.method.loss = "cross_entropy"
  c.method.eta = Range(1.0, "[0, inf)")
  c.method.label_smoothing = Range(0.0, "[0, 1)", "0: no smoothing")
  c.method.num_draws = Range(1, "[1, inf)")
  c.method.estimator = "stochastic"
  c.method.num_probes = Range(1, "[1, inf)")
  # The paper drops the hessian term (R2) in training: it was numerically unstable
  # (the library's default, `theory.DEFAULT_TERMS`, is the same).
  c.method.terms = ("jacobian", "cross", "label")

  c.sampler = ml_collections.ConfigDict()
  c.sampler.name = "beta"
  c.sampler.params = ml_collections.ConfigDict({"alpha": 1.0})

  c.mixing = ml_collections.ConfigDict()
  c.mixing.granularity = "example"
  c.mixing.pairing = "permutation"
  c.mixing.fold = False
  c.mixing.global_draw = False
  c.mixing.prob = Range(1.0, "[0, 1]", "1: every example mixed")

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "sgd"
  c.optimizer.lr = Range(0.1, "(0, inf)")
  c.optimizer.momentum = Range(0.9, "[0, 1)")
  c.optimizer.nesterov = False
  c.optimizer.weight_decay = Range(1e-4, "[0, inf)")
  c.optimizer.schedule = "piecewise"
  c.optimizer.boundaries = (100, 150)
  c.optimizer.decay_factor = Range(0.1, "(0, 1]")
  c.optimizer.warmup_epochs = Range(0.0, "[0, inf)")

  c.batch_size = 128
  c.num_epochs = 200
  c.num_steps = Range(0, "[0, inf)", "0: use num_epochs")

  c.augment = ml_collections.ConfigDict()
  c.augment.enabled = False
  c.augment.crop_padding = Range(4, "[0, inf)")
  c.augment.flip = True

  c.stats = ml_collections.ConfigDict()
  c.stats.rank = Range(config_dict.placeholder(int), "[1, inf)", "or unset")

  c.eval = ml_collections.ConfigDict()
  c.eval.every_epochs = Range(10, "[0, inf)", "0: only at the end")
  c.eval.batch_size = Range(1000, "(0, inf)")
  c.eval.num_bins = Range(15, "(0, inf)")
  c.eval.rescale = True
  c.eval.pooled_every_epoch = False
  c.eval.shift = ()

  c.log_every_steps = Range(100, "(0, inf)")
  c.tensorboard = True
  c.checkpoint_every_steps = Range(1000, "(0, inf)")
  c.max_to_keep = Range(2, "(0, inf)")
  c.data_on_device = True
  c.steps_per_call = Range(1, "[1, inf)", "1: one dispatch per step")
  c.allow_config_change = False
  return c


# {dotted key: Range} of every knob declared with one (`_knobs`).
RANGES: dict[str, Range] = {}
_defaults(_knobs(), "", RANGES)


def get(config: ml_collections.ConfigDict, key: str):
  """The value of dotted `key` (e.g. "optimizer.lr") in `config`."""
  node = config
  for part in key.split("."):
    node = node[part]
  return node


def load_config_module(path: str) -> types.ModuleType:
  """Imports a config file (`experiments/*.py`, the part before any `:arg`) by path.

  Config files are loaded by path, not as a package, as `--config=<file>` does."""
  path = os.path.abspath(path.split(":", 1)[0])
  name = "_mixjax_config_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  if spec is None:
    raise ValueError(f"Cannot load config file {path!r}.")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module
