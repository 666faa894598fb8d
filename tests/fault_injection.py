"""`python -m gpt4v_jax.main` with one fault injected, for tests/test_fault_tolerance.py.

  python tests/fault_injection.py FAULT STEP --config=... --workdir=...

FAULT is one of
  kill_during_save  SIGKILL while checkpoint STEP is being written (in Orbax's background
                    thread, after the train loop moved on)
  SIGTERM, SIGINT   that signal, sent while step STEP's metrics are reported (which happens
                    during step STEP + 1)
  nan_batch         the STEP-th training batch of this process gets NaN images
The faults are patched in from outside; the package has no test hooks.
"""
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


def main():
  fault, step = sys.argv[1], int(sys.argv[2])
  del sys.argv[1:3]  # The rest are main's flags.
  if fault == "kill_during_save":
    _kill_during_save(step)
  elif fault in ("SIGTERM", "SIGINT"):
    _signal_at_report(signal.Signals[fault], step)
  elif fault == "nan_batch":
    _nan_batch(step)
  else:
    raise ValueError(f"unknown fault {fault!r}")
  from gpt4v_jax import main as gpt4v_main
  gpt4v_main.run()


if __name__ == "__main__":
  main()
