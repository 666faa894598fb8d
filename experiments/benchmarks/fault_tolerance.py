"""What fault tolerance costs: the stop vote per step, and the checksums per checkpoint.

  python -m experiments.benchmarks.fault_tolerance [--models=default] [--batch=8] [--steps=20]

For each model, on every device of this process (one mesh, batch split over "data"):
  step_ms        the train loop's step: dispatch step N, then read step N-1's metrics
  vote_ms        the same loop with the stop vote a multi-process run casts each step
                 (preemption.StopVote on its collective path: a jitted max over one int32 per
                 device, read one step late), minus step_ms: what the vote adds to a step
  vote_alone_ms  one vote cast and read at once, nothing else running: its own latency
  checksum_ms    checkpoint.checksums over the whole train state (params, Adam moments, ...),
                 which every save computes and every restore computes again
  save_ms        one checkpoint save, committed (checksums included)
"""
import tempfile
import time

import flax.linen as nn
import grain
import jax
import numpy as np
from absl import app, flags, logging

from experiments.benchmarks import common
from gpt4v_jax import checkpoint, preemption, runs, sharding, train_step
from gpt4v_jax.optimizer import make_optimizer

_MODELS = flags.DEFINE_list("models", ["default"], "common.model_config names.")
_BATCH = flags.DEFINE_integer("batch", 8, "Examples per step (a multiple of the devices).")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps per loop (median of 3 loops).")


def _loop(step, state, batch, steps: int, votes=None):
  """Seconds per step of `steps` steps as the train loop runs them; returns (s, state)."""
  previous = None
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = step(state, batch)
    if votes is not None:
      votes.poll()
    if previous is not None:
      bool(previous["finite"])  # The loop's one-step-late read.
    previous = metrics
  jax.block_until_ready(previous)
  return (time.perf_counter() - start) / steps, state


def measure(config, batch_size: int, steps: int) -> dict:
  config.mesh.update(data=-1, fsdp=1, tensor=1)
  objective = runs.make_objective(config)
  model = objective.build_model(config.model)
  tx, schedule = make_optimizer(config.optimizer, config.train.steps)
  mesh = sharding.make_mesh(config.mesh)
  with jax.set_mesh(mesh), nn.logical_axis_rules(config.sharding_rules):
    init, _, shardings = runs.sharded_state_init(config, objective, model, tx, mesh)
    step = jax.jit(train_step.make_train_step(objective, model, tx, schedule,
                                              deterministic=True, skip_nonfinite=False),
                   in_shardings=(shardings, sharding.batch_sharding(mesh)),
                   out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=0)
    batch = jax.device_put(common.random_batch(objective, batch_size, config.model.vocab_size),
                           sharding.batch_sharding(mesh))
    with preemption.StopRequest() as request:
      votes = preemption.StopVote(request, mesh, collective=True)
      state = init()
      _, state = _loop(step, state, batch, 2, votes)  # Compiles both.
      plain, voting = [], []
      for _ in range(3):  # Interleaved, so a drifting CPU clock hits both alike.
        seconds, state = _loop(step, state, batch, steps)
        plain.append(seconds)
        seconds, state = _loop(step, state, batch, steps, votes)
        voting.append(seconds)
      alone = []
      for _ in range(20):
        t0 = time.perf_counter()
        votes.now()
        alone.append(time.perf_counter() - t0)
    checkpoint.checksums(state)  # Compiles.
    sums = []
    for _ in range(5):
      t0 = time.perf_counter()
      checkpoint.checksums(state)
      sums.append(time.perf_counter() - t0)
    with tempfile.TemporaryDirectory() as directory:
      ckpt = checkpoint.Checkpointer(directory, keep=2)
      data = iter(grain.MapDataset.range(10).to_iter_dataset())
      saves = []
      for s in range(1, 4):
        t0 = time.perf_counter()
        ckpt.save(s, state, data)
        ckpt.wait()
        saves.append(time.perf_counter() - t0)
      ckpt.close()
  step_s, vote_s = float(np.median(plain)), float(np.median(voting)) - float(np.median(plain))
  state_mb = sum(x.nbytes for x in jax.tree.leaves(state)) / 2**20
  return dict(state_MB=state_mb, step_ms=step_s * 1e3, vote_ms=vote_s * 1e3,
              vote_pct_of_step=100 * vote_s / step_s,
              vote_alone_ms=float(np.median(alone)) * 1e3,
              checksum_ms=float(np.median(sums)) * 1e3,
              save_ms=float(np.median(saves[1:])) * 1e3,
              checksum_pct_of_save=100 * float(np.median(sums)) / float(np.median(saves[1:])))


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax's INFO lines.
  rows = [dict(model=name, **measure(common.model_config(name), _BATCH.value, _STEPS.value))
          for name in _MODELS.value]
  common.report("fault_tolerance", rows, notes=f"batch {_BATCH.value} over "
                f"{jax.device_count()} device(s); vote_ms can be below timing noise (negative)")


if __name__ == "__main__":
  app.run(main)
