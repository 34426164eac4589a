r"""Your own images: a folder in torchvision's `ImageFolder` layout as a tfds dataset.

  python -m mixjax.data.prepare --dataset=image_folder --source_dir=DIR --name=NAME \
      --data_dir=OUT

Layout (torchvision's `ImageFolder`, one folder per split):

  DIR/train/<class>/<image>        required; the classes are train/'s sub-folders
  DIR/val/<class>/<image>          optional (also `validation/`), and/or
  DIR/test/<class>/<image>         optional; their classes must be train/'s

Images may sit in nested folders below their class folder. The class names are the
sorted names of train/'s class folders (label k is the k-th name, as torchvision's
`ImageFolder` numbers them); they are recorded in the dataset (a tfds `ClassLabel`).
Hidden files and folders (names starting with ".") and files directly in DIR are
ignored; so are folders in DIR other than the split folders (the command names them).

What is written: `OUT/NAME/1.0.0/`, a tfds dataset in array_record files, with one
example per image: `image` (the file's bytes as they are: JPEG or PNG, never
re-encoded; tfds' `Image` feature with no encoding set), `label` (`ClassLabel`) and
`file_name` (the path below the split folder). `tfds.data_source(NAME, data_dir=OUT)`
reads it (no TensorFlow); `mixjax.data.streaming` decodes and transforms the images.
Recorded in the dataset's metadata (`builder.info.metadata`): `norm_mean`, `norm_std`,
the per-channel mean and standard deviation of the training images' RGB values scaled
to [0, 1], over all their pixels at stored size (exact integer sums), which the
streaming input normalizes with; and `fingerprint`, a hash of the source files' paths
and sizes.

What is refused (nothing is written; exit code 4, `mixjax.errors.DataError`), each with
one line that names the path:
  - a source folder that does not exist, is empty, or has no `train/` folder;
  - a split folder with no class folders, or a file directly in it;
  - a class folder with no files;
  - a val/test class that train/ does not have;
  - any file that is not a readable JPEG or PNG: another format, not an image, or a
    corrupt or truncated one (every image is decoded in full before anything is
    written). Such files are refused rather than skipped, so that the dataset is
    exactly the folder's images: remove, convert or repair them and run again. When
    several files are bad, the line names the first few and the count.
  - a NAME that is not a valid tfds name (lowercase letters, digits, "_", starting with
    a letter) or that is a registered dataset's name (tfds' or mixjax's).

Atomic: tfds builds the dataset in a temporary folder inside OUT, which is renamed into
place once complete; a failure leaves nothing that tfds would open. A rerun on the same
files (same paths and sizes) is a no-op that says so; a rerun on other files is refused
(remove `OUT/NAME` or choose another name).
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import io
import os
import re
import shutil
import tempfile

import numpy as np

from mixjax.errors import DataError

DATASET = "image_folder"  # the --dataset value of `python -m mixjax.data.prepare`
VERSION = "1.0.0"
SPLIT_FOLDERS = ("train", "val", "validation", "test")
FORMATS = ("JPEG", "PNG")
MAX_NAMED = 3  # bad files named in the one line (then a count)
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclasses.dataclass(frozen=True)
class Folder:
  """A scanned source folder.

  Attributes:
    root: the source folder (absolute).
    class_names: train/'s class folder names, sorted: label k is class_names[k].
    files: split -> [(path relative to the split folder, label)], sorted by path.
    ignored: top-level entries that are not split folders (reported, not read).
  """
  root: str
  class_names: tuple[str, ...]
  files: dict[str, list[tuple[str, int]]]
  ignored: tuple[str, ...] = ()

  def path(self, split: str, rel: str) -> str:
    return os.path.join(self.root, split, rel)

  @property
  def num_images(self) -> int:
    return sum(len(v) for v in self.files.values())


def _visible(name: str) -> bool:
  return not name.startswith(".")


def _files_below(folder: str) -> list[str]:
  """Every non-hidden file below `folder` (recursively, following links), as paths
  relative to `folder`, sorted."""
  out = []
  for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
    dirnames[:] = sorted(d for d in dirnames if _visible(d))
    rel = os.path.relpath(dirpath, folder)
    out.extend(os.path.normpath(os.path.join(rel, f)) for f in filenames if _visible(f))
  return sorted(out)


def scan(source_dir: str) -> Folder:
  """The layout of `source_dir` (module docstring), checked; no image is opened.

  Raises:
    DataError: one line naming the path and the fix, for every layout problem.
  """
  root = os.path.abspath(os.path.expanduser(source_dir))
  layout = (f"expected {root}/train/<class>/<images> (torchvision's ImageFolder layout; "
            "optional val/ or test/ beside train/)")
  if not os.path.isdir(root):
    raise DataError(f"{root} does not exist or is not a folder; {layout}.")
  entries = sorted(e for e in os.listdir(root) if _visible(e))
  if not entries:
    raise DataError(f"{root} is empty; {layout}.")
  if not os.path.isdir(os.path.join(root, "train")):
    raise DataError(f"{root} has no train/ folder; {layout}.")
  splits = [e for e in SPLIT_FOLDERS if os.path.isdir(os.path.join(root, e))]
  ignored = tuple(e for e in entries
                  if e not in splits and os.path.isdir(os.path.join(root, e)))
  class_names: tuple[str, ...] = ()
  files = {}
  for split in splits:
    folder = os.path.join(root, split)
    names = sorted(e for e in os.listdir(folder) if _visible(e))
    loose = [e for e in names if not os.path.isdir(os.path.join(folder, e))]
    if loose:
      raise DataError(f"{os.path.join(folder, loose[0])} is a file directly in {split}/; "
                      f"images go in class folders, {split}/<class>/<image>.")
    if not names:
      raise DataError(f"{folder} has no class folders; {layout}.")
    if split == "train":
      class_names = tuple(names)
    else:
      extra = [c for c in names if c not in class_names]
      if extra:
        raise DataError(f"{os.path.join(folder, extra[0])}: class {extra[0]!r} is not "
                        f"one of train/'s classes ({', '.join(class_names)}); every "
                        f"{split}/ class needs a train/ folder of the same name.")
    label = {c: k for k, c in enumerate(class_names)}
    split_files = []
    for c in names:
      found = _files_below(os.path.join(folder, c))
      if not found:
        raise DataError(f"{os.path.join(folder, c)} holds no images; add JPEG or PNG "
                        "files to it or remove the folder.")
      split_files.extend((os.path.join(c, f), label[c]) for f in found)
    files[split] = split_files
  return Folder(root=root, class_names=class_names, files=files, ignored=ignored)


def fingerprint(folder: Folder) -> str:
  """sha256 of every file's split, relative path and size (what a rerun compares)."""
  h = hashlib.sha256()
  for split in sorted(folder.files):
    for rel, label in folder.files[split]:
      size = os.path.getsize(folder.path(split, rel))
      h.update(f"{split}\0{rel}\0{label}\0{size}\n".encode())
  return h.hexdigest()


