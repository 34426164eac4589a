"""Flax Linen models and the MODELS registry (`get_model(name, num_classes, **kwargs)`;
`build_model` adds the trainer's BatchNorm axis and the `Reshaped` view)."""
from __future__ import annotations

from mixjax.models.base import (ACTIVATIONS, COMPUTE_DTYPES, INITS, MODELS, build_model,
                                get_model)
from mixjax.models.cnn import CNN
from mixjax.models.lenet import LeNet
from mixjax.models.mlp import MLP
from mixjax.models.random_features import RandomFeatures
from mixjax.models.reshaped import Reshaped
from mixjax.models.resnet import BottleneckResNet, PreActResNet, ResNet
from mixjax.models.wide_resnet import WideResNet

__all__ = ["ACTIVATIONS", "BottleneckResNet", "CNN", "COMPUTE_DTYPES", "INITS", "MODELS",
           "build_model", "get_model", "LeNet", "MLP", "PreActResNet", "RandomFeatures",
           "ResNet", "Reshaped", "WideResNet"]
