"""Temperature scaling (Guo et al., 2017): one scalar T > 0 fit by validation NLL.

The calibrated predictive is softmax(u / T). Fit T on a held-out **validation** split,
never on the test split: the test metrics of a temperature fit on test are optimistic
and not comparable with published numbers.

Write β = 1/T. The mean validation NLL

  L(β) = (1/N) Σ_i [ logsumexp_k(β u_ik) − β u_{i,y_i} ]

is convex in β (a log-sum-exp of functions linear in β, minus a linear term), with

  L'(β)  = (1/N) Σ_i ( E_{p_i(β)}[u_i] − u_{i,y_i} ),   p_i(β) = softmax(β u_i),
  L''(β) = (1/N) Σ_i Var_{p_i(β)}[u_i] ≥ 0.

So L' is nondecreasing and the minimizer is its root. `fit_temperature` brackets the
root inside [1/max_temperature, 1/min_temperature] and finds it with Brent's method
(`scipy.optimize.brentq`) on the host, each L' evaluated by a jitted JAX pass over the
logits. This is exact up to float32 rounding of L' (relative error ~1e-6 in T for
O(1) logits), which is far more precise than minimizing the flat NLL itself.
When L' does not change sign in the bracket the optimum is at the boundary: a validation
set classified correctly with margin everywhere wants T → 0, and uninformative or
anti-correlated logits want T → ∞; the boundary is returned with a warning.
"""
from __future__ import annotations

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize


def _check_logits_labels(logits, labels):
  logits = jnp.asarray(logits)
  labels = jnp.asarray(labels)
  if logits.ndim != 2 or logits.shape[0] < 1 or logits.shape[1] < 2:
    raise ValueError(
        f"logits must be (N, num_classes) with N >= 1 and num_classes >= 2, got "
        f"{logits.shape}.")
  if labels.shape != logits.shape[:1]:
    raise ValueError(
        f"labels must be (N,) = {logits.shape[:1]} integer class indices, got shape "
        f"{labels.shape}; for one-hot labels pass jnp.argmax(y, -1).")
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}.")
  lo, hi = int(jnp.min(labels)), int(jnp.max(labels))
  if lo < 0 or hi >= logits.shape[1]:
    raise ValueError(f"labels must lie in [0, {logits.shape[1]}), got [{lo}, {hi}].")
  if not bool(jnp.all(jnp.isfinite(logits))):
    raise ValueError("logits contain NaN or inf; fix the model outputs before calibrating.")
  return logits.astype(jnp.float32), labels


def _check_temperature(temperature):
  if isinstance(temperature, jax.core.Tracer):
    return
  t = np.asarray(temperature)
  if t.size != 1 or not np.isfinite(t) or not t > 0:
    raise ValueError(f"temperature must be a finite scalar > 0, got {temperature!r}.")


@jax.jit
def _nll_and_slope(logits, labels, beta):
  """Mean NLL L(β) and its derivative L'(β) at inverse temperature β."""
  log_p = jax.nn.log_softmax(beta * logits, axis=-1)
  u_y = jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
  lp_y = jnp.take_along_axis(log_p, labels[:, None], axis=-1)[:, 0]
  expected_u = jnp.sum(jnp.exp(log_p) * logits, axis=-1)
  return -jnp.mean(lp_y), jnp.mean(expected_u - u_y)


def temperature_nll(logits, labels, temperature) -> float:
  """Mean NLL (nats) of softmax(logits / temperature) at the given labels."""
  logits, labels = _check_logits_labels(logits, labels)
  _check_temperature(temperature)
  nll, _ = _nll_and_slope(logits, labels, jnp.float32(1.0 / float(temperature)))
  return float(nll)


def fit_temperature(logits, labels, *, min_temperature: float = 1e-2,
                    max_temperature: float = 1e2) -> float:
  """The T > 0 minimizing the mean NLL of softmax(logits / T); see the module docstring.

  Use a held-out validation split, never the test split.

  Args:
    logits: (N, c) validation logits (host or device array).
    labels: (N,) integer validation labels.
    min_temperature: lower end of the search interval (> 0).
    max_temperature: upper end of the search interval.

  Returns:
    The fitted temperature as a Python float in [min_temperature, max_temperature]
    (always > 0). Not jit-able: it runs a host-side root finder.
  """
  if not 0 < min_temperature < max_temperature < np.inf:
    raise ValueError(
        "Need 0 < min_temperature < max_temperature < inf, got "
        f"({min_temperature}, {max_temperature}).")
  logits, labels = _check_logits_labels(logits, labels)

  def slope(beta):
    return float(_nll_and_slope(logits, labels, jnp.float32(beta))[1])

  beta_lo, beta_hi = 1.0 / max_temperature, 1.0 / min_temperature
  slope_lo, slope_hi = slope(beta_lo), slope(beta_hi)
  if slope_lo >= 0 and slope_hi <= 0:
    logging.warning("fit_temperature: the NLL does not depend on T (constant logits?); "
                    "returning T = 1.")
    return 1.0
  if slope_lo >= 0:
    logging.warning("fit_temperature: the NLL decreases up to T = max_temperature = %g "
                    "(uninformative or anti-correlated logits); returning it.",
                    max_temperature)
    return float(max_temperature)
  if slope_hi <= 0:
    logging.warning("fit_temperature: the NLL decreases down to T = min_temperature = %g "
                    "(validation set separated with margin); returning it.",
                    min_temperature)
    return float(min_temperature)
  beta = scipy.optimize.brentq(slope, beta_lo, beta_hi, xtol=1e-12, rtol=1e-10,
                               maxiter=200)
  return float(1.0 / beta)


def apply_temperature(logits, temperature):
  """Returns logits / temperature (same shape and dtype); temperature must be > 0."""
  _check_temperature(temperature)
  logits = jnp.asarray(logits)
  return (logits / temperature).astype(logits.dtype)
