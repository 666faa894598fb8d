"""grain input pipelines over TFDS array_record data sources (no TensorFlow).

Training: source -> this process's shard -> seeded shuffle, reshuffled each epoch -> repeat
-> per-example preprocessing with a per-index RNG -> batch -> threaded prefetch. Every step is
index-based and seeded, so the iterator state (a few integers) is checkpointed with the model
and a resumed run sees exactly the batches an uninterrupted run would have seen.
"""
from typing import Any, Callable, Iterator

import grain
import numpy as np


def image_to_float(image: np.ndarray) -> np.ndarray:
  """uint8 [H, W, 3] -> float32 [H, W, 3] in [-1, 1]."""
  return np.asarray(image, np.float32) / 127.5 - 1.0


def train_dataset(source: Any, example_fn: Callable[[dict, np.random.Generator], dict], *,
                  seed: int, local_batch_size: int, process_index: int, process_count: int,
                  num_threads: int) -> grain.IterDataset:
  """Infinite iterator dataset of local batches: dict of [local_batch, ...] numpy arrays."""
  ds = grain.MapDataset.source(source)
  ds = ds[process_index::process_count]  # Each host reads a disjoint shard.
  ds = ds.seed(seed).shuffle().repeat()  # Deterministic; a new order every epoch.
  ds = ds.random_map(example_fn)
  ds = ds.batch(local_batch_size, drop_remainder=True)
  return ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=4))


def eval_batches(source: Any, example_fn: Callable[[dict], dict], *, num_examples: int,
                 batch_size: int) -> Iterator[tuple[dict[str, np.ndarray], list[dict]]]:
  """The first `num_examples` of a split, in order, as fixed-size batches.

  The last batch is padded by repeating its final example so every batch has the same shape
  (one compilation); the raw examples list says how many rows are real.
  """
  n = min(num_examples, len(source))
  for start in range(0, n, batch_size):
    raw = [source[i] for i in range(start, min(start + batch_size, n))]
    rows = [example_fn(ex) for ex in raw]
    rows += [rows[-1]] * (batch_size - len(rows))
    yield {k: np.stack([r[k] for r in rows]) for k in rows[0]}, raw