@dataclasses.dataclass
class _Sums:
  """Exact per-channel sums of the RGB values of images (uint8): Σx, Σx², pixels."""
  s1: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(3, np.int64))
  s2: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(3, np.int64))
  pixels: int = 0

  def add(self, other: "_Sums") -> None:
    self.s1 += other.s1
    self.s2 += other.s2
    self.pixels += other.pixels

  def mean_std(self) -> tuple[list[float], list[float]]:
    """Per-channel mean and population std of x/255 (float64, from the exact sums)."""
    n = float(self.pixels)
    mean = self.s1.astype(np.float64) / n
    var = np.maximum(self.s2.astype(np.float64) / n - mean ** 2, 0.0)
    return (mean / 255.0).tolist(), (np.sqrt(var) / 255.0).tolist()


def check_image(path: str) -> tuple[str | None, _Sums | None]:
  """Decodes the file at `path` in full: (None, its channel sums) if it is a readable
  JPEG or PNG, else (the reason, None)."""
  import PIL.Image  # pylint: disable=g-import-not-at-top
  try:
    with open(path, "rb") as f:
      data = f.read()
    with PIL.Image.open(io.BytesIO(data)) as im:
      fmt = im.format
      if fmt not in FORMATS:
        return f"a {fmt} image; only JPEG and PNG files are stored (convert it)", None
      im.load()  # the whole file: truncated or corrupt data raise here
      rgb = np.asarray(im.convert("RGB"), np.uint8).reshape(-1, 3).astype(np.int64)
  except PIL.UnidentifiedImageError:
    return "not an image (PIL cannot identify it)", None
  except Exception as e:  # pylint: disable=broad-except  (any decoder failure)
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    return f"a corrupt or unreadable image ({msg})", None
  if rgb.shape[0] == 0:
    return "an image with no pixels", None
  return None, _Sums(s1=rgb.sum(0), s2=np.einsum("ij,ij->j", rgb, rgb), pixels=rgb.shape[0])


