"""Compile time of the train step with unrolled and scanned layers, by decoder depth.

  python -m experiments.benchmarks.compile_time [--depths=4,12,24]

The "mid" model (ViT-S/16 has 12 blocks) with the decoder depth varied; each variant's train
step is lowered and compiled once, from a fresh jit, timed on the wall clock.
"""
import time

import jax
from absl import app, flags

from experiments.benchmarks import common

_DEPTHS = flags.DEFINE_list("depths", ["4", "12", "24"], "Decoder depths.")


def compile_seconds(config) -> float:
  with common.one_device_train_step(config) as (objective, _, _, abstract, train_step):
    t0 = time.perf_counter()
    jax.jit(train_step).lower(abstract, objective.batch_spec(8)).compile()
    return time.perf_counter() - t0


def main(argv):
  del argv
  rows = []
  for depth in map(int, _DEPTHS.value):
    row = dict(decoder_depth=depth)
    for scan in (False, True):
      config = common.model_config("mid")
      config.model.update(depth=depth, scan_layers=scan)
      row["scan_s" if scan else "unrolled_s"] = compile_seconds(config)
    row["speedup"] = row["unrolled_s"] / row["scan_s"]
    rows.append(row)
  common.report("compile_time", rows, notes="train step of the mid model, batch 8")


if __name__ == "__main__":
  app.run(main)
