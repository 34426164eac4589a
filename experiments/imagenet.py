r"""ImageNet (ILSVRC-2012), ResNet-50: the seed paper's recipe, its official code's
(google/uncertainty-baselines `baselines/imagenet/deterministic.py`, with its mixup).

  python -m mixjax.main --config=experiments/imagenet.py --workdir=runs/imagenet
  python -m mixjax.main --config=experiments/imagenet.py:erm --workdir=runs/imagenet_erm
  python -m mixjax.main --config=experiments/imagenet.py:mixup_rescaled_200ep \
      --workdir=runs/imagenet_200ep
  # another global batch, the learning rate scaled with it (0.1 · B/256):
  python -m mixjax.main --config=experiments/imagenet.py:mixup_rescaled,batch=4096 ...

The dataset is tfds' `imagenet2012`, prepared once by the user (its files are
downloaded by hand; the error message when it is missing gives the command):

  tfds build imagenet2012 --manual_dir=MANUAL --data_dir=DIR --file_format=array_record

(MANUAL holds ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar), then
`--config.dataset.data_dir=DIR`. Training streams it (`dataset.streaming`): JPEGs decoded
in `dataset.num_workers` worker processes, random-resized crop to `dataset.image_size`
(224) and flip; evaluation on the 50,000 `validation` images (resize 256, centre crop
224), as the published numbers; `dataset.num_classes` (1000) is checked against the
prepared dataset's labels.

Variants (the config argument; published rows of the official code's README as anchors,
NLL / top-1 accuracy / ECE with 15 bins on the ImageNet validation set):

  erm                      ERM, 90 epochs                  0.939 / 76.2% / 0.032
  mixup_rescaled (default) mixup + rescaling, 90 epochs     0.916 / 76.6% / 0.020
  mixup_rescaled_200ep     mixup + rescaling, 200 epochs    0.888 / 77.7% / 0.028

"+ rescaling" is the paper's test-time rescaling (docs/THEORY.md §5): the evaluation
reports the mixup model both plain and rescaled (`eval.rescale`); the rows above are the
rescaled ones.

The recipe, as the official code has it (deterministic.py and utils.py there):
  - ResNet-50 v1.5 (`mixjax.models` "resnet50": stride in the 3×3 convolution, Keras
    he_normal initialization, N(0, 0.01²) head, BatchNorm momentum 0.9 and ε 1e-5, γ = 1
    everywhere; 25,557,032 parameters), computed in bfloat16 (`model.dtype`; parameters,
    optimizer state, BatchNorm statistics, loss and metrics float32: the official
    `mixed_bfloat16` policy).
  - SGD with Nesterov momentum 0.9; learning rate 0.1 · B/256, linear warm-up from 0 over
    the first 5 epochs, then ×0.1 at epochs 30, 60 and 80 of 90 (for E epochs: at
    ⌊E·30/90⌋, ⌊E·60/90⌋, ⌊E·80/90⌋, the warm-up staying 5 epochs; 200 epochs: 66, 133,
    177).
  - L2 1e-4: the official loss adds l2 · ‖w‖² (TF's `2 · l2_loss`) over the convolution
    kernels and the head's kernel and bias, so its gradient is 2 · 1e-4 · w. mixjax's SGD
    adds `weight_decay · w` to the gradient before the momentum (the same coupled
    L2, `train.optim`), so `weight_decay = 2e-4` is the same term; unlike the official
    code it also decays the 53,120 BatchNorm scales and biases (0.2% of the parameters),
    since mixjax's optimizer has no parameter mask.
  - Mixup: one λ per example, folded to max(λ, 1 − λ) (`use_truncated_beta`), each
    example paired with the one at the mirrored position of the batch (`tf.reverse`:
    `mixing.pairing="reverse"`), λ ~ Beta(α, α) with α = 0.2. The official flag
    defaults to α = 0 and the README does not record the value behind its rows; 0.2 is
    Zhang et al.'s ImageNet value (mixup, ICLR 2018), the usual one for ResNet-50.
  - Global batch 1024 = 128 per device on 8 accelerators: the official per-core batch
    (128 on each of 32 TPU cores, global 4096), with the learning rate scaled by the
    same linear rule. BatchNorm statistics are averaged over all devices (as flax's
    `examples/imagenet`); the official Keras layers used each core's 128 examples.

What differs from the official input pipeline (mixjax's streaming loader follows
torchvision's recipe): random-resized crop with torchvision's sampling and bilinear
resizing (official: TF's `sample_distorted_bounding_box`, bicubic), evaluation crop
224/256 of the shorter side; images normalized with ImageNet's channel means and
standard deviations (official: [0, 1] without normalization).

Multi-host: the same config with `--jax_distributed` (launch/slurm.sbatch,
launch/tpu_vm.sh); each process reads its 1/P of every batch.

Shifted test sets, when prepared (`tfds build imagenet2012_corrupted` / `imagenet_v2`):
  --config.eval.shift='("imagenet2012_corrupted", "imagenet_v2/matched-frequency")'
ImageNet-C's 75 configs (15 corruptions × severities 1–5) and ImageNetV2's
matched-frequency set, as in the official code's table.
"""
from __future__ import annotations

