"""Multi-host: real processes (`jax.distributed` over 127.0.0.1, gloo collectives, 4 CPU devices
each; one process alone has 8) train as one process does, evaluate alike with one writer, and
survive what pods do to them: a signal to one process, a killed process, a restart on another
number of processes.

Every process runs through tests/fault_injection.py, which records the rows of each training
batch a process made and the files it wrote (RECORD_DIR): the examples a run saw are checked
against an uninterrupted run's, row by row.
"""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import flax.linen as nn
import jax
import numpy as np
import pytest

from conftest import COLLECTIVE_TIMEOUTS, FAST_COMPILE, ROOT
from gpt4v_jax import runs, sharding
from gpt4v_jax.data import datasets
from gpt4v_jax.evals.evaluator import evaluate_split

# The tiny config: 6 steps of 16 rows, checkpoints at 3 and 6, final evals of 16 test images.
TINY = f"{ROOT}/configs/shapes_caption.py:tiny"
NO_EVALS = ("--config.evals.every=0", "--config.evals.final_splits=()")
HEARTBEAT = 10  # Seconds: the tests' dead-process timeout (main's default is 30).


def _launch(workdir, data_dir, record_dir, *, processes: int, faults=None, flags=()):
  """Starts one run of main on `processes` processes (each through fault_injection.py,
  faults[i] = (FAULT, STEP) for process i); returns the Popen objects."""
  faults = faults or {}
  env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu", "RECORD_DIR": str(record_dir),
         "XLA_FLAGS": f"--xla_force_host_platform_device_count={8 // processes} "
                      f"{COLLECTIVE_TIMEOUTS} {FAST_COMPILE}"}
  os.makedirs(record_dir, exist_ok=True)
  distributed = []
  if processes > 1:
    with socket.socket() as s:  # A free port for the coordinator.
      s.bind(("127.0.0.1", 0))
      port = s.getsockname()[1]
    distributed = ["--distributed", f"--coordinator_address=127.0.0.1:{port}",
                   f"--num_processes={processes}", f"--heartbeat_timeout={HEARTBEAT}"]
  return [subprocess.Popen(
      [sys.executable, os.path.join(ROOT, "tests", "fault_injection.py"),
       *map(str, faults.get(i, ("none", 0))), f"--config={TINY}",
       f"--config.data.data_dir={data_dir}", f"--workdir={workdir}", *flags, *distributed,
       *([f"--process_id={i}"] if processes > 1 else [])],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(processes)]


def _finish(procs, timeout=600) -> list[tuple[int, str, str]]:
  """(returncode, stdout, stderr) of each process, once all have exited."""
  outs = [p.communicate(timeout=timeout) for p in procs]
  return [(p.returncode, out, err) for p, (out, err) in zip(procs, outs)]


def _records(record_dir) -> dict[int, list[dict]]:
  """{process index: its recorded lines}."""
  found = {}
  for name in os.listdir(record_dir):
    with open(os.path.join(record_dir, name)) as f:
      found[int(re.fullmatch(r"process_(\d+)\.jsonl", name).group(1))] = [
          json.loads(line) for line in f]
  return found


def _global_batches(record_dir) -> list[list[str]]:
  """Each step's global batch as row hashes: the processes' local rows side by side."""
  per_process = [[e["batch"] for e in lines if "batch" in e]
                 for _, lines in sorted(_records(record_dir).items())]
  assert len({len(b) for b in per_process}) == 1, "processes trained different numbers of steps"
  return [sum(rows, []) for rows in zip(*per_process)]


def _losses(stdout: str) -> list[float]:
  return [float(x) for x in re.findall(r"^step \d+/\d+ loss=([\d.]+)", stdout, re.M)]


def _params(workdir):
  """The params of a run's newest checkpoint (step 6; checked against its checksums), restored
  by this process."""
  _, _, state, step = runs.restore_run(str(workdir), "Run")
  assert step == 6
  return jax.device_get(state.params)


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory, tiny_data_dir, tiny_run):
  """(outputs, workdir, record dir) of an uninterrupted two-process run of the tiny config,
  final evals included; shared, read only."""
  assert tiny_run[0].returncode == 0  # The tiny dataset is built.
  root = tmp_path_factory.mktemp("two")
  outs = _finish(_launch(root / "run", tiny_data_dir, root / "record", processes=2))
  return outs, root / "run", root / "record"


def test_two_processes_train_evaluate_and_write_as_one(two_process_run, tiny_run):
  outs, workdir, record = two_process_run
  for code, _, err in outs:
    assert code == 0, err[-3000:]
  (_, out0, _), (_, out1, _) = outs
  assert "Mesh {'data': 8, 'fsdp': 1, 'tensor': 1} over 8 cpu devices, 2 process(es)" in out0
  # Only process 0 logs (gloo, not us, says how its ranks connected).
  assert [line for line in out1.splitlines() if not line.startswith("[Gloo]")] == []
  # The same global batches (each process made its rows of them) give the same losses.
  one, one_dir = tiny_run
  np.testing.assert_allclose(_losses(out0), _losses(one.stdout), rtol=1e-4)
  assert len(_losses(out0)) == 3
  # One checkpoint per step, which one process restores to the one-process params.
  assert sorted(os.listdir(workdir / "checkpoints")) == ["3", "6"]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=5e-5),
               _params(workdir), _params(one_dir))

  # Only process 0 wrote logs, events, results and eval JSON, each file once.
  writes = {p: [e["write"] for e in lines if "write" in e]
            for p, lines in _records(record).items()}
  assert writes.get(1, []) == []
  assert len(writes[0]) == len(set(writes[0])), writes[0]
  assert {os.path.relpath(w, workdir).split(os.sep)[0] for w in writes[0]} >= {
      "config.json.tmp", "results.json.tmp", "eval_test_step6.json.tmp", "tb"}

  # The two processes' sharded evaluation is the one-process evaluation of the same params.
  with open(workdir / "eval_test_step6.json") as f:
    saved = json.load(f)
  metrics, records = _evaluate_in_one_process(workdir)
  assert records == saved["predictions"]
  assert {k: v for k, v in metrics.items() if k != "seconds"} == {
      k: v for k, v in saved["metrics"].items() if k != "seconds"}


