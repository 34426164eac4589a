"""Shared command-line handling and data loading of the study scripts."""
from __future__ import annotations

import argparse
import os
import time
from typing import Callable, Sequence

MODES = ("all", "run", "report")


def parse_args(description: str, parts: Sequence[str], argv: Sequence[str] | None = None,
               default_seeds: int = 5) -> argparse.Namespace:
  """--out, --mode (all | run | report), --parts, --seeds, --quick."""
  p = argparse.ArgumentParser(description=description)
  p.add_argument("--out", required=True, help="output directory (results/<study>)")
  p.add_argument("--mode", default="all", choices=MODES,
                 help="run: train and save; report: tables/figures from saved results; "
                      "all: both")
  p.add_argument("--parts", default=",".join(parts),
                 help=f"comma-separated subset of: {', '.join(parts)}")
  p.add_argument("--seeds", type=int, default=default_seeds, help="seeds per setting")
  p.add_argument("--quick", action="store_true",
                 help="tiny settings (few laws, epochs and seeds) to check the pipeline")
  args = p.parse_args(argv)
  chosen = [s for s in args.parts.split(",") if s]
  unknown = sorted(set(chosen) - set(parts))
  if unknown:
    p.error(f"unknown parts {unknown}; known: {', '.join(parts)}")
  args.parts = chosen
  if args.seeds < 1:
    p.error("--seeds must be >= 1")
  return args


def load(name: str, **kw):
  """`mixjax.data.load_dataset(name, **kw)`."""
  from mixjax import data  # pylint: disable=g-import-not-at-top
  return data.load_dataset(name, **kw)


def main(args: argparse.Namespace, run: Callable[[argparse.Namespace], None],
         report: Callable[[argparse.Namespace], None]) -> None:
  os.makedirs(args.out, exist_ok=True)
  t0 = time.time()
  if args.mode in ("all", "run"):
    run(args)
    print(f"[study] training done in {time.time() - t0:.0f}s; results in {args.out}")
  if args.mode in ("all", "report"):
    report(args)
    print(f"[study] report written to {os.path.join(args.out, 'report.md')}")