import ml_collections

from mixjax.train.config import base_config

# The published rows (official README; NLL, top-1 accuracy, ECE with 15 bins).
ANCHORS = {
    "erm": {"epochs": 90, "nll": 0.939, "accuracy": 0.762, "ece": 0.032},
    "mixup_rescaled": {"epochs": 90, "nll": 0.916, "accuracy": 0.766, "ece": 0.020},
    "mixup_rescaled_200ep": {"epochs": 200, "nll": 0.888, "accuracy": 0.777, "ece": 0.028},
}
VARIANTS = tuple(ANCHORS)
NUM_TRAIN = 1_281_167   # ImageNet-1k training images
BASE_LR = 0.1           # at a global batch of 256 (linear scaling rule)
BATCH_SIZE = 1024
WARMUP_EPOCHS = 5
DECAY_EPOCHS_AT_90 = (30, 60, 80)
MIXUP_ALPHA = 0.2
NUM_CLASSES = 1000
# Decoding processes per training process (JPEG decode + random-resized crop,
# `mixjax.data.streaming`); set it to the host's CPU cores per process with
# --config.dataset.num_workers=N (batches depend on the seed and step only, not on it).
NUM_WORKERS = 16


def parse_arg(arg: str | None) -> tuple[str, int]:
  """`"variant[,batch=B]"` -> (variant, B); variant defaults to mixup_rescaled."""
  parts = [p.strip() for p in (arg or "").split(",") if p.strip()]
  variant, batch = "mixup_rescaled", BATCH_SIZE
  for p in parts:
    if "=" in p:
      key, value = (t.strip() for t in p.split("=", 1))
      if key != "batch" or not value.isdigit() or int(value) < 1:
        raise ValueError(f"experiments/imagenet.py: unknown argument {p!r}; use "
                         "batch=<positive int>, e.g. experiments/imagenet.py:erm,batch=4096.")
      batch = int(value)
    elif p in VARIANTS:
      variant = p
    else:
      raise ValueError(f"experiments/imagenet.py: unknown variant {p!r}; use one of "
                       f"{', '.join(VARIANTS)}.")
  return variant, batch


def decay_epochs(num_epochs: int) -> tuple[int, ...]:
  """The official code's decay epochs for a run of `num_epochs`: ⌊E·{30, 60, 80}/90⌋."""
  return tuple((num_epochs * e) // 90 for e in DECAY_EPOCHS_AT_90)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant, batch = parse_arg(arg)
  epochs = ANCHORS[variant]["epochs"]
  c = base_config()
  c.dataset.name = "imagenet2012"
  c.dataset.streaming = True
  c.dataset.image_size = 224
  c.dataset.num_classes = NUM_CLASSES
  c.dataset.num_workers = NUM_WORKERS
  c.dataset.val_fraction = 0.0  # the official trains on all 1,281,167 images

  c.model.name = "resnet50"
  c.model.dtype = "bfloat16"

  if variant == "erm":
    c.method.name = "erm"
  else:
    c.method.name = "mixup"
  c.sampler.name = "beta"
  c.sampler.params = ml_collections.ConfigDict({"alpha": MIXUP_ALPHA})
  c.mixing.granularity = "example"
  c.mixing.pairing = "reverse"
  c.mixing.fold = True
  c.mixing.global_draw = False

  c.optimizer.name = "sgd"
  c.optimizer.lr = BASE_LR * batch / 256
  c.optimizer.momentum = 0.9
  c.optimizer.nesterov = True
  c.optimizer.weight_decay = 2e-4  # = the official l2 1e-4 on ‖w‖² (see the docstring)
  c.optimizer.schedule = "piecewise"
  c.optimizer.boundaries = decay_epochs(epochs)
  c.optimizer.decay_factor = 0.1
  c.optimizer.warmup_epochs = float(WARMUP_EPOCHS)

  c.batch_size = batch
  c.num_epochs = epochs
  c.augment.enabled = False  # the streaming training transform crops and flips

  c.eval.every_epochs = 5
  c.eval.batch_size = batch
  c.eval.num_bins = 15
  c.eval.rescale = variant != "erm"
  c.data_on_device = False
  c.log_every_steps = 100
  c.checkpoint_every_steps = 1000  # ~0.8 epoch at B = 1024
  c.max_to_keep = 2
  return c

