"""Multi-host: two real processes (4 CPU devices each, gloo collectives, a coordinator on
127.0.0.1) train as one process with 8 devices does, and write one checkpoint that a single
process restores."""
import os
import re
import socket
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np

from configs import shapes_caption
from conftest import COLLECTIVE_TIMEOUTS, FAST_COMPILE
from gpt4v_jax import checkpoint, runs, sharding
from gpt4v_jax.optimizer import make_optimizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# No evals for the two processes: this is about the train loop; 6 steps, checkpoints at 3
# and 6.
FLAGS = ("--config.evals.every=0", "--config.evals.final_splits=()",
         "--config.evals.during_splits=()")


def _losses(stdout: str) -> list[float]:
  return [float(x) for x in re.findall(r"^step \d+/\d+ loss=([\d.]+)", stdout, re.M)]


def _restore_params(workdir):
  """The newest checkpoint's params, restored by this (one) process onto its 8 devices."""
  config = shapes_caption.get_config("tiny")
  objective = runs.make_objective(config)
  model = objective.build_model(config.model)
  tx, _ = make_optimizer(config.optimizer, config.train.steps)
  mesh = sharding.make_mesh(config.mesh)
  with jax.set_mesh(mesh), nn.logical_axis_rules(config.sharding_rules):
    _, abstract, _ = runs.sharded_state_init(config, objective, model, tx, mesh)
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), keep=10)
  (state, step) = ckpt.restore_latest(abstract, None)
  ckpt.close()
  return step, jax.device_get(state.params)


def test_two_processes_match_one_and_write_one_checkpoint(tmp_path, tiny_data_dir, tiny_run):
  # The one-process reference: the suite's tiny run (8 devices; its evals change nothing
  # that training reads).
  one, one_dir = tiny_run
  assert one.returncode == 0, one.stderr[-3000:]

  with socket.socket() as s:  # A free port for the coordinator.
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4 "
         f"{COLLECTIVE_TIMEOUTS} {FAST_COMPILE}",
         "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
  procs = [subprocess.Popen(
      [sys.executable, "-m", "gpt4v_jax.main", f"--config={ROOT}/configs/shapes_caption.py:tiny",
       f"--config.data.data_dir={tiny_data_dir}", f"--workdir={tmp_path / 'two'}", *FLAGS,
       "--distributed", f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
       f"--process_id={i}"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True) for i in range(2)]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  assert "Mesh {'data': 8, 'fsdp': 1, 'tensor': 1} over 8 cpu devices, 2 process(es)" in outs[0][0]
  assert "loss=" not in outs[1][0]  # Only process 0 logs.

  # The same global batches (each process made its rows of them) give the same losses.
  np.testing.assert_allclose(_losses(outs[0][0]), _losses(one.stdout), rtol=1e-4)
  assert len(_losses(one.stdout)) == 3
  # One checkpoint per step, which this single process restores to the one-process params.
  assert sorted(os.listdir(tmp_path / "two" / "checkpoints")) == ["3", "6"]
  step, params = _restore_params(tmp_path / "two")
  ref_step, ref_params = _restore_params(one_dir)
  assert step == ref_step == 6
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=5e-5),
               params, ref_params)
