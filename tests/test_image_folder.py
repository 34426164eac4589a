"""mixjax.data.image_folder: a folder of class sub-folders becomes a tfds array_record
dataset with the files' bytes as they are; every bad input is refused in one line before
anything is written; a rerun is a no-op."""
from __future__ import annotations

import io
import os
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import tensorflow_datasets as tfds

from mixjax.data import image_folder
from mixjax.errors import DataError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PER_CLASS = {"train": 6, "test": 2}


@pytest.fixture
def folder(tmp_path):
  return image_folder.write_synthetic(str(tmp_path / "src"), per_class=PER_CLASS,
                                      size_range=(20, 40), num_classes=3)


def _run(capsys, source, data_dir, name="shapes"):
  """`command` in-process: (exit code, stdout lines, stderr lines)."""
  code = image_folder.command(source_dir=source, name=name, data_dir=data_dir)
  out, err = capsys.readouterr()
  return code, out.splitlines(), err.splitlines()


def _read(name, data_dir, split):
  return tfds.data_source(name, split=split, data_dir=data_dir, download=False,
                          decoders={"image": tfds.decode.SkipDecoding()})


def test_prepared_dataset_holds_the_files_as_they_are(folder, tmp_path, capsys):
  out_dir = str(tmp_path / "out")
  code, out, err = _run(capsys, folder, out_dir)
  assert (code, err, len(out)) == (0, [], 1) and "Prepared shapes" in out[0]
  classes = sorted(os.listdir(os.path.join(folder, "train")))
  builder = tfds.builder("shapes", data_dir=out_dir)
  assert builder.info.features["label"].names == classes
  for split, n in PER_CLASS.items():
    source = _read("shapes", out_dir, split)
    assert len(source) == n * len(classes)
    seen = set()
    for i in range(len(source)):
      ex = source[i]
      rel = ex["file_name"].decode()
      with open(os.path.join(folder, split, rel), "rb") as f:
        assert ex["image"] == f.read()  # not re-encoded
      assert classes[ex["label"]] == rel.split(os.sep)[0]
      seen.add(rel)
    assert len(seen) == len(source)
  # The recorded statistics against NumPy over every training pixel.
  pixels = np.concatenate([
      np.asarray(PIL.Image.open(os.path.join(d, f)).convert("RGB")).reshape(-1, 3)
      for d, _, fs in os.walk(os.path.join(folder, "train")) for f in fs])
  meta = builder.info.metadata
  np.testing.assert_allclose(meta["norm_mean"], pixels.mean(0) / 255, rtol=1e-12)
  np.testing.assert_allclose(meta["norm_std"], pixels.std(0) / 255, rtol=1e-9)
  assert sorted(os.listdir(out_dir)) == ["shapes"]  # no temporary folder left


def test_rerun_is_a_no_op_and_other_files_are_refused(folder, tmp_path, capsys):
  out_dir = str(tmp_path / "out")
  assert _run(capsys, folder, out_dir)[0] == 0
  info = os.path.join(out_dir, "shapes", image_folder.VERSION, "dataset_info.json")
  before = os.stat(info).st_mtime_ns
  code, out, err = _run(capsys, folder, out_dir)
  assert (code, err) == (0, []) and "already prepared" in out[0] and "nothing to do" in out[0]
  assert os.stat(info).st_mtime_ns == before
  os.remove(os.path.join(folder, "train", "red_disc", "00000.jpg"))
  code, out, err = _run(capsys, folder, out_dir)
  assert (code, out, len(err)) == (4, [], 1) and "prepared from other files" in err[0]


