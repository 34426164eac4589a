"""The 15 corruptions of MNIST-C (Mu & Gilmer, "MNIST-C: A Robustness Benchmark for
Computer Vision", 2019), applied to 28 × 28 grayscale images (Fashion-MNIST-C).

Each corruption is written here from the published definitions and parameters of
google-research/mnist-c (`corruptions.py`), at the severity MNIST-C's dataset uses (the
default `severity` of each of its functions), with NumPy, SciPy and scikit-image (no
ImageMagick). Images are handled as float64 in [0, 1] (x = pixel / 255); the results are
rounded to uint8 (`np.rint`). Notation: an image is indexed [row, column]; "(x, y)" in
the affine maps below is (column, row), scikit-image's convention, which MNIST-C uses.

  shot_noise     Poisson(3 x) / 3                                     (severity 5 of 5)
  impulse_noise  17% of the pixels set to 0 or 1 with probability 1/2 each  (4: 0.17)
  glass_blur     Gaussian blur σ = 0.7, quantized to uint8, two passes of local pixel
                 swaps (every pixel (h, w), h, w = 27..2, with probability 1/2 swapped
                 with (h + dy, w + dx), dx, dy ∈ {−1, 0}), Gaussian blur σ = 0.7.
                 MNIST-C calls scikit-image's `gaussian(..., multichannel=True)` on a 2-D
                 image, which in the scikit-image of 2019 takes the last axis for
                 channels and blurs along the rows' axis only (σ = (0.7, 0)); we
                 reproduce the published images, so both blurs are vertical    (1: 0.7, 1, 2)
  motion_blur    ImageMagick's motion blur, radius 10, σ = 3, angle θ ~ U(−45°, 45°):
                 out(y, x) = Σ_{i<21} k_i in(y + ⌈i sin θ − ½⌉, x + ⌈i cos θ − ½⌉),
                 k_i ∝ exp(−i²/(2σ²)) (a one-sided Gaussian of 2⌈radius⌉ + 1 taps,
                 normalized), edge pixels repeated outside the image           (1: 10, 3)
  shear          affine inverse map (x, y) ↦ A (x, y) + t, A = [[1, −sin s], [0, cos s]],
                 s = ±0.4 (sign 50/50), t keeping the centre (13.5, 13.5) fixed   (2: 0.4)
  scale          the same with A = (1/0.7) I: the content shrinks by 0.7 about the centre
                                                                                 (3: 1/0.7)
  rotate         the same with A the rotation by ±0.4 rad (sign 50/50)          (2: 0.4)
  brightness     HSV value + 0.5, clipped; for a gray image this is min(x + 0.5, 1)
                 (V = x, S = 0, and scikit-image's gray weights sum to 1)       (5: 0.5)
  translate      inverse map (x, y) ↦ (x + 3 s_x, y + 3 s_y), s_x, s_y = ±1 (50/50 each)
                                                                                    (3: 3)
  stripe         columns 0–6 and 21–27 inverted (1 − x); no randomness
  fog            x + 3 F, F the top-left 28 × 28 of a 256 × 256 diamond-square plasma
                 fractal (wibble decay 1.4, normalized to [0, 1] over the whole map), then
                 scaled by max(x) / (max(x) + 3) and clipped                  (5: 3, 1.4)
  spatter        "mud": L ~ N(0.65, 0.3) per pixel, blurred (σ = 1), L < 0.65 set to 0,
                 m = blur(1[L > 0.65], σ = 1.5), m < 0.8 set to 0,
                 x (1 − m) + (63/255) m                      (4: 0.65, 0.3, 1, 0.65, 1.5)
  dotted_line    a line from (column 0, row r0) to (27, r1), r0, r1 ~ U{0..26}, of
                 profile log(1 − d/2.3) + 1 at vertical distance d < 2.3, column 27 and
                 every other pair of columns (0–1, 4–5, …) blanked, added and clipped
  zigzag         a zigzag (segment length 2, amplitude 2) from column 2 to 25 around the
                 line from row r0 ~ U{0..26} to r0 + U{−5..4}, the segments drawn with the
                 same profile, added and clipped
  canny_edges    scikit-image's Canny edge map (σ = 1, hysteresis 0.1 / 0.2) as 0 / 1

Left out of MNIST-C's list: none. (MNIST-C's other, unused corruptions, e.g. frost or
snow, which need ImageMagick or image files, are not part of the benchmark.)

Randomness: every image i of corruption c draws from its own `np.random.Generator`
seeded with (SEED, crc32(c), i) (`image_rngs`), never from a global RNG. So a build gives
the same bytes every time, and image i's corruption does not depend on how many images
are corrupted with it (the first 50 of a small build are the first 50 of the full one).
The random streams are not MNIST-C's (its code used NumPy's global RNG): the
distributions are the same, the draws are not.
"""
from __future__ import annotations

