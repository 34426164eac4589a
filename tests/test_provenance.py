"""mixjax.provenance: the code revision a summary.json records, on a throwaway checkout."""
from __future__ import annotations

import subprocess

from mixjax import provenance


def _git(repo, *args):
  return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
                        cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def test_code_revision_sees_changes_under_mixjax_and_experiments_only(tmp_path):
  """HEAD, and dirty exactly when the checkout's top-level mixjax/ or experiments/ holds
  a change (an untracked file counts), asked from a folder inside mixjax/ as the trainer
  does; a change elsewhere (docs/) does not count."""
  for folder in ("mixjax/sub", "experiments", "docs"):
    (tmp_path / folder).mkdir(parents=True)
  for f in ("mixjax/sub/a.py", "experiments/b.py", "docs/c.md"):
    (tmp_path / f).write_text("x = 1\n")
  _git(tmp_path, "init", "-q")
  _git(tmp_path, "add", ".")
  _git(tmp_path, "commit", "-q", "-m", "init")
  head = _git(tmp_path, "rev-parse", "HEAD")
  where = str(tmp_path / "mixjax" / "sub")

  def revision():
    provenance.code_revision.cache_clear()
    return provenance.code_revision(where)

  assert revision() == {"git_revision": head, "git_dirty": False}
  (tmp_path / "docs" / "c.md").write_text("changed\n")
  assert revision()["git_dirty"] is False
  (tmp_path / "experiments" / "new.py").write_text("y = 2\n")
  assert revision()["git_dirty"] is True
  (tmp_path / "experiments" / "new.py").unlink()
  (tmp_path / "mixjax" / "sub" / "a.py").write_text("x = 2\n")
  assert revision() == {"git_revision": head, "git_dirty": True}
  provenance.code_revision.cache_clear()