def check_images(folder: Folder, *, num_threads: int | None = None) -> dict:
  """Decodes every image of `folder` (threads: PIL decodes without the GIL).

  Returns:
    {"norm_mean": [3 floats], "norm_std": [3 floats]} of the train split (module
    docstring).

  Raises:
    DataError naming the first `MAX_NAMED` bad files by path and the number of bad files.
  """
  jobs = [(split, rel) for split in folder.files for rel, _ in folder.files[split]]
  threads = num_threads or min(8, os.cpu_count() or 1)
  with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    results = list(pool.map(lambda j: check_image(folder.path(*j)), jobs))
  bad = [(folder.path(*j), why) for j, (why, _) in zip(jobs, results) if why]
  if bad:
    named = "; ".join(f"{p} is {why}" for p, why in bad[:MAX_NAMED])
    more = f" (and {len(bad) - MAX_NAMED} more)" if len(bad) > MAX_NAMED else ""
    count = "1 file is" if len(bad) == 1 else f"{len(bad)} files are"
    raise DataError(f"{count} not a readable JPEG or PNG image: {named}{more}. "
                    "Unreadable and non-image files are refused, not skipped: remove, "
                    "convert or repair them and run again (nothing was written).")
  total = _Sums()
  for (split, _), (_, sums) in zip(jobs, results):
    if split == "train":
      total.add(sums)
  mean, std = total.mean_std()
  return {"norm_mean": mean, "norm_std": std}


def check_name(name: str) -> None:
  """A dataset name tfds accepts and that no registered dataset (tfds' or mixjax's) has."""
  if not name or not _NAME_RE.match(name):
    raise DataError(f"--name={name!r} is not a valid dataset name: use lowercase letters, "
                    "digits and '_', starting with a letter (e.g. --name=my_photos).")
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from mixjax.data import dataset as ds_lib  # pylint: disable=g-import-not-at-top
  if name in ds_lib.DATASETS or name in tfds.list_builders(with_community_datasets=False):
    raise DataError(f"--name={name!r} is the name of a registered dataset; choose another "
                    "name for your images (e.g. --name=my_{name}).")