import math
import zlib
from typing import Callable, Sequence

import numpy as np
import scipy.ndimage

from mixjax.registry import Registry

# The base seed of Fashion-MNIST-C. Changing it changes every corrupted image: a new
# dataset version.
SEED = 0
IMAGE_SIZE = 28
CENTER = 13.5  # (IMAGE_SIZE − 1) / 2: the centre the affine corruptions keep fixed

_CORRUPTIONS = Registry("corruption")
Corruption = Callable[[np.ndarray, Sequence[np.random.Generator]], np.ndarray]

# MNIST-C's 15 corruptions, in its order.
CORRUPTIONS = ("shot_noise", "impulse_noise", "glass_blur", "motion_blur", "shear",
               "scale", "rotate", "brightness", "translate", "stripe", "fog", "spatter",
               "dotted_line", "zigzag", "canny_edges")


def _register(name: str):
  assert name in CORRUPTIONS, name
  return _CORRUPTIONS.register(name)


# --------------------------------------------------------------------------- the API


def image_rngs(name: str, num: int, *, seed: int = SEED, start: int = 0
               ) -> list[np.random.Generator]:
  """One generator per image: image `start + i` of corruption `name` gets
  `np.random.default_rng([seed, crc32(name), start + i])`."""
  tag = zlib.crc32(name.encode())
  return [np.random.default_rng([seed, tag, start + i]) for i in range(num)]


def corrupt_unit(x: np.ndarray, name: str, *, seed: int = SEED, start: int = 0
                 ) -> np.ndarray:
  """Corruption `name` of images x (n, 28, 28) float in [0, 1] -> (n, 28, 28) float64 in
  [0, 1]; image i uses `image_rngs(name, n, seed=seed, start=start)[i]`."""
  fn = _CORRUPTIONS.get(name)
  x = np.asarray(x, np.float64)
  if x.ndim != 3 or x.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
    raise ValueError(f"Expected images of shape (n, {IMAGE_SIZE}, {IMAGE_SIZE}), got "
                     f"{x.shape}.")
  out = fn(x.copy(), image_rngs(name, x.shape[0], seed=seed, start=start))
  return np.clip(out, 0.0, 1.0)


def corrupt(images: np.ndarray, name: str, *, seed: int = SEED, start: int = 0
            ) -> np.ndarray:
  """Corruption `name` of uint8 images (n, 28, 28) or (n, 28, 28, 1), same shape, uint8.

  Args:
    images: uint8 pixels (Fashion-MNIST's IDX images).
    name: one of `CORRUPTIONS`.
    seed: the base seed (`SEED` for Fashion-MNIST-C).
    start: the index of `images[0]` in its split (its generator's index).
  """
  images = np.asarray(images)
  if images.dtype != np.uint8:
    raise ValueError(f"Expected uint8 images, got {images.dtype}.")
  squeeze = images.ndim == 4 and images.shape[-1] == 1
  x = images[..., 0] if squeeze else images
  out = np.rint(corrupt_unit(x / 255.0, name, seed=seed, start=start) * 255.0)
  out = out.astype(np.uint8)
  return out[..., None] if squeeze else out


