"""Mask laws: CutMix, GMix and timm's mixup/CutMix switch (docs/THEORY.md §8).

A mask law draws, per example, a mask M ∈ [0, 1]^(H×W), the weight of the example's own
pixels (shared by the channels), and the label weight λ = mean(M):

    x_mix = M ⊙ x_i + (1 − M) ⊙ x_π(i)        y_mix = λ y_i + (1 − λ) y_π(i)

    masks, lam = law.masks(key, batch_size, (H, W))      # (B, H, W), (B,) float32

Every λ-law is the constant mask M = λ·1 (`Sampler.masks`), so `mixjax.mix` has one code
path for both (a λ-law's mask stays the broadcast (B, 1, …, 1), never materialized). A
mask law is a `Sampler` whose `is_mask` is True: a pytree with numeric leaves (α, the
switch probability), stackable and vmappable across runs like the λ-laws
(`samplers.stack`, `samplers.structure`), registered by name (`make_sampler("cutmix",
alpha=1.0)`). It has no λ-only form: `law(key, shape)` and `theta_moments(law)` raise and
point to `mix` and `law_moments(law, input_shape)`, since its moments depend on the image
size (`samplers.mask_moments`).

  CutMix(α)     Yun et al., ICCV 2019, with timm's box semantics (`cutmix_boxes`).
  GMix(α)       Park, Yun & Chun, "A Unified Analysis of Mixed Sample Data Augmentation:
                A Loss Function Perspective", NeurIPS 2022 (`gaussian_masks`).
  Switch(a, b, p)  timm's `switch_prob`: law b with probability p, else law a, per example.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from mixjax.samplers import laws
from mixjax.samplers.laws import Sampler

HW = tuple[int, int]


class MaskLaw(Sampler):
  """Base class of mask laws: `law.masks(key, batch_size, (H, W)) -> (masks, lam)`."""

  is_mask = True

  def masks(self, key: jax.Array, batch_size: int, hw: Sequence[int]
            ) -> tuple[jax.Array, jax.Array]:
    """Draws `batch_size` masks: (M (B, H, W) float32 in [0, 1], λ = mean(M) (B,))."""
    return self._masks(key, int(batch_size), check_hw(hw, self))

  def _masks(self, key, batch_size, hw):
    raise NotImplementedError

  def _sample(self, key, shape):
    raise ValueError(
        f"{self.label} is a mask law: it draws one mask per image, not a λ. Mix image "
        "batches with mixjax.mix(key, x, y, law) (inputs (B, H, W[, C])), and take its "
        "moments from samplers.law_moments(law, input_shape).")

  def theta_law(self):
    raise ValueError(
        f"{self.label} is a mask law: its moments depend on the image size. Use "
        "samplers.law_moments(law, input_shape) (or samplers.mask_moments(law, (H, W))) "
        "instead of theta_moments / theta_quadrature.")


def check_hw(hw: Sequence[int], law: Any = None) -> HW:
  """(H, W) as two positive ints; a clear ValueError otherwise."""
  try:
    h, w = (int(s) for s in hw)
  except (TypeError, ValueError):
    raise ValueError(
        f"{getattr(law, 'label', 'a mask law')} needs an image size (H, W); got {hw!r}.") from None
  if h < 1 or w < 1:
    raise ValueError(f"Image size (H, W) must be positive; got {(h, w)}.")
  return h, w


def image_hw(input_shape: Sequence[int], law: Any = None) -> HW:
  """(H, W) of per-example inputs of shape (H, W) or (H, W, C) (channels last).

  Raises:
    ValueError: the inputs are not images, with the fix (a λ-law).
  """
  input_shape = tuple(int(s) for s in input_shape)
  if len(input_shape) not in (2, 3):
    name = getattr(law, "label", "a mask law")
    raise ValueError(
        f"{name} needs image inputs (B, H, W[, C]); got per-example shape {input_shape} "
        f"(batch shape (B, {', '.join(map(str, input_shape))})) — use a λ-law such as "
        "beta(1.0) for inputs that are not images.")
  return input_shape[0], input_shape[1]


def _beta_lam(key, alpha, shape):
  """λ ~ Beta(α, α), drawn as `Beta(α, α)` draws it (uniform when α = 1)."""
  return laws.Beta(alpha, alpha)(key, shape)


# ---------------------------------------------------------------------------
# CutMix: boxes as timm draws them.
# ---------------------------------------------------------------------------
def cutmix_boxes(lam: jax.Array, cy: jax.Array, cx: jax.Array, hw: Sequence[int]
                 ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """CutMix's clipped boxes (timm's `rand_bbox`, margin 0; the CutMix reference code).

      cut_h = ⌊H √(1 − λ)⌋,  cut_w = ⌊W √(1 − λ)⌋
      rows [yl, yh) = [clip(cy − ⌊cut_h/2⌋, 0, H), clip(cy + ⌊cut_h/2⌋, 0, H))
      cols [xl, xh) = [clip(cx − ⌊cut_w/2⌋, 0, W), clip(cx + ⌊cut_w/2⌋, 0, W))

  So before clipping the box is 2⌊cut/2⌋ wide (an odd cut loses one row or column, as
  in timm and the CutMix code), centred on the pixel (cy, cx). The sides are those of
  exact arithmetic in λ (cut = H only at λ = 0), as timm's float64 has them.

  Args:
    lam: λ (B,), the area the example keeps before clipping is ≈ λ.
    cy: box centres' rows (B,) int, in [0, H).
    cx: box centres' columns (B,) int, in [0, W).
    hw: (H, W).

  Returns:
    (yl, yh, xl, xh), each (B,) int32.
  """
  h, w = check_hw(hw)
  lam = jnp.asarray(lam, jnp.float32)
  ratio = jnp.sqrt(1.0 - lam)
  # In float32, 1 − λ rounds to 1 for 0 < λ < 6e-8 (a mass ≈ (6e-8)^α under Beta(α, α),
  # not negligible for small α): the full side belongs to λ = 0 alone, as in float64.
  cut = lambda n: jnp.where(lam > 0, jnp.minimum(jnp.floor(n * ratio), n - 1), n)
  half_h = cut(h).astype(jnp.int32) // 2
  half_w = cut(w).astype(jnp.int32) // 2
  cy, cx = jnp.asarray(cy, jnp.int32), jnp.asarray(cx, jnp.int32)
  return (jnp.clip(cy - half_h, 0, h), jnp.clip(cy + half_h, 0, h),
          jnp.clip(cx - half_w, 0, w), jnp.clip(cx + half_w, 0, w))


def box_masks(boxes, hw: Sequence[int]) -> tuple[jax.Array, jax.Array]:
  """Masks that paste the boxes from the partner: M = 1 − 1[box], λ = 1 − area/(H·W).

  λ is the area the example actually keeps after clipping (timm's `correct_lam`), i.e.
  exactly mean(M). The box is built by broadcasting a row test (B, H, 1) against a column
  test (B, 1, W): no per-example loop.

  Args:
    boxes: (yl, yh, xl, xh), each (B,) int (`cutmix_boxes`).
    hw: (H, W).

  Returns:
    (M (B, H, W) float32, λ (B,) float32).
  """
  h, w = check_hw(hw)
  yl, yh, xl, xh = boxes
  rows = jnp.arange(h, dtype=jnp.int32)
  cols = jnp.arange(w, dtype=jnp.int32)
  in_rows = (rows >= yl[:, None]) & (rows < yh[:, None])  # (B, H)
  in_cols = (cols >= xl[:, None]) & (cols < xh[:, None])  # (B, W)
  box = in_rows[:, :, None] & in_cols[:, None, :]
  area = ((yh - yl) * (xh - xl)).astype(jnp.float32)
  return (1.0 - box.astype(jnp.float32)), 1.0 - area / float(h * w)


def _centres(key, batch_size, hw):
  """Box centres (cy, cx), each (B,) int32 uniform over the pixels: one draw for both
  (a second `randint` call costs more than the whole box)."""
  c = jax.random.randint(key, (2, batch_size), 0, jnp.asarray([[hw[0]], [hw[1]]]),
                         dtype=jnp.int32)
  return c[0], c[1]


@dataclasses.dataclass(frozen=True, repr=False)
class CutMix(MaskLaw):
  """CutMix (Yun et al., ICCV 2019) with timm's boxes, one box per example.

  λ ~ Beta(α, α); a box of area ≈ 1 − λ (`cutmix_boxes`: sides ⌊H√(1−λ)⌋, ⌊W√(1−λ)⌋,
  rounded as timm's `rand_bbox`) centred on a pixel drawn uniformly, clipped at the
  border, is pasted from the partner; the label weight is the area kept after clipping
  (timm's `correct_lam`). The mask is shared by the channels. Its moments are exact
  (`samplers.mask_moments`: a sum over the discrete box sizes and positions).
  """
  alpha: float
  title: str | None = laws._label_field()  # pylint: disable=protected-access
  tag: str | None = laws._label_field()  # pylint: disable=protected-access

  def _masks(self, key, batch_size, hw):
    k_lam, k_c = jax.random.split(key)
    lam = _beta_lam(k_lam, self.alpha, (batch_size,))
    cy, cx = _centres(k_c, batch_size, hw)
    return box_masks(cutmix_boxes(lam, cy, cx, hw), hw)

  def _default_name(self):
    return f"cutmix(alpha={laws._fmt(self.alpha)})"  # pylint: disable=protected-access

  def _default_label(self):
    return f"CutMix({laws._g(self.alpha)})"  # pylint: disable=protected-access


# ---------------------------------------------------------------------------
# GMix: a Gaussian blob around a random centre.
# ---------------------------------------------------------------------------
def gaussian_masks(lam: jax.Array, cy: jax.Array, cx: jax.Array, hw: Sequence[int]
                   ) -> tuple[jax.Array, jax.Array]:
  """GMix's masks (Park et al., NeurIPS 2022; naver-ai/hmix-gmix), given λ and centres.

      λ' = min(λ, 1 − λ),   G(p) = exp(−π ‖p − c‖² / (λ' H W))      (pixels p, centre c)
      M = G if λ < ½ else 1 − G,      label weight mean(M)

  G integrates to λ' H W over the plane, so the smaller share of the mix is a Gaussian
  blob of area ≈ λ' (less where the border clips it); the label weight is the area the
  example actually keeps. (The reference code is written for square images with H²; H W
  is its isotropic generalization.) G is separable, (B, H, 1) · (B, 1, W).

  Args:
    lam: λ (B,). cy, cx: centres (B,) int in [0, H), [0, W). hw: (H, W).

  Returns:
    (M (B, H, W) float32, λ = mean(M) (B,) float32).
  """
  h, w = check_hw(hw)
  lam = jnp.asarray(lam, jnp.float32)
  small = jnp.minimum(lam, 1.0 - lam)
  # λ' = 0 (λ ∈ {0, 1}) is the limit of a one-pixel blob; keep the division finite.
  scale = -math.pi / (jnp.maximum(small, 1e-30) * float(h * w))
  dy = (jnp.arange(h, dtype=jnp.float32) - jnp.asarray(cy, jnp.float32)[:, None]) ** 2
  dx = (jnp.arange(w, dtype=jnp.float32) - jnp.asarray(cx, jnp.float32)[:, None]) ** 2
  g = jnp.exp(scale[:, None] * dy)[:, :, None] * jnp.exp(scale[:, None] * dx)[:, None, :]
  masks = jnp.where((lam < 0.5)[:, None, None], g, 1.0 - g)
  return masks, jnp.mean(masks, axis=(1, 2))


@dataclasses.dataclass(frozen=True, repr=False)
class GMix(MaskLaw):
  """GMix (Park, Yun & Chun, NeurIPS 2022): a Gaussian mask around a random centre.

  λ ~ Beta(α, α), a centre drawn uniformly over the pixels, and the smooth mask of
  `gaussian_masks` (the smaller share is a Gaussian blob of area ≈ min(λ, 1 − λ)); label
  weight mean(M). One mask per example, shared by the channels. Its moments are
  Monte-Carlo estimates with standard errors (`samplers.mask_moments`).
  """
  alpha: float
  title: str | None = laws._label_field()  # pylint: disable=protected-access
  tag: str | None = laws._label_field()  # pylint: disable=protected-access

  def _masks(self, key, batch_size, hw):
    k_lam, k_c = jax.random.split(key)
    lam = _beta_lam(k_lam, self.alpha, (batch_size,))
    cy, cx = _centres(k_c, batch_size, hw)
    return gaussian_masks(lam, cy, cx, hw)

  def _default_name(self):
    return f"gmix(alpha={laws._fmt(self.alpha)})"  # pylint: disable=protected-access

  def _default_label(self):
    return f"GMix({laws._g(self.alpha)})"  # pylint: disable=protected-access


# ---------------------------------------------------------------------------
# timm's switch between mixup and CutMix.
# ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, repr=False)
class Switch(MaskLaw):
  """timm's mixup/CutMix switch as a mixture law: per example, law_b with probability p
  (timm's `switch_prob`), else law_a (timm's "elem" mode; `granularity="batch"` in
  `mix` gives its "batch" mode). Either part may be a λ-law (a constant mask)."""
  law_a: Sampler
  law_b: Sampler
  p: float
  title: str | None = laws._label_field()  # pylint: disable=protected-access
  tag: str | None = laws._label_field()  # pylint: disable=protected-access

  def _masks(self, key, batch_size, hw):
    k_pick, k_a, k_b = jax.random.split(key, 3)
    m_a, l_a = self.law_a.masks(k_a, batch_size, hw)
    m_b, l_b = self.law_b.masks(k_b, batch_size, hw)
    pick_b = jax.random.bernoulli(k_pick, self.p, (batch_size,))
    return (jnp.where(pick_b[:, None, None], m_b, m_a), jnp.where(pick_b, l_b, l_a))

  def _default_name(self):
    return f"switch({self.law_a!r}, {self.law_b!r}, p={self.p:.6g})"

  def _default_label(self):
    p = laws._g(round(self.p, 4))  # pylint: disable=protected-access
    return f"Switch({self.law_a.label},{self.law_b.label},p={p})"


# ---------------------------------------------------------------------------
# Constructors (validated) and pytree registration.
# ---------------------------------------------------------------------------
def cutmix(alpha: float = 1.0) -> CutMix:
  """CutMix with λ ~ Beta(α, α) (timm's `cutmix_alpha`; 1.0 in timm's recipes)."""
  return CutMix(laws._positive("alpha", alpha, "cutmix law"))  # pylint: disable=protected-access


def gmix(alpha: float = 1.0) -> GMix:
  """GMix with λ ~ Beta(α, α) (Park et al. use α = 1)."""
  return GMix(laws._positive("alpha", alpha, "gmix law"))  # pylint: disable=protected-access


def switch(law_a: Any = ("beta", {"alpha": 0.8}), law_b: Any = ("cutmix", {"alpha": 1.0}),
           p: float = 0.5) -> Sampler:
  """timm's switch: law_b with probability p, else law_a, per example.

  The defaults are timm's ImageNet recipe (mixup α = 0.8, CutMix α = 1.0, switch_prob
  0.5). Two λ-laws make a `mixture` (no masks needed).

  Args:
    law_a: a Sampler or spec (a name, a (name, params) pair or a dict).
    law_b: a Sampler or spec, as `law_a`.
    p: probability of law_b, in [0, 1].
  """
  a, b = laws._as_sampler(law_a), laws._as_sampler(law_b)  # pylint: disable=protected-access
  try:
    p = float(p)
  except (TypeError, ValueError):
    p = float("nan")
  if not 0.0 <= p <= 1.0:
    raise ValueError(f"switch: p must be a probability in [0, 1], got {p!r}.")
  if not (a.is_mask or b.is_mask):
    return laws.mixture([a, b], [1.0 - p, p])
  return Switch(a, b, p)


for _cls, _data in ((CutMix, ("alpha",)), (GMix, ("alpha",)),
                    (Switch, ("law_a", "law_b", "p"))):
  jax.tree_util.register_dataclass(
      _cls, data_fields=list(_data),
      meta_fields=[f.name for f in dataclasses.fields(_cls) if f.name not in _data])

laws.SAMPLERS.register("cutmix", cutmix)
laws.SAMPLERS.register("gmix", gmix)
laws.SAMPLERS.register("switch", switch)


def is_mask_law(law: Any) -> bool:
  """True for mask laws (CutMix, GMix, a switch with a mask part), False for λ-laws."""
  return bool(getattr(law, "is_mask", False))