def _evaluate_in_one_process(workdir):
  """The final evaluation of the run's step 6 by this process (8 data-parallel devices)."""
  config, model, state, _ = runs.restore_run(str(workdir), "Run")
  mesh = sharding.make_mesh(config.mesh)
  with jax.set_mesh(mesh), nn.logical_axis_rules(config.sharding_rules):
    return evaluate_split(objective=runs.make_objective(config), model=model,
                          params=state.params, model_state=state.model_state,
                          source=datasets.open_splits(config.data)["test"], split="test",
                          num_examples=config.evals.final_num_examples,
                          batch_size=config.evals.batch_size, mesh=mesh)


def test_signal_to_one_process_stops_all_and_runs_move_between_process_counts(
    tmp_path, tiny_data_dir, two_process_run):
  workdir, record = tmp_path / "run", tmp_path / "record"
  flags = (*NO_EVALS, "--config.train.log_every=1")  # A report, where signals are sent, a step.
  # One process, stopped by SIGTERM while step 1 is reported (during step 2): saves step 2.
  [(code, out, err)] = _finish(_launch(workdir, tiny_data_dir, record, processes=1,
                                       faults={0: ("SIGTERM", 1)}, flags=flags))
  assert code == 128 + signal.SIGTERM, err[-3000:]
  assert "stopped after step 2" in out

  # Resumed on two processes; SIGTERM reaches process 1 alone while step 3 is reported
  # (during step 4). Its vote is read one step later: both save step 5, exit alike and say
  # how to resume.
  outs = _finish(_launch(workdir, tiny_data_dir, record, processes=2,
                         faults={1: ("SIGTERM", 3)}, flags=flags))
  for code, out, err in outs:
    assert code == 128 + signal.SIGTERM, err[-3000:]
    assert "SIGTERM received: stopped after step 5" in out
    assert "Resume with the same command:" in out
  assert "saved by 1 process(es), continues on 2: every example follows on exactly" in outs[0][1]
  assert sorted(os.listdir(workdir / "checkpoints")) == ["3", "5"]  # The newest two kept.

  # Resumed on one process to the end, on another mesh: FSDP over 4 x 2-way data.
  [(code, out, err)] = _finish(_launch(
      workdir, tiny_data_dir, record, processes=1,
      flags=(*flags, "--config.mesh.data=2", "--config.mesh.fsdp=4")))
  assert code == 0, err[-3000:]
  assert "Mesh {'data': 2, 'fsdp': 4, 'tensor': 1}" in out
  assert "Resumed from step 5" in out and "saved by 2 process(es), continues on 1" in out

  # Steps 1-2 on one process, 3-5 on two, 6 on one (another mesh): exactly the uninterrupted
  # run's rows, step by step; and its params.
  steps = [e["batch"] for e in _records(record)[0] if "batch" in e]  # One process: global.
  two_steps = [e["batch"] for e in _records(record).get(1, []) if "batch" in e]
  assert len(steps) == 2 + 3 + 1 and len(two_steps) == 3
  got = steps[:2] + [a + b for a, b in zip(steps[2:5], two_steps)] + steps[5:]
  _, two_dir, two_record = two_process_run
  assert got == _global_batches(two_record)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=5e-5),
               _params(workdir), _params(two_dir))


def test_killed_process_stops_the_other_and_a_relaunch_resumes_bitwise(
    tmp_path, tiny_data_dir, two_process_run):
  workdir, record = tmp_path / "run", tmp_path / "record"
  # Process 1 killed (-9) while step 4 is reported, after step 3's checkpoint.
  procs = _launch(workdir, tiny_data_dir, record, processes=2, faults={1: ("SIGKILL", 4)},
                  flags=NO_EVALS)
  procs[1].wait(timeout=600)
  killed = time.monotonic()
  [(code0, out0, err0), (code1, _, _)] = _finish(procs, timeout=HEARTBEAT + 50)
  waited = time.monotonic() - killed
  assert code1 == -signal.SIGKILL
  assert code0 != 0 and waited < HEARTBEAT + 50
  # JAX's coordination service names it and ends the process (SIGABRT).
  assert re.search(r"tasks are unhealthy \(stopped sending heartbeats\):\s+1\b", err0), err0[-3000:]
  assert "3" in os.listdir(workdir / "checkpoints")

  # The same command again: resumes from step 3 and ends with the uninterrupted run's params.
  outs = _finish(_launch(workdir, tiny_data_dir, record, processes=2, flags=NO_EVALS))
  for code, _, err in outs:
    assert code == 0, err[-3000:]
  assert "Resumed from step 3" in outs[0][1]
  _, two_dir, _ = two_process_run
  jax.tree.map(np.testing.assert_array_equal, _params(workdir), _params(two_dir))