# ------------------------------------------------------------------------- helpers


def _gaussian(x: np.ndarray, sigma: tuple[float, float]) -> np.ndarray:
  """scikit-image's `gaussian` on each image of x (n, H, W): `ndimage.gaussian_filter`,
  mode 'nearest', truncated at 4σ; σ = (rows, columns)."""
  return scipy.ndimage.gaussian_filter(x, (0.0, *sigma), mode="nearest", truncate=4.0)


def _warp(x: np.ndarray, matrices: np.ndarray) -> np.ndarray:
  """Each image through scikit-image's `warp` with the affine inverse map `matrices[i]`
  (3 × 3, on (column, row, 1)): bilinear, zero outside the image."""
  from skimage import transform  # pylint: disable=g-import-not-at-top
  return np.stack([transform.warp(img, transform.AffineTransform(matrix=m), order=1,
                                  mode="constant", cval=0.0)
                   for img, m in zip(x, matrices)])


def _centered(a: np.ndarray) -> np.ndarray:
  """The 3 × 3 affine map with linear part a (2 × 2) that fixes the centre."""
  m = np.eye(3)
  m[:2, :2] = a
  m[:2, 2] = CENTER * (1.0 - a.sum(axis=1))
  return m


def _signs(rngs, size=None) -> np.ndarray:
  return np.stack([g.choice([-1.0, 1.0], size) for g in rngs])


def _line(c0: float, r0: float, c1: float, r1: float) -> np.ndarray:
  """MNIST-C's line of profile clip(log(1 − d/2.3) + 1, 0, 1), d = the vertical distance
  to the line through (c0, r0), (c1, r1) (capped below 2.3), blank outside the columns
  [⌊c0⌋, ⌈c1⌉); all zero for a vertical line (c0 = c1)."""
  if c1 == c0:
    return np.zeros((IMAGE_SIZE, IMAGE_SIZE))
  cc, rr = np.meshgrid(np.arange(IMAGE_SIZE, dtype=np.float64),
                       np.arange(IMAGE_SIZE, dtype=np.float64), sparse=True)
  slope = (r1 - r0) / (c1 - c0)
  dist = np.clip(np.abs(rr - (slope * (cc - c0) + r0)), 0.0, 2.3 - 1e-10)
  line = np.clip(np.log(1.0 - dist / 2.3) + 1.0, 0.0, 1.0)
  # Python slices as MNIST-C writes them (a negative ⌊c0⌋ counts from the end).
  line[:, :int(math.floor(c0))] = 0.0
  line[:, int(math.ceil(c1)):] = 0.0
  return line


# ---------------------------------------------------------------------- corruptions


@_register("shot_noise")
def shot_noise(x, rngs, c=3.0):
  return np.stack([g.poisson(xi * c) for xi, g in zip(x, rngs)]) / c


@_register("impulse_noise")
def impulse_noise(x, rngs, amount=0.17):
  flip = np.stack([g.random(xi.shape) < amount for xi, g in zip(x, rngs)])
  salt = np.stack([g.random(xi.shape) < 0.5 for xi, g in zip(x, rngs)])
  return np.where(flip, salt.astype(np.float64), x)


@_register("glass_blur")
def glass_blur(x, rngs, sigma=0.7, delta=1, iterations=2):
  x = np.floor(_gaussian(x, (sigma, 0.0)) * 255.0)  # np.uint8(...): truncation
  span = range(IMAGE_SIZE - delta, delta, -1)       # h, w = 27, 26, ..., delta + 1
  shape = (iterations, len(span), len(span))
  swap = np.stack([g.random(shape) < 0.5 for g in rngs])
  offset = np.stack([g.integers(-delta, delta, shape + (2,)) for g in rngs])
  n = np.arange(x.shape[0])
  for it in range(iterations):
    for a, h in enumerate(span):
      for b, w in enumerate(span):
        idx = n[swap[:, it, a, b]]
        dx, dy = offset[idx, it, a, b, 0], offset[idx, it, a, b, 1]
        here, there = x[idx, h, w], x[idx, h + dy, w + dx]
        x[idx, h, w], x[idx, h + dy, w + dx] = there, here
  return _gaussian(x / 255.0, (sigma, 0.0))


