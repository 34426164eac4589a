r"""The Fashion-MNIST CPU recipe as a PyTorch user would write it, with timm's `Mixup`:
the PyTorch side of `benchmarks.bench_e2e` (run as its own process).

    python -m benchmarks.torch_recipe --epochs=10 --idx_dir=/usr/share/datasets/fashion-mnist

The recipe is `experiments/fashion_mnist.py`'s CPU default:
- the network `benchmarks.torch_reference.cnn` with stages ((32,), (64,)) and dense (256,):
  conv32-BN-ReLU-pool-conv64-BN-ReLU-pool-dense256-head, 824,554 parameters (the same
  module `benchmarks.bench_steps` times against mixjax's bare step); PyTorch's default
  initialization, which the recipe's CNN also uses (`weight_init="torch"`; `--init=mixjax`
  initializes as the models' default, "he", for the accuracy comparison in docs/speed.md);
- `torch.optim.SGD(lr=0.025, momentum=0.9, nesterov=True, weight_decay=5e-4)` (coupled L2
  on every parameter, as mixjax's `add_decayed_weights` + SGD) and
  `CosineAnnealingLR(T_max=total steps)` stepped after every update (mixjax's cosine
  schedule to 0 over the run);
- batch 128, the last partial batch of an epoch dropped (421 steps per epoch, as mixjax);
- per example: zero padding by 2 and a random 28×28 crop, and a horizontal flip with
  probability ½ (on the normalized images, so the padding is the training mean, as mixjax);
- `timm.data.mixup.Mixup(mixup_alpha=0.2, cutmix_alpha=0, label_smoothing=0,
  num_classes=10)` in its default batch mode: one λ ~ Beta(0.2, 0.2) per batch, the
  partner of example i is example B − 1 − i (`x.flip(0)`), soft targets; the loss is
  `nn.CrossEntropyLoss` on those soft targets;
- the test accuracy after every epoch (`model.eval()`, `torch.inference_mode()`, batches
  of 1000), and after the last one.

Choices a competent PyTorch user makes on a 2-core CPU, all in favour of speed:
- Data: the IDX files (`train-images-idx3-ubyte.gz`, ...) that torchvision's
  `datasets.FashionMNIST` downloads and reads, here from `--idx_dir` (Debian's
  `dataset-fashion-mnist` puts them in /usr/share/datasets/fashion-mnist); parsed with
  NumPy exactly as torchvision does (torchvision itself is not installable next to this
  torch), read once into one float32 tensor (N, 1, 28, 28), normalized with the training
  split's mean and std. The same 10% validation hold-out as mixjax (a seeded
  permutation), so both sides train on 54,000 images, 421 steps per epoch; the
  validation split is not used here.
- No `DataLoader`: batches are `x[idx]` slices of the tensor held in memory (worker
  processes only add copies for data that is already a tensor). Augmentation runs per
  batch with tensor ops: `F.pad` once, then one advanced-indexing gather whose row and
  column indices carry each example's crop offset and flip.
- `torch.set_num_threads(cores available)`, NCHW (PyTorch's native layout on CPU), float32,
  eager mode (`torch.compile` needs a C++ toolchain and compiles for minutes on 2 cores).
- timm's `Mixup` draws λ from NumPy's global RNG, seeded here with `np.random.seed`.

`timm.data.mixup` is loaded from its file, not through `import timm.data`: the package
`timm.data` (and `timm` itself) imports torchvision at import time, which has no build for
this torch; `mixup.py` itself needs only NumPy and torch. `load_timm_mixup` finds the
installed timm with `importlib.util.find_spec` (which does not run `timm/__init__.py`)
and executes `timm/data/mixup.py` alone as a module, so the class is timm's own code.

Output (stdout, one line each, for `bench_e2e` to parse; times are `time.time()`):
`T_START <t>` at the first line of `main` (after the imports), `T_TRAIN <t>` before the
first step, `T_FIRST <t>` after it, `step <s>/<total> ... <t>` every 100 steps and at the
end, `eval <s> <accuracy> <t>` after each evaluation, `final_test_accuracy <accuracy>`.
"""
from __future__ import annotations

import argparse
import gzip
import importlib.util
import os
import time
import types

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from benchmarks import torch_reference

FILES = {"train_x": "train-images-idx3-ubyte.gz", "train_y": "train-labels-idx1-ubyte.gz",
         "test_x": "t10k-images-idx3-ubyte.gz", "test_y": "t10k-labels-idx1-ubyte.gz"}


def load_timm_mixup() -> types.ModuleType:
  """`timm/data/mixup.py` of the installed timm, executed alone (module docstring)."""
  spec = importlib.util.find_spec("timm")
  if spec is None or not spec.submodule_search_locations:
    raise ImportError("timm is not installed: pip install -e '.[bench]'.")
  path = os.path.join(list(spec.submodule_search_locations)[0], "data", "mixup.py")
  mspec = importlib.util.spec_from_file_location("timm_data_mixup", path)
  module = importlib.util.module_from_spec(mspec)
  mspec.loader.exec_module(module)
  return module


