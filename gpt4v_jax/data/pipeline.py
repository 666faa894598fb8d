"""grain input pipelines over TFDS array_record data sources (no TensorFlow).

Training: source -> seeded shuffle, reshuffled each epoch -> repeat -> preprocessing with a
per-index RNG -> this process's rows -> (threaded) -> drop bad examples -> batch. Every step is
index-based and seeded, so the iterator state (a few integers) is checkpointed with the model
and a resumed run sees exactly the batches an uninterrupted run would have seen. A mixture of
objectives zips one such stream per objective (`zip_datasets`): each batch holds a fixed
number of every objective's rows, each objective's at its own row length.

Bad examples (an image file that is missing or does not decode, an empty caption, ...) are
found by the objective's example function, which raises BadExample. With
`on_bad_example="skip"` they are dropped *before* batching, so the batch is refilled from the
next examples (same batch size, same order on every run); each kept row carries `skipped`, the
number of bad examples dropped just before it, so the train step can count them exactly.
"""
from typing import Any, Callable, Iterator

import grain
import numpy as np

ON_BAD_EXAMPLE = ("skip", "error")
# More bad examples in a row than this means the data, not an example, is broken.
MAX_CONSECUTIVE_BAD = 1000


class BadExample(ValueError):
  """An example the pipeline cannot use; skipped or fatal as `config.data.on_bad_example` says."""


def decode_text(value: bytes | str, what: str) -> str:
  """A text feature (utf-8 bytes as the data source returns it, or str) as str.

  Raises BadExample, naming it as `what`, for bytes that are not UTF-8 and for blank text.
  """
  try:
    text = value.decode("utf-8") if isinstance(value, bytes) else str(value)
  except UnicodeDecodeError as e:
    raise BadExample(f"{what} is not UTF-8 ({e})") from None
  if not text.strip():
    raise BadExample(f"empty {what}")
  return text


class _Bad:
  """Stands in for a bad example between the threaded map and the dropping step."""

  def __init__(self, reason: str):
    self.reason = reason


def _example_error(example: dict, e: BadExample) -> BadExample:
  return BadExample(f"Bad example (id={example.get('id', '?')}): {e}. Set "
                    "config.data.on_bad_example='skip' to skip such examples.")


def _checked(example_fn: Callable[[dict, np.random.Generator], dict], on_bad_example: str):
  """example_fn, with BadExample turned into a _Bad marker ("skip") or a clear error."""

  def fn(example: dict, rng: np.random.Generator) -> dict | _Bad:
    try:
      return example_fn(example, rng)
    except BadExample as e:
      if on_bad_example == "skip":
        return _Bad(str(e))
      raise _example_error(example, e) from None

  return fn


class _ProcessRows(grain.MapDataset):
  """Process `index`'s rows of each global batch of `parent`, so the processes' local batches
  side by side are the one-process run's global batch: local element j is parent element
  (j // local) * global + index * local + j % local. Elements are made lazily, so a process
  decodes only its own rows. (A dropped bad example shifts only its own process's rows.)"""

  def __init__(self, parent: grain.MapDataset, local_batch: int, count: int, index: int):
    super().__init__(parent)
    self._local, self._global, self._offset = local_batch, local_batch * count, index * local_batch

  def __len__(self) -> int:
    return len(self._parent) // (self._global // self._local)

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    batch, row = divmod(index, self._local)
    return self._parent[batch * self._global + self._offset + row]

  def __str__(self) -> str:
    return f"_ProcessRows(local={self._local}, global={self._global}, offset={self._offset})"


class _DropBadIterator(grain.DatasetIterator):
  """Yields the good rows, each with `skipped`: bad examples dropped since the previous one.

  Holds no state of its own (a row and its count come out of one `next`), so the parent's
  position is the whole iterator state and checkpoints resume exactly.
  """

  def __next__(self) -> dict:
    skipped = 0
    while isinstance(row := next(self._parent), _Bad):
      skipped += 1
      if skipped > MAX_CONSECUTIVE_BAD:
        raise BadExample(f"More than {MAX_CONSECUTIVE_BAD} bad training examples in a row "
                         f"(the last: {row.reason}); the dataset itself looks broken.")
    return dict(row, skipped=np.int32(skipped))

  def get_state(self) -> dict:
    return self._parent.get_state()

  def set_state(self, state: dict) -> None:
    self._parent.set_state(state)


class _DropBad(grain.IterDataset):

  def __iter__(self) -> _DropBadIterator:
    return _DropBadIterator(self._parent.__iter__())