@_register("motion_blur")
def motion_blur(x, rngs, radius=10.0, sigma=3.0, max_angle=45.0):
  width = int(2 * math.ceil(radius) + 1)
  taps = np.arange(width)
  kernel = np.exp(-taps ** 2 / (2.0 * sigma ** 2))
  kernel /= kernel.sum()
  angle = np.deg2rad(np.array([g.uniform(-max_angle, max_angle) for g in rngs]))
  dcol = np.ceil(taps[None, :] * np.cos(angle)[:, None] - 0.5).astype(np.int64)
  drow = np.ceil(taps[None, :] * np.sin(angle)[:, None] - 0.5).astype(np.int64)
  n = np.arange(x.shape[0])[:, None, None]
  rows = np.arange(IMAGE_SIZE)[None, :, None]
  cols = np.arange(IMAGE_SIZE)[None, None, :]
  out = np.zeros_like(x)
  for i in range(width):
    r = np.clip(rows + drow[:, i, None, None], 0, IMAGE_SIZE - 1)
    c = np.clip(cols + dcol[:, i, None, None], 0, IMAGE_SIZE - 1)
    out += kernel[i] * x[n, r, c]
  return np.rint(out * 255.0) / 255.0  # ImageMagick returns 8-bit pixels


@_register("shear")
def shear(x, rngs, s=0.4):
  s = s * _signs(rngs)
  return _warp(x, [_centered(np.array([[1.0, -math.sin(v)], [0.0, math.cos(v)]]))
                   for v in s])


@_register("scale")
def scale(x, rngs, factor=1 / 0.7):
  del rngs
  m = _centered(factor * np.eye(2))
  return _warp(x, [m] * x.shape[0])


@_register("rotate")
def rotate(x, rngs, angle=0.4):
  angles = angle * _signs(rngs)
  return _warp(x, [_centered(np.array([[math.cos(v), -math.sin(v)],
                                       [math.sin(v), math.cos(v)]])) for v in angles])


@_register("brightness")
def brightness(x, rngs, c=0.5):
  del rngs
  return np.minimum(x + c, 1.0)


@_register("translate")
def translate(x, rngs, c=3.0):
  shifts = c * _signs(rngs, 2)
  mats = []
  for dx, dy in shifts:
    m = np.eye(3)
    m[:2, 2] = dx, dy
    mats.append(m)
  return _warp(x, mats)


@_register("stripe")
def stripe(x, rngs):
  del rngs
  x[:, :, :7] = 1.0 - x[:, :, :7]
  x[:, :, 21:] = 1.0 - x[:, :, 21:]
  return x


def plasma_fractal(rng: np.random.Generator, mapsize: int = 256,
                   wibble_decay: float = 3.0) -> np.ndarray:
  """A (mapsize, mapsize) diamond-square height map in [0, 1] (ImageNet-C's and MNIST-C's
  `plasma_fractal`, toroidal). At each level, with wibble w (100, divided by
  `wibble_decay` per level), every new point is the mean of its 4 neighbours plus
  w · U(−w, w); the map is then shifted and scaled to [0, 1]."""
  assert mapsize & (mapsize - 1) == 0, "mapsize must be a power of two"
  grid = np.zeros((mapsize, mapsize))
  step, wibble = mapsize, 100.0

  def wibbled_mean(total):
    return total / 4 + wibble * rng.uniform(-wibble, wibble, total.shape)

  while step >= 2:
    half = step // 2
    # Squares: centre = mean of the 4 corners + noise.
    corners = grid[0::step, 0::step]
    total = corners + np.roll(corners, -1, axis=0)
    total = total + np.roll(total, -1, axis=1)
    grid[half::step, half::step] = wibbled_mean(total)
    # Diamonds: edge midpoints = mean of 2 corners and 2 centres + noise.
    centres = grid[half::step, half::step]
    corners = grid[0::step, 0::step]
    total = (centres + np.roll(centres, 1, axis=0)) + (corners + np.roll(corners, -1,
                                                                         axis=1))
    grid[0::step, half::step] = wibbled_mean(total)
    total = (centres + np.roll(centres, 1, axis=1)) + (corners + np.roll(corners, -1,
                                                                         axis=0))
    grid[half::step, 0::step] = wibbled_mean(total)
    step //= 2
    wibble /= wibble_decay
  grid -= grid.min()
  return grid / grid.max()


