"""The errors mixjax raises for bad input, each mapped to one exit code by `mixjax.main`.

Every message is one line that names the problem and the fix; `mixjax.main` prints it
without a traceback and exits with the class's `exit_code`:

  ConfigError        2  a bad config value or key, an unknown name, a bad --config file
  NonFiniteLossError 3  the loss or a gradient became NaN/inf (the step is named)
  DataError          4  a dataset that is missing, not prepared or corrupt
  WorkdirError       5  an unusable workdir or checkpoint, or a workdir started with
                        another config
"""
from __future__ import annotations


class MixjaxError(Exception):
  """Base class: an expected failure with a one-line message and an exit code."""
  exit_code = 1
  prefix: str | None = "Error"


class ConfigError(MixjaxError, ValueError):
  """A bad config value or key; the message names it, the valid choices and the fix."""
  exit_code = 2
  prefix = "Invalid config"


class NonFiniteLossError(MixjaxError, FloatingPointError):
  """The loss or a gradient became NaN/inf; the message names the step (`step`, the
  first non-finite one, when known)."""
  exit_code = 3
  prefix = None  # the message names the step itself

  def __init__(self, message: str, step: int | None = None):
    super().__init__(message)
    self.step = step


class DataError(MixjaxError, FileNotFoundError):
  """A dataset that is missing, not prepared or corrupt; the message says how to fix it."""
  exit_code = 4
  prefix = "Missing data"


class WorkdirError(MixjaxError, RuntimeError):
  """The workdir cannot be used: not creatable, no restorable checkpoint, or started
  with a config that differs from this one. The message says what to do."""
  exit_code = 5
  prefix = "Unusable workdir"


def one_line(error: BaseException, limit: int | None = None) -> str:
  """The last non-empty line of an exception's message (its type name if empty), cut
  to `limit` characters when given."""
  lines = [l.strip() for l in str(error).splitlines() if l.strip()]
  line = lines[-1] if lines else type(error).__name__
  return line if limit is None or len(line) <= limit else line[:limit] + "…"
