"""Test-time rescaling of a mixup-trained model (docs/THEORY.md §5).

A model trained with mixup has, by Theorem 1, been fitted to the transformed data
(x̃, ỹ) = (x̄ + θ̄(x − x̄), ȳ + θ̄(y − ȳ)). At test time apply it to transformed inputs and
undo the label transform on its outputs:

    f_test(x) = ȳ + ( f(x̄ + θ̄ (x − x̄)) − ȳ ) / θ̄          (on logits)

(the paper's "one-line change"). With balanced classes the ȳ shift is a constant across
classes and cancels in the softmax, so the output side is temperature sharpening by θ̄.
For a mask law (docs/THEORY.md §8) the inputs shrink per pixel by N̄:

    f_test(x) = ȳ + ( f(x̄ + N̄ ⊙ (x − x̄)) − ȳ ) / θ̄,      θ̄ = mean(N̄).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from mixjax.theory import perturbation
from mixjax.theory import stats as stats_lib


def rescaled(logits_fn: Callable[[jax.Array], jax.Array], stats: stats_lib.DataStats,
             theta_bar: Any) -> Callable[[jax.Array], jax.Array]:
  """The rescaled logits function f_test of docs/THEORY.md §5.

  Args:
    logits_fn: f, (B, ...) -> (B, c), examples treated independently.
    stats: training-set `DataStats` (x̄ and ȳ are used).
    theta_bar: θ̄ = E max(λ, 1 − λ) of the training law, in (0, 1], or the law's moments
      (`mixjax.samplers.law_moments(law, input_shape)`): θ-moments use their mean; mask
      moments shrink the inputs per pixel by N̄ (H, W) and the logits by θ̄.

  Returns:
    f_test: (B, ...) -> (B, c), x ↦ ȳ + (f(x̄ + θ̄(x − x̄)) − ȳ)/θ̄ (with N̄ ⊙ for mask
    moments). Exact; jit-able.
  """
  if isinstance(theta_bar, (int, float)) and not 0.0 < theta_bar <= 1.0:
    raise ValueError(
        f"theta_bar must lie in (0, 1] (E max(λ, 1 − λ) is in [1/2, 1]); got {theta_bar}. "
        "Take it from `mixjax.samplers.law_moments(law, input_shape)`.")
  label_factor = perturbation._theta_bar(theta_bar)  # pylint: disable=protected-access

  def f_test(x: jax.Array) -> jax.Array:
    u = logits_fn(perturbation.transform_inputs(x, stats, theta_bar))
    if u.ndim != 2 or u.shape[-1] != stats.num_classes:
      raise ValueError(
          f"logits_fn returned shape {u.shape}; expected (B, {stats.num_classes}) to match "
          "the training labels in stats.")
    y_mean = stats.y_mean.astype(u.dtype)
    return y_mean + (u - y_mean) / label_factor

  return f_test