def read_idx(path: str) -> np.ndarray:
  """An IDX file (gzipped) as a NumPy array: big-endian header, then uint8 data."""
  with gzip.open(path, "rb") as f:
    data = f.read()
  ndim = data[3]
  shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
  return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def augment(x: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
  """Random crop (zero padding `pad`) and horizontal flip per example, one gather."""
  b, c, h, w = x.shape
  padded = F.pad(x, (pad, pad, pad, pad))
  off = torch.randint(0, 2 * pad + 1, (b, 2), generator=gen)
  flip = torch.rand(b, generator=gen) < 0.5
  rows = off[:, :1] + torch.arange(h)                               # (B, H)
  cols = torch.arange(w).expand(b, w)
  cols = off[:, 1:] + torch.where(flip[:, None], w - 1 - cols, cols)  # (B, W)
  return padded[torch.arange(b)[:, None, None, None], torch.arange(c)[None, :, None, None],
                rows[:, None, :, None], cols[:, None, None, :]]


def mixjax_init(model: nn.Module) -> None:
  """Re-initializes `model` as mixjax's CNN is initialized (`mixjax.models.base.conv_init`
  and flax's `nn.Dense` defaults): convolution kernels N(0, 2/fan_out) (He normal over
  fan-out, fan_out = k·k·C_out), dense kernels LeCun truncated normal (variance 1/fan_in,
  truncated at ±2σ of the underlying normal, σ rescaled by 1/0.8796 so the variance is
  1/fan_in), dense biases 0. BatchNorm's scale 1 and bias 0 are the same in both."""
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
      elif isinstance(m, nn.Linear):
        std = (1.0 / m.in_features) ** 0.5 / 0.87962566103423978
        nn.init.trunc_normal_(m.weight, std=std, a=-2 * std, b=2 * std)
        nn.init.zeros_(m.bias)


def main(argv=None) -> None:
  t_start = time.time()
  print(f"T_START {t_start:.6f}", flush=True)
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--epochs", type=int, default=10)
  parser.add_argument("--idx_dir", default="/usr/share/datasets/fashion-mnist")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
  parser.add_argument("--init", choices=("torch", "mixjax"), default="torch",
                      help="torch: PyTorch's default initialization; mixjax: the "
                      "initialization of mixjax's CNN (`mixjax_init`).")
  args = parser.parse_args(argv)
  torch.set_num_threads(args.threads)
  torch.manual_seed(args.seed)
  np.random.seed(args.seed)  # timm's Mixup draws λ from NumPy's global RNG
  gen = torch.Generator().manual_seed(args.seed)
  mixup = load_timm_mixup().Mixup(mixup_alpha=0.2, cutmix_alpha=0.0, label_smoothing=0.0,
                                  num_classes=10)

  raw = {k: read_idx(os.path.join(args.idx_dir, f)) for k, f in FILES.items()}
  perm = np.random.default_rng(args.seed).permutation(len(raw["train_y"]))
  train_idx = np.sort(perm[int(round(0.1 * len(perm))):])
  train_x = torch.from_numpy(raw["train_x"][train_idx]).float().div_(255).unsqueeze(1)
  mean, std = train_x.mean(), train_x.std(unbiased=False)
  train_x = (train_x - mean) / std
  train_y = torch.from_numpy(raw["train_y"][train_idx].astype(np.int64))
  test_x = (torch.from_numpy(raw["test_x"].copy()).float().div_(255).unsqueeze(1) - mean) / std
  test_y = torch.from_numpy(raw["test_y"].astype(np.int64))

  model = torch_reference.cnn((28, 28, 1), 10, stages=((32,), (64,)), dense_sizes=(256,))
  if args.init == "mixjax":
    mixjax_init(model)
  batch, n = 128, train_x.shape[0]
  spe = n // batch
  total = spe * args.epochs
  opt = torch.optim.SGD(model.parameters(), lr=0.025, momentum=0.9, nesterov=True,
                        weight_decay=5e-4)
  sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
  criterion = nn.CrossEntropyLoss()
  print(f"params {sum(p.numel() for p in model.parameters())} threads "
        f"{torch.get_num_threads()} torch {torch.__version__}", flush=True)

  def test_accuracy() -> float:
    model.eval()
    correct = 0
    with torch.inference_mode():
      for i in range(0, test_x.shape[0], 1000):
        correct += (model(test_x[i:i + 1000]).argmax(1) == test_y[i:i + 1000]).sum().item()
    model.train()
    return correct / test_x.shape[0]

  print(f"T_TRAIN {time.time():.6f}", flush=True)
  s = 0
  for epoch in range(args.epochs):
    order = torch.randperm(n, generator=gen)
    for i in range(spe):
      idx = order[i * batch:(i + 1) * batch]
      x, target = mixup(augment(train_x[idx], 2, gen), train_y[idx])
      loss = criterion(model(x), target)
      opt.zero_grad(set_to_none=True)
      loss.backward()
      opt.step()
      sched.step()
      s += 1
      if s == 1:
        print(f"T_FIRST {time.time():.6f}", flush=True)
      if s % 100 == 0 or s == total:
        print(f"step {s}/{total} loss {loss.item():.4f} {time.time():.6f}", flush=True)
    acc = test_accuracy()
    print(f"eval {s} {acc:.4f} {time.time():.6f}", flush=True)
  print(f"final_test_accuracy {acc:.4f}", flush=True)


if __name__ == "__main__":
  main()
