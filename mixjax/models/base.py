"""The MODELS registry, `get_model`, and the pieces shared by the models.

Every model is a Flax **Linen** module with the call signature

    logits = model.apply(variables, x, train=False)                          # eval
    logits, updates = model.apply(variables, x, train=True,
                                  mutable=["batch_stats"], rngs={"dropout": k})  # train

`x` is a float batch `(B, ...)` (NHWC for the convolutional models), `logits` is
`(B, num_classes)` float32. Parameters are float32; `dtype` (e.g. `jnp.bfloat16` on GPU)
sets the computation dtype only (mixed precision): inputs and activations are cast to it,
while parameters, BatchNorm statistics (computed in float32) and the returned logits stay
float32, so the loss, the gradients' accumulation into the float32 parameters, the
optimizer state and the metrics are float32. `build_model(..., dtype="bfloat16")` takes
the dtype by name (`COMPUTE_DTYPES`). BatchNorm models take `bn_axis_name` (None, or the mesh
axis name `"data"` inside `jax.shard_map`): with an axis name, the batch mean and variance
are `pmean`-ed over that axis, so the statistics are those of the global batch
(exactly, for equal per-device batch sizes).

`build_model` is `get_model` as a trainer uses it: BatchNorm over the trainer's mesh axis
for the models that have BatchNorm, wrapped in `Reshaped` when the network sees each
example in another shape.
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from mixjax.models import layers
from mixjax.models.reshaped import Reshaped
from mixjax.registry import Registry

MODELS = Registry("model")

ACTIVATIONS = Registry("activation")
ACTIVATIONS.register("relu", nn.relu)
ACTIVATIONS.register("gelu", nn.gelu)
ACTIVATIONS.register("tanh", jnp.tanh)
ACTIVATIONS.register("sigmoid", nn.sigmoid)
ACTIVATIONS.register("silu", nn.silu)
ACTIVATIONS.register("swish", nn.swish)
ACTIVATIONS.register("elu", nn.elu)
ACTIVATIONS.register("softplus", nn.softplus)
ACTIVATIONS.register("identity", lambda x: x)

Initializer = Callable[..., jax.Array]


@dataclasses.dataclass(frozen=True)
class Init:
  """A weight-initialization scheme, by layer kind (`INITS`; models with a `weight_init`
  field take its name). For a convolution kernel (k, k, C_in, C_out), fan_in = k²·C_in
  and fan_out = k²·C_out; for a dense kernel (D_in, D_out), fan_in = D_in.

  Attributes:
    conv: the convolution kernels' initializer.
    dense: the dense kernels' initializer.
    bias: `bias(fan_in)`, the initializer of the biases of a layer with that fan-in
      (convolutions with a bias, and dense layers).
  """
  conv: Initializer
  dense: Initializer
  bias: Callable[[int], Initializer]


def _zero_bias(fan_in: int) -> Initializer:
  del fan_in
  return nn.initializers.zeros


def _uniform_bias(fan_in: int) -> Initializer:
  """U(−1/√fan_in, 1/√fan_in), PyTorch's default bias of `nn.Linear` and `nn.Conv2d`."""
  bound = 1.0 / float(fan_in) ** 0.5

  def init(key: jax.Array, shape: Any, dtype: Any = jnp.float32) -> jax.Array:
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


# U(±1/√fan_in), variance 1/(3·fan_in): PyTorch's default kernel initialization
# (`kaiming_uniform_(w, a=√5)`: gain √(2/(1+5)), bound √3·gain/√fan_in).
_TORCH_KERNEL = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")

INITS = Registry("initialization")
# "he": convolutions N(0, 2/fan_out) (He et al., 2015, over fan-out, as the CIFAR
# reference code), dense kernels LeCun truncated normal (variance 1/fan_in; flax's
# default), biases 0. The default, and every recorded result's.
INITS.register("he", Init(conv=nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
                          dense=nn.initializers.lecun_normal(), bias=_zero_bias))
# "torch": PyTorch's defaults for `nn.Conv2d` and `nn.Linear`: kernels and biases
# U(±1/√fan_in). On the Fashion-MNIST CPU recipe (10 epochs, 3 seeds) it trains to
# 0.4 points more test accuracy than "he" (docs/speed.md, "Accuracy").
INITS.register("torch", Init(conv=_TORCH_KERNEL, dense=_TORCH_KERNEL, bias=_uniform_bias))
DEFAULT_INIT = "he"

# The default scheme's convolution kernels (the ResNets use it).
conv_init = INITS.get(DEFAULT_INIT).conv

BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5

# The computation dtypes a config may name (`build_model(..., dtype=NAME)`). float16 is
# left out: without loss scaling its gradients underflow; bfloat16 has float32's exponent.
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

Dtype = Any


def batch_norm(train: bool, axis_name: str | None, dtype: Dtype, name: str | None = None,
               scale_init: Callable[..., jax.Array] = nn.initializers.ones) -> nn.Module:
  """BatchNorm with momentum 0.9; batch statistics averaged over `axis_name` if given.

  `layers.BatchNorm` on CPU (the same variables and values, faster statistics), flax's
  `nn.BatchNorm` elsewhere (`layers.cpu_forms`). Both keep float32 parameters and
  running statistics and compute the statistics in float32 for any `dtype` (flax's
  `force_float32_reductions`); `dtype` is the output's. `scale_init` initializes γ
  (zeros for a residual branch's last BN, Goyal et al. 2017)."""
  cls = layers.BatchNorm if layers.cpu_forms() else nn.BatchNorm
  return cls(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
             axis_name=axis_name, dtype=dtype, param_dtype=jnp.float32,
             scale_init=scale_init, name=name)