def builder_class(name: str, folder: Folder, metadata: dict):
  """A tfds `GeneratorBasedBuilder` named `name` whose examples are `folder`'s files (not
  registered: tfds reads the prepared dataset from its files)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  _VERSION = VERSION  # (the class body's VERSION is tfds' Version)

  class ImageFolderBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A folder of class sub-folders of JPEG/PNG images, kept encoded."""
    VERSION = tfds.core.Version(_VERSION)
    RELEASE_NOTES = {_VERSION: "Prepared by mixjax.data.prepare --dataset=image_folder."}
    code_path = None  # no checksums folder: nothing is downloaded

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self,
          description=(f"A folder of images in torchvision's ImageFolder layout "
                       f"({len(folder.class_names)} classes), the files' bytes stored as "
                       "they are (JPEG or PNG)."),
          features=tfds.features.FeaturesDict({
              "image": tfds.features.Image(shape=(None, None, 3)),
              "label": tfds.features.ClassLabel(names=list(folder.class_names)),
              "file_name": tfds.features.Text(),
          }),
          supervised_keys=("image", "label"),
          metadata=tfds.core.MetadataDict(**metadata),
      )

    def _split_generators(self, dl_manager):
      del dl_manager  # nothing to download
      return {split: self._generate_examples(split) for split in folder.files}

    def _generate_examples(self, split):
      for rel, label in folder.files[split]:
        with open(folder.path(split, rel), "rb") as f:
          data = f.read()  # the bytes as they are: the Image feature stores them as is
        yield rel, {"image": data, "label": label, "file_name": rel}

    # Offline preparation: no "Downloading and preparing dataset ..." banner, no
    # "Dataset ... downloaded and prepared" line (the command prints its own).
    def _log_download_bytes(self):
      pass

    def _log_download_done(self):
      pass

  ImageFolderBuilder.name = name
  ImageFolderBuilder.__name__ = ImageFolderBuilder.__qualname__ = "ImageFolderBuilder"
  return ImageFolderBuilder


def dataset_folder(name: str, data_dir: str) -> str:
  """Where tfds keeps the prepared dataset: `data_dir/<name>/<VERSION>`."""
  return os.path.join(data_dir, name, VERSION)


