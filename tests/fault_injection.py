"""`python -m gpt4v_jax.main` with one fault injected, for tests/test_fault_tolerance.py.

  python tests/fault_injection.py FAULT STEP --config=... --workdir=...

FAULT is one of
  nan_batch         the STEP-th training batch of this process gets NaN images
The faults are patched in from outside; the package has no test hooks.
"""
import sys

import numpy as np
from absl import app


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
  if fault == "nan_batch":
    _nan_batch(step)
  else:
    raise ValueError(f"unknown fault {fault!r}")
  from gpt4v_jax import main as gpt4v_main
  app.run(gpt4v_main.main)


if __name__ == "__main__":
  main()
