"""The usual PyTorch mixup recipe, for a side-by-side speed reference (benchmarks only).

`resnet50` is a hand-written mirror of `mixjax.models` "resnet50" (torchvision's
`resnet50` architecture, 25,557,032 parameters for 1000 classes; written here because
torchvision is not installed beside this torch), and `load_flax_resnet50` copies a
mixjax ResNet-50's variables into it (`benchmarks.bench_resnet` checks that both
networks then compute the same logits).

Same architectures as the JAX benchmark (`mixjax.models` "mlp" with hidden sizes
(512, 512), "lenet" with its defaults: two 5×5 SAME convolutions with 32 and 64
channels, ReLU, 2×2 max-pooling, a 256-unit dense layer, and "cnn", the Fashion-MNIST
recipe's conv-BatchNorm-ReLU-pool network), the same batch and SGD with momentum. The
mixup step is the recipe of Zhang et al.'s reference code
(facebookresearch/mixup-cifar10): one λ ~ Beta(α, α) per batch, a `torch.randperm`
partner, and the loss λ·CE(f(x_mix), y_a) + (1 − λ)·CE(f(x_mix), y_b). λ comes from a
local NumPy Generator (no global RNG).

`make_steps` returns closures `run(num_steps)` that run that many training steps
synchronously (CPU), for `benchmarks.bench_steps` to time.
"""
from __future__ import annotations

from typing import Callable, Dict, Sequence

import numpy as np
import torch
from torch import nn


def mlp(in_features: int, num_classes: int, hidden_sizes: Sequence[int] = (512, 512)
        ) -> nn.Module:
  layers, width = [nn.Flatten()], in_features
  for h in hidden_sizes:
    layers += [nn.Linear(width, h), nn.ReLU()]
    width = h
  return nn.Sequential(*layers, nn.Linear(width, num_classes))