def _prepared_metadata(final: str) -> dict | None:
  """The metadata of the dataset prepared in `final`, or None when there is none."""
  if not os.path.exists(os.path.join(final, "dataset_info.json")):
    return None
  import json  # pylint: disable=g-import-not-at-top
  path = os.path.join(final, "metadata.json")
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def prepare(source_dir: str, *, name: str, data_dir: str,
            num_threads: int | None = None) -> tuple[str, bool, Folder | None]:
  """Builds `data_dir/<name>/1.0.0` from the image folder `source_dir` (module docstring).

  Every check (name, layout, every image decoded) runs before anything is written.

  Returns:
    (the dataset folder, True if built now / False if it was already prepared from the
    same files, the scanned folder (None when the source was not read)).

  Raises:
    DataError: one line naming the problem (module docstring); nothing is written.
  """
  check_name(name)
  data_dir = os.path.abspath(os.path.expanduser(data_dir))
  final = dataset_folder(name, data_dir)
  done = _prepared_metadata(final)
  if done is None and os.path.exists(final):
    raise DataError(f"{final} exists but is not a prepared dataset (no dataset_info.json); "
                    "remove it and run again.")
  if done is not None and not os.path.isdir(os.path.expanduser(source_dir)):
    return final, False, None  # prepared; the source is gone: nothing to compare
  folder = scan(source_dir)
  fp = fingerprint(folder)
  if done is not None:
    if done.get("fingerprint") == fp:
      return final, False, folder
    raise DataError(f"{final} was prepared from other files than {folder.root} holds now; "
                    f"to rebuild it remove {os.path.join(data_dir, name)}, or choose "
                    "another --name.")
  metadata = dict(check_images(folder, num_threads=num_threads), fingerprint=fp,
                  num_images={s: len(v) for s, v in folder.files.items()})

  os.makedirs(data_dir, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{name}-prepare-", dir=data_dir)
  try:
    builder = builder_class(name, folder, metadata)(data_dir=tmp,
                                                    file_format="array_record")
    builder.download_and_prepare()
    for split, files in folder.files.items():
      got = builder.info.splits[split].num_examples
      if got != len(files):
        raise DataError(f"tfds wrote {got} {split} examples, expected {len(files)}; "
                        "nothing was installed.")
    built = os.fspath(builder.data_dir)
    os.makedirs(os.path.dirname(final), exist_ok=True)
    os.rename(built, final)  # same filesystem: atomic
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return final, True, folder


def summary(folder: Folder) -> str:
  """What was found, for the command's message: splits, image counts, classes."""
  parts = [f"{s} {len(v)} images" for s, v in folder.files.items()]
  out = f"{', '.join(parts)}; {len(folder.class_names)} classes"
  if folder.ignored:
    out += f"; ignored (not split folders): {', '.join(folder.ignored)}"
  return out


def command(*, source_dir: str | None, name: str | None, data_dir: str) -> int:
  """`python -m mixjax.data.prepare --dataset=image_folder ...`: prepares, prints one
  line (stdout when done, stderr for bad input), returns the exit code."""
  import sys  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  tfds.disable_progress_bar()  # the command prints one line
  try:
    if not source_dir or not name:
      raise DataError(f"--dataset={DATASET} needs --source_dir=DIR (the image folder) and "
                      "--name=NAME (the dataset's name).")
    path, built, folder = prepare(source_dir, name=name, data_dir=data_dir)
  except DataError as e:
    print(f"mixjax.data.prepare: {e}", file=sys.stderr, flush=True)
    return e.exit_code
  found = f" ({summary(folder)})" if folder is not None else ""
  if built:
    print(f"Prepared {name} in {path}{found}, images kept encoded (array_record). Train "
          f"on it with --config.dataset.name={name} --config.dataset.data_dir={data_dir}.",
          flush=True)
  else:
    print(f"{name} is already prepared in {path}{found}; nothing to do.", flush=True)
  return 0


SYNTHETIC_CLASSES = ("red_disc", "green_square", "blue_triangle", "yellow_bars")


def write_synthetic(root: str, *, per_class: dict[str, int], size_range=(48, 96),
                    num_classes: int = 4, seed: int = 0, quality: int = 90) -> str:
  """Writes a synthetic image folder (torchvision layout) for tests, docs and benchmarks.

  Class k draws one shape of one colour (`SYNTHETIC_CLASSES`: a red disc, a green
  square, a blue triangle, yellow bars) at a random position and scale on a background
  of uniform noise, so classes are separable by colour and by shape. Each image's width
  and height are drawn independently, uniformly from `size_range` (inclusive); images
  are JPEGs at `quality`. Deterministic in `seed`.

  Args:
    root: the folder to write (`root/<split>/<class>/<i>.jpg`).
    per_class: split -> images per class, e.g. {"train": 60, "test": 20}.
    size_range: (lo, hi) pixels.
    num_classes: the first `num_classes` of `SYNTHETIC_CLASSES` (at most 4).

  Returns:
    `root`.
  """
  import PIL.Image  # pylint: disable=g-import-not-at-top
  import PIL.ImageDraw  # pylint: disable=g-import-not-at-top
  if not 1 <= num_classes <= len(SYNTHETIC_CLASSES):
    raise ValueError(f"num_classes must be in [1, {len(SYNTHETIC_CLASSES)}].")
  colours = ((220, 40, 40), (40, 200, 60), (40, 70, 220), (230, 210, 40))
  for split_i, (split, n) in enumerate(sorted(per_class.items())):
    for k, cls in enumerate(SYNTHETIC_CLASSES[:num_classes]):
      folder = os.path.join(root, split, cls)
      os.makedirs(folder, exist_ok=True)
      rng = np.random.default_rng([seed, split_i, k])
      for i in range(n):
        w, h = (int(v) for v in rng.integers(size_range[0], size_range[1] + 1, 2))
        noise = rng.integers(60, 196, (h, w, 3), dtype=np.uint8)
        im = PIL.Image.fromarray(noise, "RGB")
        draw = PIL.ImageDraw.Draw(im)
        r = rng.uniform(0.25, 0.4) * min(w, h)
        cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
        col = tuple(int(c) for c in np.clip(np.asarray(colours[k]) + rng.integers(
            -25, 26, 3), 0, 255))
        if k == 0:
          draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=col)
        elif k == 1:
          draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=col)
        elif k == 2:
          draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=col)
        else:
          for j in range(3):
            x0 = cx - r + j * (2 * r / 3)
            draw.rectangle((x0, cy - r, x0 + r / 3, cy + r), fill=col)
        im.save(os.path.join(folder, f"{i:05d}.jpg"), "JPEG", quality=quality)
  return root
