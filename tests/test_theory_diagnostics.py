"""mixjax.theory.diagnostics: per-example Theorem 3 terms and the seed notes' bounds,
against the library's approximate-risk terms and the trace inequalities that hold."""
import jax
import numpy as np
import pytest

from mixjax import samplers
from mixjax import theory
from mixjax.theory import diagnostics


def test_per_example_terms_match_library_and_provable_bounds_hold():
  n, d, c = 12, 4, 3
  x = jax.random.normal(jax.random.key(0), (n, d))
  y = jax.nn.one_hot(jax.numpy.arange(n) % c, c)
  w1 = jax.random.normal(jax.random.key(1), (d, 6))
  w2 = jax.random.normal(jax.random.key(2), (6, c))
  f = lambda z: jax.numpy.tanh(z @ w1) @ w2
  stats = theory.data_stats(x, y)
  law = samplers.beta(1.0)
  moments = samplers.theta_moments(law)
  per = {k: np.asarray(v, np.float64)
         for k, v in diagnostics.per_example_terms(f, x, y, stats, moments).items()}
  ref = theory.approx_mixup_terms(None, f, x, y, stats, law, terms=theory.TERMS,
                                  diagnostics=True)
  # Means agree with the library's R1, R2 (= hessian), R3 (independent implementation).
  for ours, theirs in (("R1", "R1"), ("R2", "hessian"), ("R3", "R3")):
    assert per[ours].mean() == pytest.approx(float(ref[theirs]), rel=1e-3, abs=1e-5), ours
  # Chains of trace inequalities with PSD factors (hold for every example):
  # R1_i ≤ ½ trΣ·tr H·‖J − J*‖² ≤ ½ trΣ·Ent·‖J − J*‖², |R3_i| ≤ ½‖Σ_xy‖²·trΣ⁺·tr H⁺.
  tol = 1e-5 * (1 + np.abs(per["B1"]))
  assert np.all(per["R1"] >= -1e-6)
  assert np.all(per["R1"] <= per["B1_mid"] + tol)
  assert np.all(per["B1_mid"] <= per["B1"] + tol)
  assert np.all(np.abs(per["R3"]) <= per["B3_corrected"] * (1 + 1e-5) + 1e-6)
  # tr H = 1 − ‖s‖² ≤ entropy (nats), used by the notes.
  assert np.all(per["trace_h"] <= per["entropy"] + 1e-6)