@_register("fog")
def fog(x, rngs, c=3.0, wibble_decay=1.4):
  layer = np.stack([plasma_fractal(g, wibble_decay=wibble_decay)[:IMAGE_SIZE, :IMAGE_SIZE]
                    for g in rngs])
  peak = x.max(axis=(1, 2), keepdims=True)
  return (x + c * layer) * peak / (peak + c)


@_register("spatter")
def spatter(x, rngs, loc=0.65, scale_=0.3, sigma=1.0, threshold=0.65, mud_sigma=1.5):
  liquid = np.stack([g.normal(loc, scale_, xi.shape) for xi, g in zip(x, rngs)])
  liquid = _gaussian(liquid, (sigma, sigma))
  liquid[liquid < threshold] = 0.0
  mud = _gaussian((liquid > threshold).astype(np.float64), (mud_sigma, mud_sigma))
  mud[mud < 0.8] = 0.0
  return x * (1.0 - mud) + (63.0 / 255.0) * mud


@_register("dotted_line")
def dotted_line(x, rngs):
  out = np.empty_like(x)
  dashes = (np.arange(IMAGE_SIZE) // 2) % 2 == 0  # column pairs 0–1, 4–5, ... blanked
  for i, g in enumerate(rngs):
    r0, r1 = g.integers(0, 27, size=2)
    line = _line(0, r0, 27, r1)
    line[:, dashes] = 0.0
    out[i] = x[i] + line
  return out


def _zigzag_points(r0: int, r1: int, c0: float = 2.0, c1: float = 25.0, a: float = 2.0,
                   b: float = 2.0) -> np.ndarray:
  """MNIST-C's zigzag vertices (2, K): along the x-axis, (0, 0), then ((2i+1)a, (−1)^i b)
  for i = 0..⌊(d − a)/(2a)⌋, then (d, r_last / (2 (d − 2a⌊d/(2a)⌋))) unless d is a
  multiple of 2a (d = the length of the line from (c0, r0) to (c1, r1)); rotated onto
  that line and moved to (c0, r0)."""
  theta = math.atan((r1 - r0) / (c1 - c0))
  d = (c1 - c0) / math.cos(theta)
  points = [(0.0, 0.0)]
  for i in range(int((d - a) // (2 * a)) + 1):
    r_i = (-1) ** i * b
    points.append(((2 * i + 1) * a, r_i))
  max_c = (2 * a) * (d // (2 * a))
  if d != max_c:
    points.append((d, r_i / (2 * (d - max_c))))
  rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
  cs, rs = rot @ np.array(points).T
  return np.stack([cs + c0, rs + r0])


@_register("zigzag")
def zigzag(x, rngs):
  out = np.empty_like(x)
  for i, g in enumerate(rngs):
    r0 = int(g.integers(0, 27))
    r1 = r0 + int(g.integers(-5, 5))
    cs, rs = _zigzag_points(r0, r1)
    img = x[i]
    for k in range(1, cs.size):
      img = np.clip(img + _line(cs[k - 1], rs[k - 1], cs[k], rs[k]), 0.0, 1.0)
    out[i] = img
  return out


@_register("canny_edges")
def canny_edges(x, rngs):
  del rngs
  from skimage import feature  # pylint: disable=g-import-not-at-top
  return np.stack([feature.canny(xi) for xi in x]).astype(np.float64)