def check_common(module: nn.Module) -> None:
  """Validates the fields shared by all models (called from `__post_init__`)."""
  if int(module.num_classes) < 1:
    raise ValueError(
        f"{type(module).__name__}: num_classes must be >= 1, got {module.num_classes}.")
  axis_name = getattr(module, "bn_axis_name", None)
  if axis_name is not None and not isinstance(axis_name, str):
    raise ValueError(
        f"{type(module).__name__}: bn_axis_name must be None or a mesh axis name such as "
        f"'data', got {axis_name!r}.")
  try:
    jnp.dtype(module.dtype)
  except TypeError as e:
    raise ValueError(
        f"{type(module).__name__}: dtype {module.dtype!r} is not a dtype; use e.g. "
        "jnp.float32 or jnp.bfloat16.") from e


def check_input(module: nn.Module, x: jax.Array, min_ndim: int) -> None:
  if x.ndim < min_ndim:
    raise ValueError(
        f"{type(module).__name__} expects a batch with at least {min_ndim} dimensions "
        f"(B, H, W, C for convolutional models), got shape {x.shape}. Reshape 1-D "
        "signals to (B, L, 1, 1) first.")


def get_model(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
  """Builds the model registered as `name` with `num_classes` outputs.

  Args:
    name: one of `MODELS.names()` (`mlp`, `lenet`, `cnn`, `random_features`,
      `preact_resnet18`, `resnet34`, `wrn28_10`, `resnet50`).
    num_classes: number of output logits.
    **kwargs: constructor fields of the model (e.g. `bn_axis_name="data"`,
      `dtype=jnp.bfloat16`, `width=16`, `dropout_rate=0.3`).

  Raises:
    ValueError: unknown name (the message lists the known ones) or a keyword argument
      the model does not have (the message lists the ones it has), or a bad value.
  """
  factory = MODELS.get(name)
  allowed = model_arguments(name)
  unknown = sorted(set(kwargs) - set(allowed)) if allowed is not None else []
  if unknown:
    raise ValueError(
        f"Model {name!r} got unknown keyword argument(s) {unknown}. Its options are: "
        f"{', '.join(allowed)}.")
  return factory(num_classes=num_classes, **kwargs)


def model_arguments(name: str) -> list[str] | None:
  """The keyword arguments model `name` takes besides `num_classes`, sorted: the init
  fields of its Flax module (a dataclass), or its factory's parameters; None when the
  factory takes any keyword (nothing to check)."""
  factory = MODELS.get(name)
  cls = _module_class(factory)
  if cls is not None and dataclasses.is_dataclass(cls):
    names = {f.name for f in dataclasses.fields(cls) if f.init}
  else:
    params = inspect.signature(factory).parameters.values()
    if any(p.kind == p.VAR_KEYWORD for p in params):
      return None
    names = {p.name for p in params}
  return sorted(names - {"parent", "name", "num_classes"})


def build_model(name: str, num_classes: int, kwargs: dict[str, Any] | None = None, *,
                input_shape: tuple[int, ...] | None = None,
                bn_axis_name: str | None = None, dtype: str | None = None) -> nn.Module:
  """`get_model(name, num_classes, **kwargs)`, as a trainer builds it.

  Args:
    name, num_classes, kwargs: as for `get_model`.
    input_shape: if given, the model is wrapped in `Reshaped`, so that it sees each
      example reshaped to `input_shape` (same number of entries) while its caller feeds
      the data in their own shape.
    bn_axis_name: BatchNorm's axis (e.g. the mesh axis "data"), used for the models that
      have BatchNorm unless `kwargs` sets it.
    dtype: the computation dtype by name, a key of `COMPUTE_DTYPES` ("float32",
      "bfloat16"); None keeps the model's default (float32). Parameters, BatchNorm
      statistics and the logits stay float32 whatever the name (mixed precision).

  Raises:
    ValueError: as `get_model`; an unknown dtype name (the message lists the known
      ones); `dtype` given both here and in `kwargs`.
  """
  kwargs = dict(kwargs or {})
  cls = _module_class(MODELS.get(name))
  fields = {f.name for f in dataclasses.fields(cls)} if cls is not None else set()
  if "bn_axis_name" in fields:
    kwargs.setdefault("bn_axis_name", bn_axis_name)
  if dtype is not None:
    if "dtype" in kwargs:
      raise ValueError(
          f"the computation dtype is set twice (dtype={dtype!r} and kwargs dtype="
          f"{kwargs['dtype']!r}); set it once, as the dtype name.")
    kwargs["dtype"] = compute_dtype(dtype)
  model = get_model(name, num_classes, **kwargs)
  if input_shape is None:
    return model
  return Reshaped(model, tuple(int(s) for s in input_shape))


def compute_dtype(name: str) -> Any:
  """The JAX dtype of a computation-dtype name (a key of `COMPUTE_DTYPES`)."""
  if name not in COMPUTE_DTYPES:
    raise ValueError(f"unknown computation dtype {name!r}; use one of "
                     f"{', '.join(COMPUTE_DTYPES)}.")
  return COMPUTE_DTYPES[name]


def _module_class(factory: Any) -> type | None:
  """The module class a MODELS entry builds (a class, or a `register` factory's)."""
  return factory if isinstance(factory, type) else getattr(factory, "module_class", None)


def register(name: str, **defaults: Any) -> Callable[[type], type]:
  """Registers a module class under `name`, with default field values for that name."""
  def _add(cls):
    if defaults:
      def factory(**kwargs):
        return cls(**{**defaults, **kwargs})
      factory.module_class = cls
      factory.__doc__ = f"{cls.__name__} with defaults {defaults}."
      MODELS.register(name, factory)
    else:
      MODELS.register(name, cls)
    return cls
  return _add
