"""Where the time of one recipe-CNN training step goes, op by op: mixjax (a
`jax.profiler` trace of the compiled step) against PyTorch (`torch.profiler`) on the
same network and batch as `bench_steps --models=recipe` (ERM, SGD with momentum).

    python -m benchmarks.profile_recipe               # grouped table
    python -m benchmarks.profile_recipe --ops=25      # and the 25 longest ops of each
    python -m benchmarks.profile_recipe --standard    # mixjax on the standard layers

mixjax: every thunk XLA:CPU runs is timed from its start to its end event in the trace
(`create_perfetto_trace=True`), averaged over the profiled steps, and grouped by what it
computes, read from the op's HLO metadata (the flax module path: conv0_0, bn0_0, dense0,
...; `transpose(jvp(...))` marks the backward pass). XLA runs independent thunks
concurrently on the two cores (e.g. the weight gradient of a convolution next to the
BatchNorm backward of the layer below), so the column can add up to more than the wall
time of a step, which is printed too. PyTorch: self CPU time of each aten op (ops run one
after another), grouped the same way by op and input shape. Printed, never asserted.
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import tempfile
import time

import jax

from benchmarks import bench_steps

MODEL = "recipe"


def _jax_step(standard: bool):
  runs = bench_steps._jax_variants(MODEL)  # pylint: disable=protected-access
  if standard:
    return runs["erm_std_layers"]
  return runs["erm"]


def _hlo_metadata(hlo_text: str) -> dict[str, tuple[str, str, str]]:
  """{instruction name: (opcode, output shape, op_name)} of the entry's thunks."""
  meta = {}
  pat = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (\S+) ([\w\-]+)\(.*?(?:op_name=\"([^\"]*)\")?")
  for line in hlo_text.splitlines():
    m = pat.match(line)
    if m:
      name, shape, opcode = m.group(1), m.group(2), m.group(3)
      op_name = re.search(r'op_name="([^"]*)"', line)
      meta[name] = (opcode, shape, op_name.group(1) if op_name else "")
  return meta


def _category(opcode: str, shape: str, op_name: str) -> str:
  """A row of the table for one XLA op."""
  bwd = "transpose(" in op_name
  layer = re.search(r"/(conv\d+_\d+|bn\d+_\d+|dense\d+|head)/", op_name)
  layer = layer.group(1) if layer else None
  if opcode == "convolution":
    if not op_name or (bwd and shape.startswith("f32[3,3,")) or re.match(
        r"f32\[\d+,3,3,\d+\]", shape):
      return "conv weight gradients (+ their layout transposes)"
    return f"{layer} {'input gradient' if bwd else 'forward'}"
  if layer and layer.startswith("conv"):
    return f"{layer} {'backward' if bwd else 'forward'}"
  if layer and layer.startswith("bn"):
    return f"BatchNorm {layer[2:]} {'backward' if bwd else 'forward'}"
  if layer in ("dense0", "head"):
    return f"dense + head {'backward' if bwd else 'forward'}"
  if "log_softmax" in op_name or "jvp()" in op_name:
    return "loss"
  if any(k in op_name for k in ("reduce_max", "relu", "select_n", "/div", "max_pool")):
    return f"max-pool + ReLU {'backward' if bwd else 'forward'}"
  if not op_name:
    return "conv weight gradients (+ their layout transposes)" if "transpose" in opcode \
        else "copies (layout, parameters)"
  if "jvp" not in op_name:
    return "optimizer (SGD momentum)"
  return "other"


def trace_ops(run, steps: int) -> dict[str, float]:
  """{thunk name: microseconds over `steps` traced steps of run(steps)}: each thunk XLA:CPU
  runs, timed from its start to its end event in a `jax.profiler` trace."""
  with tempfile.TemporaryDirectory() as tmp:
    jax.profiler.start_trace(tmp, create_perfetto_trace=True)
    run(steps)
    jax.profiler.stop_trace()
    path = sorted(glob.glob(os.path.join(tmp, "plugins/profile/*/perfetto_trace.json.gz")))[-1]
    with gzip.open(path) as f:
      trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  events = sorted((e for e in events if e.get("ph") == "X"), key=lambda e: e["ts"])
  started, per_op = {}, collections.defaultdict(float)
  for e in events:
    name = e["name"]
    if name.startswith("end: "):
      if name[5:] in started:
        per_op[name[5:]] += e["ts"] - started.pop(name[5:])
    elif not (name.startswith(("ThunkExecutor", "$", "Threadpool", "Pjit")) or "PjRt" in name):
      started[name] = e["ts"]
  return per_op


def print_trace(run, steps: int, show_ops: int, meta=None) -> dict[str, float]:
  """Traces run(steps) and prints its `show_ops` longest thunks (ms per step) with their
  HLO op name (`run.hlo_text()`); returns {thunk: us over the steps}."""
  per_op = trace_ops(run, steps)
  meta = _hlo_metadata(run.hlo_text()) if meta is None else meta
  total = sum(per_op.values()) / steps / 1e3
  print(f"\n{len(per_op)} thunks, {total:.1f} ms per step summed (they overlap on the cores)")
  for op, us in sorted(per_op.items(), key=lambda kv: -kv[1])[:show_ops]:
    opcode, shape, op_name = meta.get(op, ("?", "?", ""))
    print(f"  {us / steps / 1e3:7.3f} ms  {op:<28}{shape:<26}{op_name[-110:]}")
  return per_op


def profile_jax(steps: int, standard: bool, show_ops: int) -> dict[str, float]:
  run = _jax_step(standard)
  run(5)
  t0 = time.perf_counter()
  run(steps)
  wall = (time.perf_counter() - t0) / steps * 1e3
  if standard:
    with bench_steps._standard_layers():  # pylint: disable=protected-access
      meta = _hlo_metadata(run.hlo_text())
  else:
    meta = _hlo_metadata(run.hlo_text())
  print(f"\nmixjax{' (standard layers)' if standard else ''}: {wall:.1f} ms per step "
        f"(untraced, mean of {steps})")
  per_op = print_trace(run, steps, show_ops, meta) if show_ops else trace_ops(run, steps)
  rows = collections.defaultdict(float)
  for op, us in per_op.items():
    rows[_category(*meta.get(op, ("fusion" if "fusion" in op else op, "", "")))] += us
  rows = {k: v / steps / 1e3 for k, v in rows.items()}
  return rows


_TORCH_ROWS = {
    "aten::mkldnn_convolution": "conv forward",
    "aten::convolution_backward": "conv backward (input and weight gradients)",
    "aten::native_batch_norm": "BatchNorm forward",
    "aten::native_batch_norm_backward": "BatchNorm backward",
    "aten::max_pool2d_with_indices": "max-pool + ReLU forward",
    "aten::clamp_min": "max-pool + ReLU forward",
    "aten::max_pool2d_with_indices_backward": "max-pool + ReLU backward",
    "aten::threshold_backward": "max-pool + ReLU backward",
    "aten::addmm": "dense + head forward",
    "aten::mm": "dense + head backward",
}


def profile_torch(steps: int, show_ops: int) -> dict[str, float]:
  from benchmarks import torch_reference  # pylint: disable=g-import-not-at-top
  from torch import profiler  # pylint: disable=g-import-not-at-top
  name, kwargs, input_shape = bench_steps.MODELS[MODEL]
  run = torch_reference.make_steps(name, input_shape, bench_steps.NUM_CLASSES,
                                   bench_steps.BATCH, threads=bench_steps._threads(),  # pylint: disable=protected-access
                                   model_kwargs=kwargs)["erm"]
  run(5)
  with profiler.profile(activities=[profiler.ProfilerActivity.CPU]) as prof:
    run(steps)
  rows = collections.defaultdict(float)
  ops = []
  for evt in prof.key_averages():
    ms = evt.self_cpu_time_total / 1e3 / steps
    ops.append((ms, evt.key))
    rows[_TORCH_ROWS.get(evt.key, "other (optimizer, loss, autograd, fill)")] += ms
  total = sum(ms for ms, _ in ops)
  print(f"\nPyTorch: self CPU time per step {total:.1f} ms")
  for ms, key in sorted(ops, reverse=True)[:show_ops]:
    print(f"  {ms:7.2f} ms  {key}")
  return rows


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--ops", type=int, default=0, help="also list the N longest ops")
  parser.add_argument("--standard", action="store_true",
                      help="mixjax on the standard layers (nn.max_pool, nn.BatchNorm)")
  args = parser.parse_args(argv)
  print(f"recipe CNN step profile, batch {bench_steps.BATCH}, load average "
        f"{os.getloadavg()[0]:.2f} at start")
  jrows = profile_jax(args.steps, args.standard, args.ops)
  trows = profile_torch(args.steps, args.ops)
  print(f"\n{'op':<52}{'mixjax ms':>10}")
  for k, v in sorted(jrows.items(), key=lambda kv: -kv[1]):
    print(f"  {k:<50}{v:>10.2f}")
  print(f"  {'sum (ops overlap: see the docstring)':<50}{sum(jrows.values()):>10.2f}")
  print(f"\n{'op':<52}{'PyTorch ms':>10}")
  for k, v in sorted(trows.items(), key=lambda kv: -kv[1]):
    print(f"  {k:<50}{v:>10.2f}")
  print(f"  {'sum':<50}{sum(trows.values()):>10.2f}")


if __name__ == "__main__":
  main()
