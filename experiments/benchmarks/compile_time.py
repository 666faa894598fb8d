"""Compile time of the train step with unrolled and scanned layers, by decoder depth.

  python -m experiments.benchmarks.compile_time [--depths=4,12,24]

The "mid" model (ViT-S/16 has 12 blocks) with the decoder depth varied; each variant's train
step is lowered and compiled once, from a fresh jit, timed on the wall clock.
"""
import time

import jax
import flax.linen as nn
from absl import app, flags

from experiments.benchmarks import common
from gpt4v_jax import sharding, train
from gpt4v_jax.optimizer import make_optimizer

_DEPTHS = flags.DEFINE_list("depths", ["4", "12", "24"], "Decoder depths.")


def compile_seconds(config) -> float:
  config.mesh.update(data=1, fsdp=1, tensor=1)
  objective = train.make_objective(config)
  model = objective.build_model(config.model)
  tx, schedule = make_optimizer(config.optimizer, config.train.steps)
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
  with jax.set_mesh(mesh), nn.logical_axis_rules(config.sharding_rules):
    _, abstract, _ = train.sharded_state_init(config, objective, model, tx, mesh)
    step = jax.jit(train.make_train_step(objective, model, tx, schedule, deterministic=True,
                                         skip_nonfinite=False))
    t0 = time.perf_counter()
    step.lower(abstract, objective.batch_spec(8)).compile()
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
