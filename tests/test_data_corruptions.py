"""mixjax.data.corruptions: MNIST-C's corruptions on 28 × 28 images.

Every corruption: deterministic for a seed (and changed by another seed when random),
changes the image, keeps shape, dtype and range, and corrupts image i the same way
whatever batch it is in. Then each against an independent reference: closed forms
(stripe, brightness via scikit-image's HSV path, translation by array slicing, the
affine maps on a Gaussian blob, a constant image under motion blur), or the properties
its definition implies (noise statistics with tolerances from the sample size, the
blanked columns of the lines, the value range of mud, edges on a square's boundary).
Images are synthetic (garment-like shapes with texture), a handful per test.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from skimage import color as sk_color
from skimage import transform as sk_transform

from mixjax.data import corruptions as C

RANDOM = {"shot_noise", "impulse_noise", "glass_blur", "motion_blur", "shear", "rotate",
          "translate", "fog", "spatter", "dotted_line", "zigzag"}
FIXED = set(C.CORRUPTIONS) - RANDOM  # scale, brightness, stripe, canny_edges


def garments(n: int = 6, seed: int = 0) -> np.ndarray:
  """uint8 (n, 28, 28): filled ellipses and rectangles of random size, position and
  gray level, with a sinusoidal texture, on black."""
  rng = np.random.default_rng(seed)
  rr, cc = np.mgrid[0:28, 0:28].astype(np.float64)
  out = np.zeros((n, 28, 28))
  for i in range(n):
    r0, c0 = rng.uniform(10, 18, 2)
    h, w = rng.uniform(5, 11, 2)
    if i % 2:
      inside = ((rr - r0) / h) ** 2 + ((cc - c0) / w) ** 2 <= 1
    else:
      inside = (np.abs(rr - r0) <= h) & (np.abs(cc - c0) <= w)
    texture = 0.75 + 0.25 * np.sin(rr * rng.uniform(0.5, 1.5) + cc * rng.uniform(0, 1))
    out[i] = inside * rng.uniform(0.5, 1.0) * texture
  return np.rint(out * 255).astype(np.uint8)


def blob(sigma: float = 3.0) -> np.ndarray:
  """A Gaussian blob exp(−|p − c|²/(2σ²)) centred at c = (13.5, 13.5), float (28, 28)."""
  rr, cc = np.mgrid[0:28, 0:28].astype(np.float64)
  return np.exp(-((rr - 13.5) ** 2 + (cc - 13.5) ** 2) / (2 * sigma ** 2))


# -------------------------------------------------------------- every corruption


@pytest.mark.parametrize("name", C.CORRUPTIONS)
def test_deterministic_changes_the_image_keeps_shape_dtype_and_range(name):
  images = garments()
  out = C.corrupt(images, name)
  assert out.shape == images.shape and out.dtype == np.uint8
  np.testing.assert_array_equal(C.corrupt(images, name), out)  # same seed, same bytes
  for i in range(len(images)):
    assert np.any(out[i] != images[i]), (name, i)
  other = C.corrupt(images, name, seed=1)
  assert np.any(other != out) == (name in RANDOM)
  # (n, 28, 28, 1) in, the same shape out; the float path stays in [0, 1].
  np.testing.assert_array_equal(C.corrupt(images[..., None], name), out[..., None])
  unit = C.corrupt_unit(images / 255.0, name)
  assert unit.dtype == np.float64 and np.all(np.isfinite(unit))
  assert unit.min() >= 0.0 and unit.max() <= 1.0


@pytest.mark.parametrize("name", sorted(RANDOM))
def test_an_image_is_corrupted_the_same_way_in_any_batch(name):
  """Image i draws from its own generator (seed, corruption, i): the first images of a
  small build equal those of a larger one, and `start` continues the indices."""
  images = garments(5, seed=1)
  whole = C.corrupt(images, name)
  np.testing.assert_array_equal(C.corrupt(images[:2], name), whole[:2])
  np.testing.assert_array_equal(C.corrupt(images[2:], name, start=2), whole[2:])
  # The same image at another index gets other draws.
  same = np.repeat(images[:1], 4, axis=0)
  out = C.corrupt(same, name)
  assert any(np.any(out[k] != out[0]) for k in range(1, 4))


def test_unknown_corruption_and_bad_images_are_refused():
  with pytest.raises(ValueError, match="Did you mean 'shot_noise'"):
    C.corrupt(garments(1), "shot_nois")
  with pytest.raises(ValueError, match="uint8"):
    C.corrupt(garments(1).astype(np.float32), "stripe")
  with pytest.raises(ValueError, match=r"\(n, 28, 28\)"):
    C.corrupt(np.zeros((2, 32, 32), np.uint8), "stripe")


# ------------------------------------------------------------ closed forms


def test_stripe_inverts_the_outer_columns():
  images = garments()
  want = images.copy()
  want[:, :, :7] = 255 - want[:, :, :7]
  want[:, :, 21:] = 255 - want[:, :, 21:]
  np.testing.assert_array_equal(C.corrupt(images, "stripe"), want)


def test_brightness_is_scikit_images_hsv_value_shift():
  images = garments()
  want = []
  for img in images / 255.0:
    hsv = sk_color.rgb2hsv(sk_color.gray2rgb(img))
    hsv[..., 2] = np.clip(hsv[..., 2] + 0.5, 0, 1)
    want.append(sk_color.rgb2gray(sk_color.hsv2rgb(hsv)))
  got = C.corrupt(images, "brightness")
  assert np.max(np.abs(got - np.rint(np.clip(want, 0, 1) * 255))) <= 1


def test_translate_shifts_by_three_pixels_with_zero_fill():
  images = garments(8, seed=2)
  out = C.corrupt(images, "translate")
  shifted = []
  for img in images:
    options = []
    for dy in (-3, 3):
      for dx in (-3, 3):
        s = np.zeros_like(img)
        # out(r, c) = in(r + dy, c + dx)
        src = img[max(dy, 0):28 + min(dy, 0), max(dx, 0):28 + min(dx, 0)]
        s[max(-dy, 0):28 + min(-dy, 0), max(-dx, 0):28 + min(-dx, 0)] = src
        options.append(s)
    shifted.append(options)
  for i in range(8):
    assert any(np.array_equal(out[i], s) for s in shifted[i]), i
  # Both signs occur on each axis over these images.
  kinds = {next(k for k, s in enumerate(shifted[i]) if np.array_equal(out[i], s))
           for i in range(8)}
  assert len(kinds) >= 2


@pytest.mark.parametrize("name", ["rotate", "shear", "scale"])
def test_affine_corruptions_on_a_centred_blob(name):
  """Inverse map p ↦ A (p − c) + c on the blob exp(−|p − c|²/(2σ²)) gives
  exp(−|A (p − c)|²/(2σ²)) (bilinear interpolation error < 0.02): rotation leaves it,
  shear with A = [[1, −sin s], [0, cos s]] (x = column), scale by 1/0.7 shrinks σ by 0.7."""
  x = blob()
  out = C.corrupt_unit(np.repeat(x[None], 4, axis=0), name)
  rr, cc = np.mgrid[0:28, 0:28].astype(np.float64)
  d = np.stack([cc - 13.5, rr - 13.5])  # (x, y) = (column, row)
  if name == "rotate":
    wants = [x]
  elif name == "scale":
    wants = [blob(3.0 * 0.7)]
  else:
    wants = []
    for s in (0.4, -0.4):
      a = np.array([[1.0, -math.sin(s)], [0.0, math.cos(s)]])
      ad = np.einsum("ij,jhw->ihw", a, d)
      wants.append(np.exp(-(ad ** 2).sum(0) / (2 * 3.0 ** 2)))
  for img in out:
    assert min(np.max(np.abs(img - w)) for w in wants) < 0.02
  if name == "shear":  # both directions occur over seeds
    signs = set()
    for seed in range(6):
      img = C.corrupt_unit(x[None], name, seed=seed)[0]
      signs.add(int(np.argmin([np.max(np.abs(img - w)) for w in wants])))
    assert signs == {0, 1}


def test_rotate_equals_scikit_image_rotate_by_0_4_radians():
  images = garments(4, seed=3) / 255.0
  out = C.corrupt_unit(images, "rotate")
  for img, got in zip(images, out):
    options = [sk_transform.rotate(img, a, order=1, mode="constant", cval=0)
               for a in (math.degrees(0.4), -math.degrees(0.4))]
    assert min(np.max(np.abs(got - o)) for o in options) < 1e-9


def test_motion_blur_kernel_is_normalized():
  """A constant image stays constant (edge pixels repeat outside the image)."""
  const = np.full((3, 28, 28), 102, np.uint8)
  np.testing.assert_array_equal(C.corrupt(const, "motion_blur"), const)


# ------------------------------------------------------------ noise statistics


def test_shot_noise_is_poisson_with_three_photons_per_unit():
  """x = 0.2 everywhere: 3·out ~ Poisson(0.6) (clipping at 1 needs ≥ 4 counts,
  probability 0.0034), so mean 0.2 and variance 0.2/3, within 5 standard errors."""
  x = np.full((50, 28, 28), 0.2)
  out = C.corrupt_unit(x, "shot_noise")
  counts = np.rint(out * 3).ravel()
  np.testing.assert_allclose(out * 3, np.rint(out * 3), atol=1e-12)  # multiples of 1/3
  n = counts.size
  lam = 0.6
  mean_se = math.sqrt(lam / n)
  assert abs(counts.mean() - lam) < 5 * mean_se + 0.004
  assert abs(counts.var() - lam) < 5 * math.sqrt((lam + 2 * lam ** 2) / n) + 0.01


def test_impulse_noise_sets_17_percent_of_the_pixels_to_black_or_white():
  x = np.full((50, 28, 28), 0.5)
  out = C.corrupt_unit(x, "impulse_noise")
  n = out.size
  assert set(np.unique(out)) == {0.0, 0.5, 1.0}
  for frac, p in (((out != 0.5).mean(), 0.17), ((out == 1.0).mean(), 0.085),
                  ((out == 0.0).mean(), 0.085)):
    assert abs(frac - p) < 5 * math.sqrt(p * (1 - p) / n)


# ------------------------------------------------------------ drawn corruptions


def test_dotted_line_only_adds_and_leaves_the_blanked_columns():
  images = garments(8, seed=4)
  out = C.corrupt(images, "dotted_line")
  assert np.all(out >= images)
  blank = [c for c in range(28) if (c // 2) % 2 == 0] + [27]
  np.testing.assert_array_equal(out[:, :, blank], images[:, :, blank])
  assert np.all((out != images).any(axis=(1, 2)))


def test_zigzag_only_adds_between_columns_2_and_25():
  images = garments(8, seed=5)
  out = C.corrupt(images, "zigzag")
  assert np.all(out >= images)
  np.testing.assert_array_equal(out[:, :, [0, 1, 26, 27]], images[:, :, [0, 1, 26, 27]])


def test_spatter_on_black_is_mud_of_gray_63_times_at_least_0_8():
  out = C.corrupt(np.zeros((20, 28, 28), np.uint8), "spatter")
  changed = out[out > 0]
  assert changed.size > 0
  assert changed.min() >= np.floor(0.8 * 63) and changed.max() <= 63


def test_canny_edges_of_a_square_lie_on_its_boundary():
  img = np.zeros((1, 28, 28), np.uint8)
  img[0, 8:20, 8:20] = 200
  edges = C.corrupt(img, "canny_edges")[0]
  assert set(np.unique(edges)) == {0, 255}
  rr, cc = np.nonzero(edges)
  # Distance to the square's boundary (pixel centres 8..19 inside).
  dist = np.minimum(np.minimum(np.abs(rr - 7.5), np.abs(rr - 19.5)),
                    np.minimum(np.abs(cc - 7.5), np.abs(cc - 19.5)))
  assert dist.max() <= 1.5
  for side in (rr < 10, rr > 17, cc < 10, cc > 17):
    assert side.sum() >= 8


def test_fog_is_a_normalized_plasma_fractal_blended_in():
  """The fractal spans [0, 1]; fog of a constant image c is (c + 3F)·c/(c + 3)."""
  fractal = C.plasma_fractal(np.random.default_rng(0), wibble_decay=1.4)
  assert fractal.shape == (256, 256) and fractal.min() == 0.0 and fractal.max() == 1.0
  out = C.corrupt_unit(np.full((2, 28, 28), 0.6), "fog")
  f = (out * (0.6 + 3) / 0.6 - 0.6) / 3  # the fractal corner each image saw
  assert f.min() >= -1e-12 and f.max() <= 1 + 1e-12 and f.std() > 0.01
  assert np.any(f[0] != f[1])
