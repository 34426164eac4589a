"""The λ-laws the studies compare, as sweep overrides.

A law is the config overrides that select it, {"sampler.name": ..., "sampler.params":
{...}} (`law`), so a list of laws × seeds is a sweep (`runs.points`). Its label is the
sampler's `label` (`label`), which names it in the rows, tables and figures.

The sets (docs/THEORY.md §6): ERM, Beta(α, α), W-shaped, RegMixup-equivalent and the
σ²/θ̄²-optimal law (`ALL`), and `EQUAL_MOMENT_GROUPS`: laws with the same θ̄ and σ² (hence
γ²) but different shapes, discrete laws matched (`samplers.matched_atoms`) to the θ-moments
of Beta(1) and W(0.5), the moments computed by `samplers.theta_moments`.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

from mixjax import samplers


def law(name: str, **params: Any) -> dict[str, Any]:
  """The overrides of a λ-law by registry name, e.g. law("beta", alpha=0.2)."""
  return {"sampler.name": name, "sampler.params": dict(params)}


def sampler_of(overrides: dict) -> samplers.Sampler:
  """The sampler a point's overrides name."""
  return samplers.make_sampler(overrides["sampler.name"],
                               **dict(overrides.get("sampler.params", {})))


def label(overrides: dict) -> str:
  """The label of a law's overrides (`Sampler.label`), e.g. "Beta(0.2)"."""
  return sampler_of(overrides).label


def _matched(target: samplers.Sampler, num_points: int) -> dict[str, Any]:
  m = samplers.theta_moments(target)
  return law("matched_atoms", mean=m.mean, var=m.var, num_points=num_points,
             label=f"{num_points} atoms ≡ {target.label}")


EQUAL_MOMENT_GROUPS = {
    "θ̄=3/4, σ²=1/48": [law("beta", alpha=1.0), _matched(samplers.beta(1.0), 2),
                        _matched(samplers.beta(1.0), 3)],
    "θ̄=3/4, σ²=1/32": [law("w_shaped", a=0.5), _matched(samplers.w_shaped(0.5), 2),
                        _matched(samplers.w_shaped(0.5), 3)],
}

ALL = ([law("erm")] + [law("beta", alpha=a) for a in (0.1, 0.2, 0.5, 1.0, 2.0, 10.0)]
       + [law("w_shaped", a=0.5), law("w_shaped", a=0.2), law("w_shaped", a=0.3, b=0.6)]
       + [law("regmixup", alpha=10.0, eta=1.0), law("regmixup", alpha=1.0, eta=1.0),
          law("regmixup", alpha=math.inf, eta=1.0), law("optimal")])
ALL += [l for g in EQUAL_MOMENT_GROUPS.values() for l in g
        if label(l) not in {label(o) for o in ALL}]

# A smaller set for the more expensive convolutional settings.
CORE = [law("erm"), law("beta", alpha=0.2), law("beta", alpha=1.0), law("beta", alpha=2.0),
        law("w_shaped", a=0.5), law("regmixup", alpha=10.0, eta=1.0),
        law("regmixup", alpha=math.inf, eta=1.0), law("optimal")]


def by_label(labels: Sequence[str]) -> list[dict[str, Any]]:
  """The laws of `ALL` with these labels, in this order (ValueError naming the known
  labels for an unknown one)."""
  known = {label(l): l for l in ALL}
  unknown = [l for l in labels if l not in known]
  if unknown:
    raise ValueError(f"Unknown law labels {unknown}; known: {', '.join(known)}.")
  return [known[l] for l in labels]