def _corrupt_jpeg(path):
  data = open(path, "rb").read()
  with open(path, "wb") as f:
    f.write(data[:len(data) // 2])  # truncated


def _empty_class(root):
  os.makedirs(os.path.join(root, "train", "empty_class"))


def _non_image(root):
  with open(os.path.join(root, "train", "red_disc", "notes.txt"), "w") as f:
    f.write("not an image")


BAD = {
    "class folders without files": (lambda root: [
        os.remove(os.path.join(d, f)) for d, _, fs in os.walk(root) for f in fs],
                                    "blue_triangle holds no images"),
    "no train folder": (lambda root: os.rename(os.path.join(root, "train"),
                                               os.path.join(root, "training")),
                        "has no train/ folder"),
    "class folder with no images": (_empty_class, "empty_class holds no images"),
    "non-image file": (_non_image, "notes.txt is not an image"),
    "corrupt JPEG": (lambda root: _corrupt_jpeg(
        os.path.join(root, "train", "green_square", "00003.jpg")),
                     "00003.jpg is a corrupt or unreadable image"),
    "GIF": (lambda root: PIL.Image.new("RGB", (8, 8)).save(
        os.path.join(root, "test", "red_disc", "x.gif")), "x.gif is a GIF image"),
    "unknown test class": (lambda root: os.rename(os.path.join(root, "test", "red_disc"),
                                                  os.path.join(root, "test", "cat")),
                           "class 'cat' is not one of train/'s classes"),
    "loose file": (lambda root: PIL.Image.new("RGB", (8, 8)).save(
        os.path.join(root, "train", "x.png")), "x.png is a file directly in train/"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_and_nothing_is_written(case, folder, tmp_path, capsys):
  spoil, expected = BAD[case]
  spoil(folder)
  out_dir = tmp_path / "out"
  code, out, err = _run(capsys, folder, str(out_dir))
  assert (code, out, len(err)) == (DataError.exit_code, [], 1), err
  assert expected in err[0] and err[0].startswith("mixjax.data.prepare: ")
  assert not out_dir.exists() or not any(out_dir.iterdir())


def test_empty_source_folder(tmp_path, capsys):
  (tmp_path / "src").mkdir()
  code, out, err = _run(capsys, str(tmp_path / "src"), str(tmp_path / "out"))
  assert (code, out, len(err)) == (4, [], 1) and "is empty" in err[0]


def test_several_bad_files_are_named_in_one_line(folder, tmp_path, capsys):
  for i in range(5):
    _corrupt_jpeg(os.path.join(folder, "train", "blue_triangle", f"{i:05d}.jpg"))
  code, out, err = _run(capsys, folder, str(tmp_path / "out"))
  assert (code, len(err)) == (4, 1)
  assert "5 files are not a readable JPEG or PNG image" in err[0] and "(and 2 more)" in err[0]
  assert err[0].count("blue_triangle") == image_folder.MAX_NAMED
  assert "refused, not skipped" in err[0]


@pytest.mark.parametrize("name,expected", [("Shapes", "not a valid dataset name"),
                                           ("mnist", "registered dataset"),
                                           ("digits", "registered dataset")])
def test_bad_names(name, expected, folder, tmp_path, capsys):
  code, _, err = _run(capsys, folder, str(tmp_path / "out"), name=name)
  assert (code, len(err)) == (4, 1) and expected in err[0]


def test_a_failed_build_leaves_nothing(folder, tmp_path, monkeypatch):
  out_dir = tmp_path / "out"
  real = image_folder.builder_class

  def failing(name, folder_, metadata):
    cls = real(name, folder_, metadata)

    def generate(self, split):
      yield from list(cls._generate_examples(self, split))[:3]
      raise OSError("disk full")
    return type("Failing", (cls,), {"_generate_examples": generate,
                                    "name": name}, skip_registration=True)
  monkeypatch.setattr(image_folder, "builder_class", failing)
  with pytest.raises(OSError, match="disk full"):
    image_folder.prepare(folder, name="shapes", data_dir=str(out_dir))
  assert list(out_dir.iterdir()) == []


def test_mixed_formats_and_nested_folders(tmp_path):
  root = tmp_path / "src"
  for i, (cls, fmt, mode) in enumerate([("a", "PNG", "RGBA"), ("a", "JPEG", "L"),
                                         ("b", "PNG", "L"), ("b", "JPEG", "RGB")]):
    d = root / "train" / cls / "nested" if i % 2 else root / "train" / cls
    d.mkdir(parents=True, exist_ok=True)
    PIL.Image.new(mode, (9, 7), 100).save(d / f"{i}.{fmt.lower()}", fmt)
  (root / "train" / "a" / ".DS_Store").write_bytes(b"\0\1")  # hidden: ignored
  path, built, found = image_folder.prepare(str(root), name="mixed",
                                            data_dir=str(tmp_path / "out"))
  assert built and found.class_names == ("a", "b")
  assert sorted(r for r, _ in found.files["train"]) == [
      "a/0.png", "a/nested/1.jpeg", "b/2.png", "b/nested/3.jpeg"]
  source = _read("mixed", str(tmp_path / "out"), "train")
  formats = sorted(PIL.Image.open(io.BytesIO(source[i]["image"])).format
                   for i in range(len(source)))
  assert formats == ["JPEG", "JPEG", "PNG", "PNG"]


@pytest.mark.slow
def test_the_command(folder, tmp_path):
  """The documented command (docs/own_images.md), as a user runs it: a bad folder (one
  line on stderr, exit 4), then the good one, then the rerun."""
  out_dir = str(tmp_path / "out")
  cmd = lambda src: [sys.executable, "-m", "mixjax.data.prepare", "--dataset=image_folder",
                     f"--source_dir={src}", "--name=shapes", f"--data_dir={out_dir}"]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  run = lambda src: subprocess.run(cmd(src), cwd=ROOT, capture_output=True, text=True,
                                   env=env, timeout=300)
  (tmp_path / "empty").mkdir()
  bad = run(str(tmp_path / "empty"))
  assert bad.returncode == 4 and bad.stdout == ""
  assert bad.stderr.strip().splitlines() == [
      f"mixjax.data.prepare: {tmp_path / 'empty'} is empty; expected "
      f"{tmp_path / 'empty'}/train/<class>/<images> (torchvision's ImageFolder layout; "
      "optional val/ or test/ beside train/)."]
  first = run(folder)
  assert first.returncode == 0, first.stderr
  assert first.stdout.startswith("Prepared shapes in ")
  assert "Downloading and preparing" not in first.stdout + first.stderr
  again = run(folder)
  assert again.returncode == 0 and "already prepared" in again.stdout
