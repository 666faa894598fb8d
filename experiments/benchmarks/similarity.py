"""How fast `gpt4v_jax.similarity.top_k` finds the exact top 10 of an index of embeddings,
against numpy and FAISS, with the keys in host memory or memory-mapped from disk.

  python -m experiments.benchmarks.similarity [--sizes=100000,1000000] [--queries=64]
      [--chunk_rows=65536] [--dir=/tmp/gpt4v_similarity_bench]

The index is n random unit-norm float32 embeddings of width 128 (the default contrastive
model's embed_dim), the queries --queries more of them; every method returns k=10 results per
query. Rows per n:
  top_k host     top_k(queries, keys) with keys [n, d] a numpy array in host RAM;
  top_k memmap   the same keys saved once per run as <--dir>/keys_<n>.npy (removed after)
                 and passed as np.load(..., mmap_mode="r"): the file was just written and the
                 warm-up call reads all of it, so its pages are in the OS cache (warm: no
                 disk reads are timed);
  numpy          queries @ keys.T, then argpartition and a sort of the k survivors;
  faiss flat     FAISS IndexFlatIP (exhaustive), if faiss is importable;
  faiss hnsw     FAISS IndexHNSWFlat by inner product, M=32 and efSearch=128 as
                 `Index.search(backend="faiss", faiss_index="hnsw")` builds it (approximate).
build_s is the one-off cost before searching: writing the .npy (memmap), adding the keys to
the FAISS index; 0 where there is none. search_s is the median of --repeats calls after one
warm-up (which also compiles top_k's step), over all the queries at once. same_indices: the
[q, k] indices equal, in order, those of top_k host (top_k host itself is checked against
numpy); recall_at_10 is the fraction of those exact results a method found (what to read for
HNSW; random points on a 128-d sphere are HNSW's hard case, real embeddings cluster).

top_k splits each chunk's rows over every device jax sees: one CPU device on a plain run.
`XLA_FLAGS=--xla_force_host_platform_device_count=8` runs it over 8 host devices instead, which
exercises the sharded path but adds no cores. FAISS uses its own OpenMP threads (the notes
say how many).

Shapes: q queries, n keys, d=128, k=10.
"""
import os
import time

import numpy as np
from absl import app, flags

from experiments.benchmarks import common
from gpt4v_jax.similarity import normalize, top_k

_SIZES = flags.DEFINE_list("sizes", ["100000", "1000000"], "Index sizes n (rows).")
_QUERIES = flags.DEFINE_integer("queries", 64, "Queries per search call (q).")
_CHUNK_ROWS = flags.DEFINE_integer("chunk_rows", 65536, "top_k's chunk_rows.")
_DIR = flags.DEFINE_string("dir", "/tmp/gpt4v_similarity_bench",
                           "Where the memory-mapped keys_<n>.npy files are written.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls after the warm-up (median reported).")

DIM, K = 128, 10
HNSW_M, HNSW_EF_SEARCH = 32, 128  # As gpt4v_jax.similarity.Index builds its "hnsw" index.


def random_unit(rows: int, seed: int) -> np.ndarray:
  """float32 [rows, DIM], unit-norm rows in uniformly random directions."""
  return normalize(np.random.default_rng(seed).standard_normal((rows, DIM), np.float32))


def numpy_top_k(queries: np.ndarray, keys: np.ndarray, k: int) -> np.ndarray:
  """The exact reference: int64 [q, k] row indices by score descending, ties by lower row."""
  scores = queries @ keys.T  # [q, n]
  part = np.argpartition(-scores, k - 1, axis=1)[:, :k]  # The k best, unordered.
  part_scores = np.take_along_axis(scores, part, axis=1)
  order = np.lexsort((part, -part_scores), axis=1)  # Last key first: score, then row.
  return np.take_along_axis(part, order, axis=1).astype(np.int64)


