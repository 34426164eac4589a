r"""MNIST-1D (Greydanus, 2020; built offline by the `mnist1d` package): the main job.

`make run` = `python -m mixjax.main --config=experiments/mnist1d.py --workdir=runs/mnist1d`.
A small LeNet (1-D convolutions) trained with mixup (λ ~ Beta(1, 1)) and Adam with a
cosine schedule; sized to finish in well under 3 minutes on a 2-core CPU, compilation
included (about 45 s), and to print test accuracy (about 94%) / NLL / ECE / Brier, with
and without test-time rescaling (docs/THEORY.md §5).

`experiments/mnist1d.py:mlp` is the same recipe with an MLP (256, 256) on the raw signal
(about 67% test accuracy): a dense model, which seed groups vmap on every platform
(`--config.num_seeds=8`; see benchmarks/bench_seeds.py).

The sweep compares the θ-laws of docs/THEORY.md §6 (ERM, Beta(α, α), W-shaped, the σ²/θ̄²
optimum):

  python launch/sweep.py --config=experiments/mnist1d.py --workdir=runs/mnist1d_sweep
"""
from __future__ import annotations

import ml_collections

from mixjax.train.config import base_config


VARIANTS = ("lenet", "mlp")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The LeNet main job (`arg` None or "lenet"), or the MLP variant ("mlp")."""
  variant = arg or "lenet"
  if variant not in VARIANTS:
    raise ValueError(f"experiments/mnist1d.py: unknown variant {arg!r}; "
                     f"choose one of {', '.join(VARIANTS)}.")
  c = base_config()
  c.dataset.name = "mnist1d"
  c.dataset.val_fraction = 0.1
  # A small LeNet over the signal seen as a (40, 1, 1) image: ~94% test accuracy, where
  # an MLP stays near 67% (Greydanus reports the same gap).
  c.model.name = "lenet"
  c.model.kwargs = ml_collections.ConfigDict({"features": (16, 32), "dense_sizes": (128,)})
  c.model.input_shape = (40, 1, 1)
  if variant == "mlp":
    c.model.name = "mlp"
    c.model.kwargs = ml_collections.ConfigDict({"hidden_sizes": (256, 256)})
    c.model.input_shape = None
  c.method.name = "mixup"
  c.sampler.name = "beta"
  c.sampler.params = ml_collections.ConfigDict({"alpha": 1.0})
  c.optimizer.name = "adam"
  c.optimizer.lr = 2e-3
  c.optimizer.weight_decay = 0.0
  c.optimizer.schedule = "cosine"
  c.optimizer.warmup_epochs = 2.0
  c.batch_size = 128
  c.num_epochs = 100
  c.eval.every_epochs = 25
  c.log_every_steps = 500
  c.checkpoint_every_steps = 1000
  return c


def get_sweep() -> list[dict]:
  """ERM and the θ-laws of docs/THEORY.md §6, one override dict per run."""
  sweep = [{"method.name": "erm"}]
  for alpha in (0.2, 0.5, 1.0, 2.0, 10.0):
    sweep.append({"sampler.name": "beta", "sampler.params": {"alpha": alpha}})
  sweep.append({"sampler.name": "w_shaped", "sampler.params": {"a": 0.5, "b": 0.5}})
  sweep.append({"sampler.name": "optimal", "sampler.params": {}})
  sweep.append({"method.name": "regmixup", "sampler.name": "beta",
                "sampler.params": {"alpha": 10.0}})
  return sweep
