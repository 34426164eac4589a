"""One fixed-size array form for every law with a known θ-law, to vmap over laws of any
structure (the studies engine trains Beta, W-shaped, RegMixup, atoms and ERM runs in one
program this way).

By THEORY.md §1 the mixup risk depends on the λ-law only through the law Q of
θ = max(λ, 1 − λ) on [½, 1]. Every component of a sampler's θ-law (`theta_law()`) other
than a folded *asymmetric* Beta or a `from_fn` law has one parametric form,

    θ = loc + scale · W^power,     W ~ Beta(a, b),

chosen with its mixture weight:

  * folded Beta(α, α) (classic mixup):  loc = ½, scale = ½, W ~ Beta(½, α), power = ½.
    Proof: if λ ~ Beta(α, α) then (2λ − 1)² = 1 − 4λ(1 − λ) ~ Beta(½, α), and
    θ = ½ + ½|2λ − 1|.
  * W-shaped (ShiftedBeta(a, b)): θ = ½ + X/2, X ~ Beta(a, b): loc = ½, scale = ½, power 1.
  * atoms θ = t: loc = t, scale = 0 (W is drawn but unused). ERM is the atom θ = 1.

`pack(sampler, K)` writes a sampler as a `PackedLaw` of K components (padded with
weight-0 components), `stack_packed` stacks several along a leading axis, and
`sample_theta` / `sample_lambda` / `packed_sampler` draw from the arrays, so one program
vmaps over laws, seeds and hyper-parameters alike. The draws are those of the packed
form: they follow the same law as the sampler's own draws, not the same numbers.
A law with no packed form raises a ValueError that says so.
"""
from __future__ import annotations

import functools
from typing import Sequence

import chex
import flax.struct
import jax
import jax.numpy as jnp

from mixjax.samplers.laws import Atom, FoldedBeta, Sampler, ShiftedBeta, _check


class PackedLaw(flax.struct.PyTreeNode):
  """Arrays of a θ-law with K components (any leading batch axes, e.g. (L, K) stacked).

  Fields (all float32, shape (..., K)): weight (sums to 1 over K), loc, scale, a, b,
  power. Padding components have weight 0.
  """
  weight: jax.Array
  loc: jax.Array
  scale: jax.Array
  a: jax.Array
  b: jax.Array
  power: jax.Array


_PAD = {"loc": 1.0, "scale": 0.0, "a": 1.0, "b": 1.0, "power": 1.0}


def _component(c) -> dict[str, float]:
  if isinstance(c, Atom):
    return {"loc": float(c.theta), "scale": 0.0, "a": 1.0, "b": 1.0, "power": 1.0}
  if isinstance(c, FoldedBeta) and c.a == c.b:
    return {"loc": 0.5, "scale": 0.5, "a": 0.5, "b": float(c.b), "power": 0.5}
  if isinstance(c, ShiftedBeta):
    return {"loc": 0.5, "scale": 0.5, "a": float(c.a), "b": float(c.b), "power": 1.0}
  return {}


def pack(sampler: Sampler, num_components: int | None = None) -> PackedLaw:
  """`sampler`'s θ-law as arrays of length `num_components` (≥ its component count).

  Raises:
    ValueError: a component has no packed form (a folded asymmetric Beta, a `from_fn`
      law): such a law cannot join a vmapped program of packed laws; train it on its own.
  """
  law = _check(sampler).theta_law()
  cols = []
  for c in law.components:
    col = _component(c)
    if not col:
      raise ValueError(
          f"{sampler.name}: its θ-law component {c} has no packed form (supported: "
          "atoms, folded symmetric Beta(α, α), W-shaped), so it cannot be vmapped with "
          "other laws; train it in a program of its own.")
    cols.append(col)
  k = num_components or len(cols)
  if k < len(cols):
    raise ValueError(f"{sampler.name} has {len(cols)} components; cannot pack it into "
                     f"{k}. Pass num_components ≥ {len(cols)}.")
  cols += [_PAD] * (k - len(cols))
  weight = [float(w) for w in law.weights] + [0.0] * (k - len(law.weights))
  return PackedLaw(weight=jnp.asarray(weight, jnp.float32),
                   **{f: jnp.asarray([c[f] for c in cols], jnp.float32) for f in _PAD})


def stack_packed(samplers: Sequence[Sampler], num_components: int | None = None
                 ) -> PackedLaw:
  """Packs samplers to a common K and stacks them: fields of shape (len(samplers), K)."""
  if not samplers:
    raise ValueError("stack_packed needs at least one sampler.")
  k = max([s.num_components for s in samplers] + [num_components or 0])
  return jax.tree.map(lambda *xs: jnp.stack(xs), *[pack(s, k) for s in samplers])


def sample_theta(law: PackedLaw, key: jax.Array, shape: Sequence[int] = ()) -> jax.Array:
  """Draws θ ∈ [½, 1] from a packed law; jit/vmap-able over `law` and `key`.

  Args:
    law: a `PackedLaw` with fields of shape (K,) (vmap over extra leading axes).
    key: PRNG key. `fold_in(key, 0)` picks the component (inverse CDF of a uniform on
      the cumulative weights), `fold_in(key, 1)` draws W.
    shape: output shape.

  Returns:
    θ, float32 array of `shape`. Atoms are reproduced exactly (θ = loc). The draws do not
    depend on the padding: a law packed to any K ≥ its size gives the same θ.
  """
  return _sample_theta(law, key, tuple(int(s) for s in shape))


@functools.partial(jax.jit, static_argnums=(2,))
def _sample_theta(law: PackedLaw, key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  chex.assert_rank(law.weight, 1)
  cum = jnp.cumsum(law.weight)
  cum = cum / cum[-1]
  u = jax.random.uniform(jax.random.fold_in(key, 0), shape, jnp.float32)
  comp = jnp.searchsorted(cum, u, side="right")
  last = jnp.max(jnp.where(law.weight > 0, jnp.arange(law.weight.shape[0]), 0))
  comp = jnp.minimum(comp, last)
  a, b = law.a[comp], law.b[comp]
  w = jax.random.beta(jax.random.fold_in(key, 1), a, b, shape=shape, dtype=jnp.float32)
  theta = law.loc[comp] + law.scale[comp] * w ** law.power[comp]
  # Atoms exactly (scale = 0 gives loc + 0 · w = loc, also for w = nan-free draws).
  theta = jnp.where(law.scale[comp] == 0, law.loc[comp], theta)
  return jnp.clip(theta, 0.5, 1.0)


def sample_lambda(law: PackedLaw, key: jax.Array, shape: Sequence[int] = (), *,
                  symmetric: bool = True) -> jax.Array:
  """Draws λ: θ, flipped to 1 − θ with probability ½ when `symmetric` (THEORY.md §1).

  The flip makes λ's law symmetric about ½ with θ = max(λ, 1 − λ) ~ Q. With
  `symmetric=False` this returns θ itself (the folded draw).
  """
  theta = sample_theta(law, jax.random.fold_in(key, 0), shape)
  if not symmetric:
    return theta
  flip = jax.random.bernoulli(jax.random.fold_in(key, 1), 0.5, tuple(shape))
  return jnp.where(flip, 1.0 - theta, theta)


def packed_sampler(law: PackedLaw, *, symmetric: bool = True):
  """A sampler-style callable `sampler(key, shape=()) -> λ` over packed arrays.

  Use it inside vmapped code (e.g. as the `sampler` of `mixjax.mixing.mix`), where the
  law's arrays are traced.
  """
  def sampler(key, shape=()):
    return sample_lambda(law, key, shape, symmetric=symmetric)
  return sampler