def timed(fn, repeats: int) -> tuple[float, object]:
  """(median seconds of fn() after a warm-up, the last call's result)."""
  last = {}

  def call():
    last["out"] = fn()
    return last["out"]

  return common.time_calls(call, repeats=repeats), last["out"]


def recall(found: np.ndarray, exact: np.ndarray) -> float:
  """Fraction of the exact [q, k] results that appear in the same query's `found` row."""
  hits = sum(len(set(f.tolist()) & set(e.tolist())) for f, e in zip(found, exact))
  return hits / exact.size


def save_keys(keys: np.ndarray, path: str) -> None:
  """Writes keys as .npy under a temporary name, then renames (no half-written file left)."""
  tmp = path + ".tmp.npy"
  np.save(tmp, keys)
  os.replace(tmp, path)


def faiss_indexes(faiss) -> list:
  """[(method name, () -> an empty FAISS index over DIM-wide rows)]; [] without faiss."""
  if faiss is None:
    return []

  def hnsw():
    index = faiss.IndexHNSWFlat(DIM, HNSW_M, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efSearch = HNSW_EF_SEARCH
    return index

  return [("faiss flat", lambda: faiss.IndexFlatIP(DIM)),
          (f"faiss hnsw M={HNSW_M} ef={HNSW_EF_SEARCH}", hnsw)]


def main(argv):
  del argv
  try:
    import faiss  # Optional: the faiss rows are skipped without it.
  except ImportError:
    faiss = None
  queries = random_unit(_QUERIES.value, seed=1)
  os.makedirs(_DIR.value, exist_ok=True)
  rows = []

  def add(n, method, build_s, search_s, indices, exact):
    rows.append(dict(n=n, method=method, build_s=round(build_s, 3), search_s=search_s,
                     queries_per_s=round(len(queries) / search_s, 1),
                     same_indices=bool(np.array_equal(indices, exact)),
                     recall_at_10=round(recall(indices, exact), 4)))

  for n in map(int, _SIZES.value):
    keys = random_unit(n, seed=2)
    search = lambda keys_: top_k(queries, keys_, K, chunk_rows=_CHUNK_ROWS.value)[1]
    numpy_s, reference = timed(lambda: numpy_top_k(queries, keys, K), _REPEATS.value)
    host_s, exact = timed(lambda: search(keys), _REPEATS.value)
    add(n, "top_k host", 0.0, host_s, exact, reference)

    path = os.path.join(_DIR.value, f"keys_{n}.npy")
    t0 = time.perf_counter()
    save_keys(keys, path)
    write_s = time.perf_counter() - t0
    mapped = np.load(path, mmap_mode="r")
    mmap_s, found = timed(lambda: search(mapped), _REPEATS.value)
    add(n, "top_k memmap", write_s, mmap_s, found, exact)
    del mapped
    os.remove(path)  # Half a GB at n=1M: scratch, not kept.
    add(n, "numpy", 0.0, numpy_s, reference, exact)

    for method, make in faiss_indexes(faiss):
      index = make()
      t0 = time.perf_counter()
      index.add(keys)
      build_s = time.perf_counter() - t0
      search_s, found = timed(lambda: index.search(queries, K)[1], _REPEATS.value)
      add(n, method, build_s, search_s, found, exact)
      del index
    del keys

  notes = (f"random unit-norm float32 keys [n, {DIM}], {len(queries)} queries, k={K}, "
           f"chunk_rows={_CHUNK_ROWS.value}; search_s: median of {_REPEATS.value} after a "
           "warm-up; memmap: page cache warm (file just written), build_s = writing the .npy; "
           "same_indices/recall vs top_k host (top_k host vs numpy)")
  if faiss is None:
    notes += "; faiss not importable: no faiss rows"
  else:
    notes += f"; faiss {faiss.__version__} with {faiss.omp_get_max_threads()} OpenMP threads"
  common.report("similarity", rows, notes=notes)


if __name__ == "__main__":
  app.run(main)
