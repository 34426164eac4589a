"""Decoded tfds splits cached as arrays: decode the images once, read the arrays after.

Reading a prepared tfds split decodes every image (Fashion-MNIST: 70,000 PNGs, ~7 s on
two cores); the decoded uint8 images and int64 labels of a split take 55 MB. `cached_split`
keeps them in `<cache_dir>/<name>/<config>/<version>/<source>/<split>.<image_key>.<label_key>.npz`
with a manifest `<same>.json` beside it:

  key          name, builder config, version, split, image and label keys;
  source       what the arrays were decoded from: the prepared folder, and the name, size
               and modification time of its `dataset_info.json` and of each of the split's
               array_record shards;
  sha256       of the `.npz` file's bytes; shapes and dtypes of the arrays.

A cached split is used only if its manifest exists, names the same key and source, and the
`.npz` it points at hashes to the recorded sha256 and holds arrays of the recorded shapes
and dtypes. Anything else (no cache, a re-prepared or moved dataset, another version, a
damaged or truncated file, an unreadable manifest) decodes the split again through tfds
and rewrites the cache: never trusted blindly, never an error. The prepared folder's path
is part of `<source>` (a short hash), so two data dirs holding the same dataset, and the
fakes of `tfds.testing.mock_data`, never share an entry.

Writes are atomic (a temporary file, then `os.replace`; the manifest last), so a process
killed while writing, or two processes filling the same entry, leave either a valid entry
or one that fails its check and is rebuilt.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from typing import Any, Callable

from absl import logging
import numpy as np

FORMAT = 1  # bump when the layout changes: older entries then fail their check


def default_cache_dir() -> str:
  """`$MIXJAX_CACHE_DIR` if set, else `~/.cache/mixjax`."""
  return os.environ.get("MIXJAX_CACHE_DIR",
                        os.path.join(os.path.expanduser("~"), ".cache", "mixjax"))


def _stat(path: str) -> list[Any]:
  try:
    st = os.stat(path)
  except OSError:
    return [os.path.basename(path), None, None]
  return [os.path.basename(path), st.st_size, st.st_mtime_ns]


def source_fingerprint(builder, split: str) -> dict[str, Any]:
  """What a split is decoded from (see the module docstring): its folder, and the size
  and modification time of `dataset_info.json` and of each shard of `split`."""
  folder = os.fspath(builder.data_dir)
  try:
    shards = sorted(os.fspath(p) for p in builder.info.splits[split].filepaths)
  except (KeyError, ValueError, TypeError, AttributeError):
    shards = []
  return {"folder": os.path.abspath(folder),
          "dataset_info": _stat(os.path.join(folder, "dataset_info.json")),
          "shards": [_stat(p) for p in shards]}


def split_key(builder, split: str, image_key: str, label_key: str) -> dict[str, Any]:
  config = getattr(builder, "builder_config", None)
  return {"format": FORMAT, "name": builder.name,
          "config": getattr(config, "name", None) or "default",
          "version": str(builder.version), "split": split, "image_key": image_key,
          "label_key": label_key}


def entry_path(cache_dir: str, key: dict[str, Any], source: dict[str, Any]) -> str:
  """The entry's path without extension (module docstring)."""
  where = hashlib.sha256(source["folder"].encode()).hexdigest()[:12]
  return os.path.join(os.path.expanduser(cache_dir), key["name"], key["config"],
                      key["version"], where,
                      f"{key['split']}.{key['image_key']}.{key['label_key']}")


def _atomic_write(path: str, data: bytes) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp_")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def read_entry(path: str, key: dict[str, Any], source: dict[str, Any]
               ) -> tuple[np.ndarray, np.ndarray] | None:
  """The cached (images, labels) at `path` if the entry passes every check, else None
  (the reason is logged)."""
  try:
    with open(path + ".json") as f:
      manifest = json.load(f)
  except FileNotFoundError:
    return None
  except (OSError, ValueError) as e:
    logging.warning("Array cache %s.json is unreadable (%s); decoding again.", path, e)
    return None
  if manifest.get("key") != key or manifest.get("source") != source:
    logging.info("Array cache %s is stale (the prepared dataset changed); decoding again.",
                 path)
    return None
  try:
    with open(path + ".npz", "rb") as f:
      data = f.read()
  except OSError as e:
    logging.warning("Array cache %s.npz is unreadable (%s); decoding again.", path, e)
    return None
  if hashlib.sha256(data).hexdigest() != manifest.get("sha256"):
    logging.warning("Array cache %s.npz does not match its recorded hash (damaged); "
                    "decoding again.", path)
    return None
  try:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
      images, labels = z["images"], z["labels"]
  except (OSError, ValueError, KeyError) as e:
    logging.warning("Array cache %s.npz does not load (%s); decoding again.", path, e)
    return None
  for name, a in (("images", images), ("labels", labels)):
    if [list(a.shape), str(a.dtype)] != manifest.get(name):
      logging.warning("Array cache %s.npz holds %s of shape %s %s, not the recorded %s; "
                      "decoding again.", path, name, a.shape, a.dtype, manifest.get(name))
      return None
  return images, labels


def write_entry(path: str, key: dict[str, Any], source: dict[str, Any],
                images: np.ndarray, labels: np.ndarray) -> None:
  """Writes the entry (the arrays, then the manifest), atomically."""
  buf = io.BytesIO()
  np.savez(buf, images=images, labels=labels)
  data = buf.getvalue()
  _atomic_write(path + ".npz", data)
  manifest = {"key": key, "source": source, "sha256": hashlib.sha256(data).hexdigest(),
              "images": [list(images.shape), str(images.dtype)],
              "labels": [list(labels.shape), str(labels.dtype)]}
  _atomic_write(path + ".json", json.dumps(manifest, indent=1).encode())


def cached_split(builder, split: str, decode: Callable[[], tuple[np.ndarray, np.ndarray]],
                 *, cache_dir: str | None, image_key: str = "image",
                 label_key: str = "label") -> tuple[np.ndarray, np.ndarray]:
  """(images, labels) of a prepared split: from the cache in `cache_dir` when a valid
  entry is there, else `decode()`'s, then cached. `cache_dir` None or "": no cache.
  A cache that cannot be written (read-only, full) is logged and skipped."""
  if not cache_dir:
    return decode()
  key = split_key(builder, split, image_key, label_key)
  source = source_fingerprint(builder, split)
  path = entry_path(cache_dir, key, source)
  hit = read_entry(path, key, source)
  if hit is not None:
    return hit
  images, labels = decode()
  try:
    write_entry(path, key, source, images, labels)
  except OSError as e:
    logging.warning("Could not write the array cache %s (%s); continuing without it.",
                    path, e)
  return images, labels