def train_dataset(source: Any, example_fn: Callable[[dict, np.random.Generator], dict], *,
                  seed: int, local_batch_size: int, process_index: int, process_count: int,
                  num_threads: int, on_bad_example: str = "skip") -> grain.IterDataset:
  """Infinite iterator dataset of local batches: dict of [local_batch, ...] numpy arrays,
  example_fn's fields plus `skipped` int32 [local_batch] (see above)."""
  if on_bad_example not in ON_BAD_EXAMPLE:
    raise ValueError(f"on_bad_example={on_bad_example!r}: expected one of {ON_BAD_EXAMPLE}.")
  ds = (grain.MapDataset.source(source).seed(seed).shuffle()  # New order every epoch.
        .repeat().random_map(_checked(example_fn, on_bad_example)))
  if process_count > 1:  # Every process walks the same global order and reads its rows.
    ds = _ProcessRows(ds, local_batch_size, process_count, process_index)
  # Threads keep about two batches of examples ready; dropping and batching are cheap.
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                            prefetch_buffer_size=2 * local_batch_size))
  return _DropBad(ds).batch(local_batch_size, drop_remainder=True)


def relayout_state(states: list[Any], global_batches: list[int],
                   process_count: int) -> tuple[Any, int]:
  """The iterator state of every process of this run, from the states `states[p]` that the
  processes p of a run on another number of processes (len(states) of them) saved.

  `global_batches` are the streams' global rows per batch, in the order of the state's streams
  (one stream, or a mixture's zipped parts). Every process walks the same global order, so a
  stream's position is one global batch index: the first batch no old process had started.
  With clean data every old process stopped at the same batch boundary and nothing is lost;
  after dropped bad examples a process may have read into the next batch, whose unread rows
  are left out rather than repeated. Returns (state, rows left out, summed over streams).
  """
  positions = [[] for _ in states]
  for p, state in enumerate(states):
    _map_streams(state, lambda i, k, p=p: positions[p].append(k))
  if len({len(found) for found in positions}) > 1 or len(positions[0]) != len(global_batches):
    raise ValueError(f"The saved data iterators hold {[len(f) for f in positions]} streams; "
                     f"this run's objective reads {len(global_batches)}.")
  starts, lost = [], 0
  for s, rows in enumerate(global_batches):
    old_local = rows // len(states)
    read = [found[s] for found in positions]
    batch = max(-(-k // old_local) for k in read)  # The first batch nobody started.
    lost += sum(batch * old_local - k for k in read)
    starts.append(batch * (rows // process_count))
  return _map_streams(states[0], lambda i, k: starts[i]), lost


def _map_streams(state: Any, fn: Callable[[int, int], Any]) -> Any:
  """`state` with the i-th stream's `{"next_index": k}` (depth first) as {"next_index":
  fn(i, k)}."""
  count = 0

  def walk(tree):
    nonlocal count
    if isinstance(tree, dict) and set(tree) == {"next_index"}:
      count += 1
      return {"next_index": fn(count - 1, int(tree["next_index"]))}
    if isinstance(tree, dict):
      return {k: walk(v) for k, v in tree.items()}
    if isinstance(tree, list):
      return [walk(v) for v in tree]
    return tree

  return walk(state)


def zip_datasets(datasets: dict[str, grain.IterDataset]) -> grain.IterDataset:
  """Batches of several streams side by side: each element is {name: that stream's batch}
  (grain's zip; its state is the streams' states)."""
  names = list(datasets)
  return grain.experimental.ZipIterDataset(list(datasets.values())).map(
      lambda batches: dict(zip(names, batches)))


def eval_batches(source: Any, items_fn: Callable[[dict], list[tuple[dict, Any]]], *,
                 num_examples: int, batch_size: int, on_bad_example: str = "skip"
                 ) -> Iterator[tuple[dict[str, np.ndarray], list[tuple[int, Any]]]]:
  """The eval items of the first `num_examples` of a split, in order, as fixed-size batches.

  `items_fn` turns one example into its items, (input row, info) pairs: one per example for
  captioning, one per question for VQA. An example whose items_fn raises BadExample is left
  out whole ("skip") or raises ("error"). The last batch is padded by repeating its final row
  so every batch has the same shape (one compilation). Yields (batch, [(index of the example
  in `source`, info) for each real row]).
  """
  rows, infos = [], []
  for i in range(min(num_examples, len(source))):
    example = source[i]
    try:
      items = items_fn(example)
    except BadExample as e:
      if on_bad_example == "skip":
        continue
      raise _example_error(example, e) from None
    for row, info in items:
      rows.append(row)
      infos.append((i, info))
      if len(rows) == batch_size:
        yield {k: np.stack([r[k] for r in rows]) for k in rows[0]}, infos
        rows, infos = [], []
  if rows:
    rows += [rows[-1]] * (batch_size - len(rows))
    yield {k: np.stack([r[k] for r in rows]) for k in rows[0]}, infos
