"""`python -m gpt4v_jax.main` with one fault injected, for tests/test_fault_tolerance.py.

  python tests/fault_injection.py FAULT STEP --config=... --workdir=...

FAULT is one of
  none              no fault (one process of a multi-process run whose other one has one)
  kill_during_save  SIGKILL while checkpoint STEP is being written (in Orbax's background
                    thread, after the train loop moved on)
  SIGTERM, SIGINT,  that signal, sent to this process while step STEP's metrics are reported
  SIGKILL           (which happens during step STEP + 1)
  nan_batch         the STEP-th training batch of this process gets NaN images
The faults are patched in from outside; the package has no test hooks.

With RECORD_DIR set, each process also appends to RECORD_DIR/process_<index>.jsonl one line
per training step ({"batch": a hash of each of its rows}) and one per file of the workdir it
opens for writing outside checkpoints/ ({"write": path}): which examples a run saw, and who
wrote what.
"""
import builtins
import hashlib
import json
import os
import signal
import sys

import numpy as np


def _kill_during_save(step: int) -> None:
  # Orbax writes the data item (grain's handler) in its background thread, after the save
  # call returned and while the arrays are being written: dying here leaves a partial save.
  import grain
  save = grain.checkpoint.CheckpointHandler.save

  def die_while_saving(self, directory, *args, **kwargs):
    step_dir = os.path.basename(os.path.dirname(os.fspath(directory)))
    if step_dir.split(".")[0] == str(step):
      os.kill(os.getpid(), signal.SIGKILL)
    return save(self, directory, *args, **kwargs)

  grain.checkpoint.CheckpointHandler.save = die_while_saving


def _signal_at_report(signum: int, step: int) -> None:
  from gpt4v_jax import metric_writer
  scalars = metric_writer.MetricWriter.scalars

  def scalars_then_signal(self, s, values, prefix=""):
    scalars(self, s, values, prefix)
    if prefix == "train/" and s == step:
      os.kill(os.getpid(), signum)

  metric_writer.MetricWriter.scalars = scalars_then_signal


def _nan_batch(step: int) -> None:
  from gpt4v_jax.data import pipeline
  train_dataset = pipeline.train_dataset
  count = 0

  def poison(batch):
    nonlocal count
    count += 1
    if count == step:
      batch = dict(batch, image=np.full_like(batch["image"], np.nan))
    return batch

  pipeline.train_dataset = lambda *a, **k: train_dataset(*a, **k).map(poison)


def _record(directory: str) -> None:
  from gpt4v_jax import sharding
  to_global, open_ = sharding.to_global, builtins.open
  # From the flag, not JAX: asking JAX before main's jax.distributed.initialize would start it.
  flag = lambda name, default: next(
      (a.split("=", 1)[1] for a in sys.argv if a.startswith(f"--{name}=")), default)
  index, workdir = flag("process_id", "0"), os.path.abspath(flag("workdir", ""))
  checkpoints = os.path.join(workdir, "checkpoints")  # Also checkpoints_unreadable.

  def append(entry: dict) -> None:
    with open_(os.path.join(directory, f"process_{index}.jsonl"), "a") as f:
      f.write(json.dumps(entry) + "\n")

  def to_global_recorded(local_batch, batch_sharding):
    if "skipped" in local_batch:  # A training batch (evaluation batches have no such field).
      rows = len(local_batch["skipped"])
      append({"batch": [hashlib.sha1(b"".join(
          local_batch[k][i].tobytes() for k in sorted(local_batch))).hexdigest()[:16]
                        for i in range(rows)]})
    return to_global(local_batch, batch_sharding)

  def open_recorded(file, mode="r", *args, **kwargs):
    if isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+"):
      path = os.path.abspath(os.fspath(file))
      if path.startswith(workdir + os.sep) and not path.startswith(checkpoints):
        append({"write": path})
    return open_(file, mode, *args, **kwargs)

  sharding.to_global = to_global_recorded
  builtins.open = open_recorded


def main():
  fault, step = sys.argv[1], int(sys.argv[2])
  del sys.argv[1:3]  # The rest are main's flags.
  if fault == "none":
    pass
  elif fault == "kill_during_save":
    _kill_during_save(step)
  elif fault in ("SIGTERM", "SIGINT", "SIGKILL"):
    _signal_at_report(signal.Signals[fault], step)
  elif fault == "nan_batch":
    _nan_batch(step)
  else:
    raise ValueError(f"unknown fault {fault!r}")
  if os.environ.get("RECORD_DIR"):
    _record(os.environ["RECORD_DIR"])
  from gpt4v_jax import main as gpt4v_main
  gpt4v_main.run()


if __name__ == "__main__":
  main()
