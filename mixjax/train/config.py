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
  dataset.label_noise          p: symmetric label noise on the training split only (each
                               label, w.p. p, replaced by a uniformly random other class;
                               fixed by dataset.split_seed; `data.with_label_noise`)
  model.name / kwargs          `mixjax.models.get_model(name, num_classes, **kwargs)`
  model.input_shape            reshape each example to this shape inside the model (e.g.
                               (40, 1, 1) to run LeNet on MNIST-1D signals); data, stats and
                               mixing stay in the dataset's shape
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
  optimizer.name               sgd (momentum, nesterov) | adam
  optimizer.lr / weight_decay / schedule (constant | piecewise | cosine)
  optimizer.boundaries / decay_factor     piecewise: multiply lr by decay_factor at these epochs
  optimizer.warmup_epochs      linear warm-up from 0 (any schedule)
  batch_size                   global batch (all devices together)
  num_epochs / num_steps       num_steps > 0 overrides num_epochs
  augment.enabled / crop_padding / flip   images only (random crop + horizontal flip)
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

This module holds the knobs and their defaults only. Checking a config is
`validate.py`'s job, the workdir and resume policy `workdir.py`'s (the keys of
`RESUMABLE_CHANGES` may change when a run resumes), sweeps `sweeps.py`'s.
"""
from __future__ import annotations

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
                     "dataset.cache_dir")


def base_config() -> ml_collections.ConfigDict:
  """All knobs with their defaults (a small MLP with mixup Beta(1, 1) on MNIST-1D)."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.num_seeds = 1
  c.group_mode = "auto"

  c.dataset = ml_collections.ConfigDict()
  c.dataset.name = "mnist1d"
  c.dataset.data_dir = config_dict.placeholder(str)
  c.dataset.val_fraction = 0.1
  c.dataset.split_seed = 0
  c.dataset.num_train = 0
  c.dataset.label_noise = 0.0
  c.dataset.cache_dir = "~/.cache/mixjax/arrays"
  c.dataset.kwargs = ml_collections.ConfigDict()

  c.model = ml_collections.ConfigDict()
  c.model.name = "mlp"
  c.model.kwargs = ml_collections.ConfigDict()
  c.model.input_shape = config_dict.placeholder(tuple)

  c.method = ml_collections.ConfigDict()
  c.method.name = "mixup"
  c.method.loss = "cross_entropy"
  c.method.eta = 1.0
  c.method.label_smoothing = 0.0
  c.method.num_draws = 1
  c.method.estimator = "stochastic"
  c.method.num_probes = 1
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

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "sgd"
  c.optimizer.lr = 0.1
  c.optimizer.momentum = 0.9
  c.optimizer.nesterov = False
  c.optimizer.weight_decay = 1e-4
  c.optimizer.schedule = "piecewise"
  c.optimizer.boundaries = (100, 150)
  c.optimizer.decay_factor = 0.1
  c.optimizer.warmup_epochs = 0.0

  c.batch_size = 128
  c.num_epochs = 200
  c.num_steps = 0

  c.augment = ml_collections.ConfigDict()
  c.augment.enabled = False
  c.augment.crop_padding = 4
  c.augment.flip = True

  c.stats = ml_collections.ConfigDict()
  c.stats.rank = config_dict.placeholder(int)

  c.eval = ml_collections.ConfigDict()
  c.eval.every_epochs = 10
  c.eval.batch_size = 1000
  c.eval.num_bins = 15
  c.eval.rescale = True
  c.eval.pooled_every_epoch = False
  c.eval.shift = ()

  c.log_every_steps = 100
  c.tensorboard = True
  c.checkpoint_every_steps = 1000
  c.max_to_keep = 2
  c.data_on_device = True
  c.steps_per_call = 1
  c.allow_config_change = False
  return c


def get(config: ml_collections.ConfigDict, key: str):
  """The value of dotted `key` (e.g. "optimizer.lr") in `config`."""
  node = config
  for part in key.split("."):
    node = node[part]
  return node
