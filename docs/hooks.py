"""mkdocs hook: the site mirrors the repository's own layout.

Pages are written to be read on the repository host too, so their relative links are
repository paths (README.md links `docs/training.md`, a page in docs/ links
`../results/README.md`). This hook gives every page the path it has in the repository
(docs/training.md stays docs/training.md; README.md is the home page) and adds the
repository's other Markdown and figures (`REPO_PAGES`), so those links resolve unchanged
on the site, and `mkdocs build --strict` fails on any that does not.
"""
from __future__ import annotations

import fnmatch
import os

from mkdocs.structure.files import File, Files

# Repository paths (files, or folders searched for `REPO_PATTERNS`) outside docs/ that the
# site includes, at their repository path.
REPO_PAGES = ("README.md", "CHANGELOG.md", "results")
REPO_PATTERNS = ("*.md", "*.png", "*.svg")


def _repo_files(root: str):
  for entry in REPO_PAGES:
    path = os.path.join(root, entry)
    if os.path.isfile(path):
      yield entry
      continue
    for folder, _, names in sorted(os.walk(path)):
      for name in sorted(names):
        if any(fnmatch.fnmatch(name, p) for p in REPO_PATTERNS):
          yield os.path.relpath(os.path.join(folder, name), root).replace(os.sep, "/")


def on_files(files: Files, config) -> Files:
  docs_dir = os.path.abspath(config["docs_dir"])
  root = os.path.dirname(os.path.abspath(config["config_file_path"]))
  prefix = os.path.relpath(docs_dir, root).replace(os.sep, "/")
  site, urls = config["site_dir"], config["use_directory_urls"]
  mirrored = []
  for f in files:
    if f.abs_src_path and os.path.abspath(f.abs_src_path).startswith(docs_dir + os.sep):
      f = File(f"{prefix}/{f.src_uri}", root, site, urls, inclusion=f.inclusion)
    mirrored.append(f)
  mirrored += [File(path, root, site, urls) for path in _repo_files(root)]
  return Files(mirrored)
