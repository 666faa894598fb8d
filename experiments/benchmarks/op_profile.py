"""Where a train step's time goes, op by op: a jax.profiler trace joined with the compiled HLO.

  python -m experiments.benchmarks.op_profile [--model=mid] [--batch=8] [--top=15]

Runs the real train step (as train_step.py does) twice under `jax.profiler.trace`; XLA:CPU
and XLA:GPU name each executed op after its HLO instruction, so every op's time is joined
with its instruction: its phase (forward, backward: under `transpose(jvp(...))` in the op
metadata, or the update: AdamW and clipping), whether it computes a dot (its FLOPs from the
dot's output shape and contracting dims) and the jax op it came from. The table groups the
op time by phase and kind, with each group's share of the traced time and its dot FLOP rate
over the f32 matmul rate measured in this process; the top ops follow. Times under the
profiler run somewhat slower than train_step.py's.
"""
import collections
import gzip
import json
import math
import os
import re
import tempfile

import jax
from absl import app, flags

from experiments.benchmarks import common
from gpt4v_jax import perf

_MODEL = flags.DEFINE_string("model", "mid", "common.model_config name.")
_BATCH = flags.DEFINE_integer("batch", 8, "Examples per step.")
_TOP = flags.DEFINE_integer("top", 15, "Slowest ops listed after the groups.")

_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\w+\[[\d,]*\])\S* ([\w\-]+)\((.*)$")


def parse_hlo(text: str) -> tuple[dict, dict]:
  """({instruction: (shape, opcode, rest of line)}, {computation: [its instruction names]})."""
  instructions, computations, current = {}, {}, None
  for line in text.splitlines():
    if line and not line[0].isspace() and line.rstrip().endswith("{"):
      current = line.split()[1 if line.startswith("ENTRY") else 0].lstrip("%")
      computations[current] = []
    elif (m := _INSTRUCTION.match(line)) and current is not None:
      instructions[m.group(1)] = m.group(2), m.group(3), m.group(4)
      computations[current].append(m.group(1))
  return instructions, computations


def _dims(shape: str) -> list[int]:
  return [int(d) for d in shape[shape.index("[") + 1:-1].split(",") if d]


def dot_flops(name: str, instructions: dict, computations: dict) -> int:
  """2 x output elements x contracted size of a dot, or of every dot a fusion calls."""
  shape, opcode, rest = instructions[name]
  if opcode == "dot":
    lhs = rest.split(",")[0].strip().lstrip("%")
    contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", rest)
    k = math.prod(_dims(instructions[lhs][0])[int(i)]
                  for i in contracting.group(1).split(",") if i) if contracting else 1
    return 2 * math.prod(_dims(shape)) * k
  called = re.search(r"calls=%?([\w.\-]+)", rest)
  if opcode != "fusion" or not called:
    return 0
  return sum(dot_flops(n, instructions, computations)
             for n in computations.get(called.group(1), []) if instructions[n][1] == "dot")


def op_times(trace_dir: str, instructions: dict, calls: int) -> dict[str, float]:
  """Seconds per call of each traced op that names an HLO instruction."""
  path = next(os.path.join(root, f) for root, _, files in os.walk(trace_dir)
              for f in files if f.endswith(".trace.json.gz"))
  with gzip.open(path) as f:
    events = json.load(f)["traceEvents"]
  times = collections.Counter()
  for e in events:
    if e.get("ph") == "X" and e.get("name") in instructions:
      times[e["name"]] += e["dur"] * 1e-6 / calls
  return times


def main(argv):
  del argv
  config = common.model_config(_MODEL.value)
  with common.one_device_train_step(config) as (objective, model, init, _, train_step):
    step = jax.jit(train_step, donate_argnums=0)
    batch = common.random_batch(objective, _BATCH.value, config.model.vocab_size)
    holder = [init()]
    hlo = step.lower(holder[0], batch).compile().as_text()

    def run():
      holder[0], metrics = step(holder[0], batch)
      jax.block_until_ready(metrics)

    run()
    peak = perf.peak_flops_per_device()[0]
    with tempfile.TemporaryDirectory() as trace_dir:
      with jax.profiler.trace(trace_dir):
        for _ in range(2):
          run()
      instructions, computations = parse_hlo(hlo)
      times = op_times(trace_dir, instructions, calls=2)
  rows, total = op_rows(times, instructions, computations, peak=peak, top=_TOP.value,
                        phase_of=lambda source, name: (
                            "backward" if "transpose(jvp(" in source else
                            "forward" if "jvp(" in source else "update"))
  common.report("op_profile", rows, notes=(
      f"model {_MODEL.value}, batch {_BATCH.value}; traced op time {total * 1e3:.0f} ms per "
      f"step; peak {peak / 1e12:.3f} TFLOP/s (measured f32 matmul rate)"))


def op_rows(times: dict, instructions: dict, computations: dict, *, peak: float, top: int,
            phase_of, runs_of=lambda phase: 1, order=None) -> tuple[list[dict], float]:
  """(table rows, total traced seconds) of `op_times`' result: one row per (phase, dot or
  other) group, sorted by `order` (phase -> rank) then time, then the `top` slowest ops.
  phase_of(op source, op name) names an op's phase; an op of phase p runs `runs_of(p)`
  times per traced call (a loop body's ops: once per step), which its dot FLOPs count."""
  total = sum(times.values())
  groups = collections.defaultdict(lambda: [0.0, 0, 0])
  ops = []
  for name, seconds in times.items():
    source = re.search(r'op_name="([^"]+)"', instructions[name][2])
    source = source.group(1) if source else ""
    phase = phase_of(source, name)
    flops = dot_flops(name, instructions, computations) * runs_of(phase)
    group = groups[(phase, "dot" if flops else "other")]
    group[0] += seconds
    group[1] += flops
    group[2] += 1
    ops.append((seconds, flops, name, instructions[name][0], source, phase))
  rank = (lambda g: (order[g[0][0]], -g[1][0])) if order else (lambda g: -g[1][0])
  rows = [dict(kind="group", phase=phase, op=kind, ops=n, ms=s * 1e3, share=s / total,
               gflop=f / 1e9, rate_of_peak=f / s / peak if f else None)
          for (phase, kind), (s, f, n) in sorted(groups.items(), key=rank)]
  rows += [dict(kind="op", phase=phase, op=f"{name} {shape} {source.split('/', 1)[-1][-60:]}",
                ops=1, ms=s * 1e3, share=s / total, gflop=f / 1e9,
                rate_of_peak=f / s / peak if f else None)
           for s, f, name, shape, source, phase in sorted(ops, reverse=True)[:top]]
  return rows, total


if __name__ == "__main__":
  app.run(main)