def lenet(input_shape: Sequence[int], num_classes: int, features: Sequence[int] = (32, 64),
          kernel_size: int = 5, dense_sizes: Sequence[int] = (256,)) -> nn.Module:
  """Mirror of `mixjax.models.LeNet` (NCHW here; `input_shape` is (H, W, C))."""
  height, width, channels = input_shape
  layers = []
  for f in features:
    layers += [nn.Conv2d(channels, f, kernel_size, padding="same"), nn.ReLU(),
               nn.MaxPool2d(2, ceil_mode=True)]
    channels, height, width = f, -(-height // 2), -(-width // 2)
  layers.append(nn.Flatten())
  size = channels * height * width
  for h in dense_sizes:
    layers += [nn.Linear(size, h), nn.ReLU()]
    size = h
  return nn.Sequential(*layers, nn.Linear(size, num_classes))


def cnn(input_shape: Sequence[int], num_classes: int,
        stages: Sequence[Sequence[int]] = ((32, 32), (64, 64)),
        dense_sizes: Sequence[int] = (256,)) -> nn.Module:
  """Mirror of `mixjax.models.CNN` with BatchNorm and ReLU (NCHW here; `input_shape` is
  (H, W, C)): per stage, 3×3 SAME convolutions without bias, each followed by BatchNorm
  (momentum 0.1 in PyTorch's convention = flax's 0.9, ε = 1e-5) and ReLU, then a 2×2
  max-pool; flatten, dense + ReLU layers, linear head."""
  height, width, channels = input_shape
  layers = []
  for stage in stages:
    for f in stage:
      layers += [nn.Conv2d(channels, f, 3, padding="same", bias=False),
                 nn.BatchNorm2d(f, eps=1e-5, momentum=0.1), nn.ReLU()]
      channels = f
    layers.append(nn.MaxPool2d(2, ceil_mode=True))
    height, width = -(-height // 2), -(-width // 2)
  layers.append(nn.Flatten())
  size = channels * height * width
  for h in dense_sizes:
    layers += [nn.Linear(size, h), nn.ReLU()]
    size = h
  return nn.Sequential(*layers, nn.Linear(size, num_classes))


class Bottleneck(nn.Module):
  """torchvision's `Bottleneck` (v1.5: stride in the 3×3 convolution)."""

  def __init__(self, c_in: int, features: int, stride: int):
    super().__init__()
    out = 4 * features
    self.conv1 = nn.Conv2d(c_in, features, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(features, eps=1e-5, momentum=0.1)
    self.conv2 = nn.Conv2d(features, features, 3, stride=stride, padding=1, bias=False)
    self.bn2 = nn.BatchNorm2d(features, eps=1e-5, momentum=0.1)
    self.conv3 = nn.Conv2d(features, out, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(out, eps=1e-5, momentum=0.1)
    self.relu = nn.ReLU(inplace=True)
    self.shortcut = None
    if stride != 1 or c_in != out:
      self.shortcut = nn.Sequential(nn.Conv2d(c_in, out, 1, stride=stride, bias=False),
                                    nn.BatchNorm2d(out, eps=1e-5, momentum=0.1))

  def forward(self, x):
    h = self.relu(self.bn1(self.conv1(x)))
    h = self.relu(self.bn2(self.conv2(h)))
    h = self.bn3(self.conv3(h))
    return self.relu(h + (x if self.shortcut is None else self.shortcut(x)))


class ResNet50(nn.Module):
  """torchvision's ResNet-50 layout (NCHW): conv 7×7/2 (pad 3), BN, ReLU, max-pool 3×3/2
  (pad 1), bottleneck stages `stage_sizes` with widths width·(1, 2, 4, 8) and strides
  (1, 2, 2, 2), global average pool, linear head."""

  def __init__(self, num_classes: int = 1000, stage_sizes: Sequence[int] = (3, 4, 6, 3),
               width: int = 64, in_channels: int = 3):
    super().__init__()
    self.stem = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
    self.stem_bn = nn.BatchNorm2d(width, eps=1e-5, momentum=0.1)
    self.relu = nn.ReLU(inplace=True)
    self.pool = nn.MaxPool2d(3, stride=2, padding=1)
    blocks, c_in = [], width
    for s, n in enumerate(stage_sizes):
      for b in range(n):
        blocks.append(Bottleneck(c_in, width * 2**s, 2 if (s > 0 and b == 0) else 1))
        c_in = 4 * width * 2**s
    self.blocks = nn.Sequential(*blocks)
    self.head = nn.Linear(c_in, num_classes)

  def forward(self, x):
    x = self.pool(self.relu(self.stem_bn(self.stem(x))))
    x = self.blocks(x)
    return self.head(torch.flatten(x.mean((2, 3)), 1))


def resnet50(num_classes: int = 1000, **kwargs) -> ResNet50:
  return ResNet50(num_classes, **kwargs)


def load_flax_resnet50(model: ResNet50, variables) -> ResNet50:
  """Copies the variables of a mixjax "resnet50" (same stage sizes and width) into
  `model`: HWIO kernels -> OIHW, dense (in, out) -> (out, in), BN scale/bias/mean/var ->
  weight/bias/running_mean/running_var."""
  params, stats = variables["params"], variables["batch_stats"]

  def conv(t, k):
    t.weight.data = torch.from_numpy(np.asarray(k, np.float32).transpose(3, 2, 0, 1).copy())

  def bn(t, p, s):
    for name, v in (("weight", p["scale"]), ("bias", p["bias"]), ("running_mean", s["mean"]),
                    ("running_var", s["var"])):
      getattr(t, name).data = torch.from_numpy(np.asarray(v, np.float32).copy())

  conv(model.stem, params["stem"]["kernel"])
  bn(model.stem_bn, params["stem_bn"], stats["stem_bn"])
  names = sorted((k for k in params if k.startswith("stage")),
                 key=lambda k: tuple(int(t) for t in k[5:].split("_block")))
  for block, name in zip(model.blocks, names):
    p, s = params[name], stats[name]
    for i in (1, 2, 3):
      conv(getattr(block, f"conv{i}"), p[f"conv{i}"]["kernel"])
      bn(getattr(block, f"bn{i}"), p[f"bn{i}"], s[f"bn{i}"])
    if block.shortcut is not None:
      conv(block.shortcut[0], p["shortcut"]["kernel"])
      bn(block.shortcut[1], p["shortcut_bn"], s["shortcut_bn"])
  model.head.weight.data = torch.from_numpy(np.asarray(params["head"]["kernel"]).T.copy())
  model.head.bias.data = torch.from_numpy(np.asarray(params["head"]["bias"]).copy())
  return model


def make_steps(model_name: str, input_shape: Sequence[int], num_classes: int,
               batch_size: int, *, alpha: float = 1.0, lr: float = 0.01,
               momentum: float = 0.9, threads: int | None = None, seed: int = 0,
               model_kwargs: dict | None = None) -> Dict[str, Callable[[int], None]]:
  """Builds the PyTorch ERM and mixup training steps on a fixed synthetic batch.

  Args:
    model_name: "mlp", "lenet" or "cnn" (with BatchNorm, in training mode).
    input_shape: one example's shape, (d,) or (H, W, C).
    num_classes: c.
    batch_size: B.
    alpha: Beta(α, α) parameter of the mixup λ.
    lr, momentum: SGD hyper-parameters.
    threads: `torch.set_num_threads` (match the cores JAX uses).
    seed: seed of the model initialization, data and λ stream.
    model_kwargs: keyword arguments of the "cnn" mirror (stages, dense_sizes).

  Returns:
    {"erm": run, "mixup": run}, each `run(num_steps)` trains in place.
  """
  if threads is not None:
    torch.set_num_threads(threads)
  torch.manual_seed(seed)
  rng = np.random.default_rng(seed)
  if model_name == "mlp":
    model = mlp(int(np.prod(input_shape)), num_classes)
    x = torch.from_numpy(rng.normal(size=(batch_size, *input_shape)).astype(np.float32))
  elif model_name in ("lenet", "cnn"):
    if model_name == "lenet":
      model = lenet(input_shape, num_classes)
    else:
      model = cnn(input_shape, num_classes, **(model_kwargs or {}))
    h, w, c = input_shape
    x = torch.from_numpy(rng.normal(size=(batch_size, c, h, w)).astype(np.float32))
  else:
    raise ValueError(f"Unknown torch reference model {model_name!r}; known: cnn, lenet, "
                     "mlp.")
  y = torch.from_numpy(rng.integers(0, num_classes, size=batch_size))
  opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
  criterion = nn.CrossEntropyLoss()
  lam_rng = np.random.default_rng(seed + 1)

  def erm(num_steps: int) -> None:
    for _ in range(num_steps):
      opt.zero_grad(set_to_none=True)
      loss = criterion(model(x), y)
      loss.backward()
      opt.step()

  def mixup(num_steps: int) -> None:
    for _ in range(num_steps):
      lam = float(lam_rng.beta(alpha, alpha))
      index = torch.randperm(batch_size)
      mixed_x = lam * x + (1 - lam) * x[index]
      out = model(mixed_x)
      loss = lam * criterion(out, y) + (1 - lam) * criterion(out, y[index])
      opt.zero_grad(set_to_none=True)
      loss.backward()
      opt.step()

  return {"erm": erm, "mixup": mixup}
