"""Visual-similarity search: exact top-k by inner product in JAX, and an index of images.

Build an index of a folder of images with a trained model's image embeddings, save it, and find
each query image's nearest neighbours by cosine similarity:

  from gpt4v_jax.model import Model
  from gpt4v_jax.similarity import Index

  model = Model.from_pretrained("models/shapes_caption")   # or a training workdir
  index = Index.from_folder(model.embed, "photos/", model="models/shapes_caption")
  index.save("photos_index/")                               # embeddings.npy + index.json
  index = Index.load("photos_index/")                       # memory-mapped: search streams it
  for hits in index.search(model.embed(["query.png"]), k=5):
    for path, score in hits:                                # best first
      print(f"{score:.4f} {path}")

`top_k(queries, keys, k)` is the exact search underneath: `keys` [n, d] stays on the host (a
numpy array or a memory-mapped .npy larger than device memory) and is streamed to the devices
in fixed-size chunks, each split by rows over the mesh, so n is bounded by disk, not by HBM.
`Index.search(..., backend="faiss")` hands the same search to FAISS (`pip install faiss-cpu`),
exhaustive (IndexFlatIP) or, with faiss_index="hnsw", approximate (IndexHNSWFlat) for millions
of images. The command line is `python -m gpt4v_jax.similar`.

Shapes: q queries, n indexed rows, d embedding width, k results per query; C rows per chunk.
"""
import functools
import json
import os
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from gpt4v_jax.metric_writer import log

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp")
EMBEDDINGS_FILE = "embeddings.npy"
INDEX_FILE = "index.json"
# Row indices live in int32 on the devices (jax's default without x64); the initial "no result
# yet" entries carry this index, so they lose every tie against a real row.
_NO_ROW = np.iinfo(np.int32).max


# ----------------------------------------------------------------------------
# Exact top-k, streamed from the host.
# ----------------------------------------------------------------------------

def top_k(queries, keys, k: int, *, mesh: Mesh | None = None,
          chunk_rows: int = 65536) -> tuple[np.ndarray, np.ndarray]:
  """The exact k largest inner products of each query with the rows of `keys`, best first.

  Args:
    queries: [q, d] array (numpy or jax); computed in float32.
    keys: [n, d] numpy array, np.memmap, or anything with .shape and row slicing
      (`keys[a:b]` -> [b - a, d]); never loaded whole: read `chunk_rows` rows at a time.
    k: results per query, 1 <= k <= n.
    mesh: the devices that score each chunk, its rows split over all the mesh's axes
      (default: every device, one axis).
    chunk_rows: rows per chunk (rounded up to a multiple of the device count). Every chunk,
      the last one padded, has the same shape, so the scoring step compiles once. Each
      device holds q * chunk_rows / devices float32 scores at a time.

  Returns:
    (scores float32 [q, k], indices int64 [q, k]): row i of `keys` scores queries @ keys[i]
    (float32, precision HIGHEST). Equal scores come in increasing row index, so results are
    deterministic whatever the chunking and device count. Padding rows are never returned.
    NaN scores (from NaN embeddings) have no defined rank.

  Raises:
    ValueError: k out of [1, n], an empty `keys`, mismatched widths, or non-2-D inputs.
  """
  queries = jnp.asarray(queries, jnp.float32)
  if queries.ndim != 2 or len(keys.shape) != 2:
    raise ValueError(f"top_k: queries {tuple(queries.shape)} and keys {tuple(keys.shape)} "
                     "must both be 2-D: [q, d] and [n, d].")
  (q, d), (n, d_keys) = queries.shape, keys.shape
  if n == 0:
    raise ValueError("top_k: the index is empty (keys has 0 rows): add rows before searching.")
  if d != d_keys:
    raise ValueError(f"top_k: width mismatch: queries are [{q}, {d}] but keys are [{n}, "
                     f"{d_keys}]; embed queries and keys with the same model.")
  if not isinstance(k, (int, np.integer)) or not 1 <= k <= n:
    raise ValueError(f"top_k: k={k} must be an integer in [1, n={n}] (the number of keys).")
  if chunk_rows < 1:
    raise ValueError(f"top_k: chunk_rows={chunk_rows} must be >= 1.")
  if n >= _NO_ROW:
    raise ValueError(f"top_k: {n} keys is more than int32 row indices hold; split the index.")
  k = int(k)
  if q == 0:
    return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
  mesh = mesh if mesh is not None else Mesh(np.array(jax.devices()), ("rows",))
  devices = mesh.devices.size
  rows = -(-min(chunk_rows, n) // devices) * devices  # C: a multiple of the device count.
  chunk_sharding = NamedSharding(mesh, P(mesh.axis_names, None))
  step = _chunk_step(mesh, k, min(k, rows // devices))
  # Its own mesh, also where a caller's (the train loop's evaluation) is set.
  with jax.set_mesh(mesh):
    queries = jax.device_put(queries, NamedSharding(mesh, P()))
    best = (jax.device_put(np.full((q, k), -np.inf, np.float32), NamedSharding(mesh, P())),
            jax.device_put(np.full((q, k), _NO_ROW, np.int32), NamedSharding(mesh, P())))
    for start in range(0, n, rows):
      # Each device reads only its own rows of the chunk (rows past n are zeros, masked
      # below); dispatch is asynchronous, so reading the next chunk overlaps scoring this one.
      chunk = jax.make_array_from_callback(
          (rows, d), chunk_sharding, functools.partial(_read_rows, keys, start, n, rows, d))
      best = step(*best, queries, chunk, np.int32(start), np.int32(n))
    scores, indices = (np.asarray(x) for x in best)
  assert (indices < n).all(), "top_k returned a padding row"  # Impossible while k <= n.
  return scores, indices.astype(np.int64)


def _read_rows(keys, start: int, n: int, rows: int, d: int,
               index: tuple[slice, ...]) -> np.ndarray:
  """Rows `index[0]` of the `rows`-row chunk starting at key `start`: float32 [shard rows, d],
  zeros past n."""
  lo, hi = index[0].indices(rows)[:2]  # The shard's rows within the chunk.
  out = np.zeros((hi - lo, d), np.float32)
  real = max(0, min(start + hi, n) - (start + lo))
  if real:
    out[:real] = np.asarray(keys[start + lo:start + lo + real], np.float32)
  return out


@functools.lru_cache(maxsize=32)
def _chunk_step(mesh: Mesh, k: int, k_local: int) -> Callable:
  """The jitted step (best scores [q, k], best indices [q, k], queries [q, d], chunk [C, d],
  start, n) -> new (best scores, best indices): every device scores its C / devices rows and
  keeps its own top k_local; then the candidates of all devices and the running best merge."""
  axes = mesh.axis_names

  def local(queries, chunk, start, n):
    """queries [q, d], this device's chunk rows [C / devices, d] -> top k_local [q, k_local]."""
    scores = jnp.matmul(queries, chunk.T, precision=jax.lax.Precision.HIGHEST,
                        preferred_element_type=jnp.float32)
    first = start + jax.lax.axis_index(axes) * chunk.shape[0]
    rows = first + jnp.arange(chunk.shape[0], dtype=jnp.int32)
    scores = jnp.where(rows[None, :] < n, scores, -jnp.inf)  # Padding rows never win...
    top, at = jax.lax.top_k(scores, k_local)  # Ties: lower index first (documented).
    return top, rows[at]  # ...and lose ties with real rows: their indices are >= n.

  candidates = jax.shard_map(local, mesh=mesh, in_specs=(P(), P(axes, None), P(), P()),
                             out_specs=(P(None, axes), P(None, axes)))

  @jax.jit
  def step(best_scores, best_rows, queries, chunk, start, n):
    top, rows = candidates(queries, chunk, start, n)
    scores = jnp.concatenate([best_scores, top], axis=1)  # [q, k + devices * k_local]
    rows = jnp.concatenate([best_rows, rows], axis=1)
    # Sort by (score descending, row ascending): the tie order holds across chunks and
    # devices, and "no result yet" entries (-inf, _NO_ROW) come after any real row.
    # (Negated, 0.0 and -0.0 would differ in the sort's total order: both become 0.0.)
    neg = jnp.where(scores == 0, 0.0, -scores)
    _, rows, scores = jax.lax.sort((neg, rows, scores), dimension=1, num_keys=2)
    return scores[:, :k], rows[:, :k]

  return step


# ----------------------------------------------------------------------------
# An index of images.
# ----------------------------------------------------------------------------

def normalize(x: np.ndarray) -> np.ndarray:
  """Rows of float32 [n, d] scaled to unit L2 norm (all-zero rows stay zero): [n, d]."""
  x = np.asarray(x, np.float32)
  norms = np.linalg.norm(x, axis=-1, keepdims=True)
  return x / np.maximum(norms, np.float32(1e-12))


def list_images(folder: str) -> list[str]:
  """The image files under `folder`, recursively, sorted: [os.path.join(folder, relative)]."""
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"{folder}: no such directory (expected a folder of images).")
  found = []
  for root, dirs, files in os.walk(folder):
    dirs.sort()
    found += [os.path.join(root, f) for f in files
              if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS]
  return sorted(found)


class Index:
  """Unit-norm image embeddings float32 [n, d] and their ids (n strs, e.g. image paths).

  Scores are cosine similarities: rows are normalised when built, queries when searched.
  `embeddings` may be a np.memmap (Index.load), which search streams from disk.
  """

  def __init__(self, embeddings: np.ndarray, ids: Sequence[str], model: str = ""):
    """embeddings: float32 [n, d] with unit-norm rows (see `normalize`); ids: n strs; model:
    free-form text naming the embedding model (saved in index.json)."""
    if len(embeddings.shape) != 2:
      raise ValueError(f"Index: embeddings must be [n, d], got {tuple(embeddings.shape)}.")
    if len(ids) != embeddings.shape[0]:
      raise ValueError(f"Index: {len(ids)} ids for {embeddings.shape[0]} embeddings.")
    self.embeddings, self.ids, self.model = embeddings, [str(i) for i in ids], model
    self._faiss = {}  # faiss_index kind -> the FAISS index, built on first use.

  def __len__(self) -> int:
    return self.embeddings.shape[0]

  @property
  def dim(self) -> int:
    return self.embeddings.shape[1]

  @classmethod
  def build(cls, embed: Callable[[list], np.ndarray], images: Sequence[Any], *,
            batch_size: int = 256, ids: Sequence[str] | None = None, model: str = "",
            on_bad: str = "raise") -> "Index":
    """Embeds `images` (n paths, bytes, PIL images, arrays: whatever `embed` takes) in batches.

    Args:
      embed: list of b images -> float32 [b, d], e.g. `Model.from_pretrained(dir).embed`.
      ids: n strs (default: each image's path if it is one, else its position).
      on_bad: "raise", or "skip": an image `embed` rejects with a ValueError (such as
        gpt4v_jax.data.pipeline.BadExample) is logged and left out of the index.
    """
    if on_bad not in ("raise", "skip"):
      raise ValueError(f"Index.build: on_bad={on_bad!r} must be 'raise' or 'skip'.")
    if batch_size < 1:
      raise ValueError(f"Index.build: batch_size={batch_size} must be >= 1.")
    images = list(images)
    if ids is None:
      ids = [os.fspath(x) if isinstance(x, (str, os.PathLike)) else str(i)
             for i, x in enumerate(images)]
    if len(ids) != len(images):
      raise ValueError(f"Index.build: {len(ids)} ids for {len(images)} images.")
    if not images:
      raise ValueError("Index.build: no images to index.")
    parts, kept = [], []
    begin = last_log = time.perf_counter()
    for start in range(0, len(images), batch_size):
      batch = list(range(start, min(len(images), start + batch_size)))
      try:
        vectors, good = _embed(embed, [images[i] for i in batch]), batch
      except ValueError:
        if on_bad == "raise":
          raise
        vectors, good = _embed_one_by_one(embed, images, ids, batch)
      parts.append(vectors)
      kept += [ids[i] for i in good]
      now = time.perf_counter()
      done = batch[-1] + 1
      if now - last_log > 10 or (done == len(images) and len(images) > batch_size):
        log(f"similarity: embedded {done}/{len(images)} images, "
            f"{done / max(now - begin, 1e-9):.1f} img/s")
        last_log = now
    if not kept:
      raise ValueError(f"Index.build: none of the {len(images)} images could be embedded.")
    if len(kept) < len(images):
      log(f"similarity: skipped {len(images) - len(kept)} of {len(images)} images "
          "(not readable images).")
    return cls(normalize(np.concatenate([p for p in parts if len(p)])), kept, model)

  @classmethod
  def from_folder(cls, embed: Callable[[list], np.ndarray], folder: str, *,
                  batch_size: int = 256, model: str = "", on_bad: str = "raise") -> "Index":
    """`build` over the image files under `folder` (recursive, sorted, by extension: see
    IMAGE_EXTENSIONS, any case); ids are their paths (os.path.join(folder, relative))."""
    paths = list_images(folder)
    if not paths:
      raise ValueError(f"{folder}: no image files ({', '.join(IMAGE_EXTENSIONS)}) in it.")
    return cls.build(embed, paths, batch_size=batch_size, model=model, on_bad=on_bad)

  def save(self, directory: str, model: str | None = None) -> None:
    """Writes `directory`/embeddings.npy (float32 [n, d]) and index.json ({ids, dim, count,
    model}); `model` (default: the index's) is free-form text naming the embedding model."""
    os.makedirs(directory, exist_ok=True)
    meta = dict(ids=self.ids, dim=self.dim, count=len(self),
                model=self.model if model is None else model)
    # Written under temporary names and renamed, so a crash leaves no half-written index.
    tmp = os.path.join(directory, EMBEDDINGS_FILE + ".tmp.npy")
    np.save(tmp, np.asarray(self.embeddings, np.float32))
    os.replace(tmp, os.path.join(directory, EMBEDDINGS_FILE))
    with open(os.path.join(directory, INDEX_FILE + ".tmp"), "w", encoding="utf-8") as f:
      json.dump(meta, f)
    os.replace(os.path.join(directory, INDEX_FILE + ".tmp"), os.path.join(directory, INDEX_FILE))

  @classmethod
  def load(cls, directory: str, mmap: bool = True) -> "Index":
    """The index `save` wrote to `directory`; with mmap, embeddings.npy is memory-mapped
    (read-only) rather than read, and search streams it from disk."""
    paths = [os.path.join(directory, f) for f in (INDEX_FILE, EMBEDDINGS_FILE)]
    for path in paths:
      if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: missing; {directory} is not a saved index "
                                "(Index.save or python -m gpt4v_jax.similar --save_index).")
    with open(paths[0], encoding="utf-8") as f:
      meta = json.load(f)
    embeddings = np.load(paths[1], mmap_mode="r" if mmap else None)
    if embeddings.shape != (meta["count"], meta["dim"]) or len(meta["ids"]) != meta["count"]:
      raise ValueError(f"{directory}: embeddings.npy is {embeddings.shape} but index.json says "
                       f"[{meta['count']}, {meta['dim']}] with {len(meta['ids'])} ids: "
                       "rebuild the index.")
    return cls(embeddings, meta["ids"], meta.get("model", ""))

  def search(self, query_embeddings, k: int, *, mesh: Mesh | None = None,
             backend: str = "exact", faiss_index: str = "flat",
             chunk_rows: int = 65536) -> list[list[tuple[str, float]]]:
    """The k indexed images most similar (cosine) to each query, best first.

    Args:
      query_embeddings: [q, d] (normalised here).
      backend: "exact" (top_k on `mesh`; ties: lower row first) or "faiss".
      faiss_index: with backend="faiss": "flat" (exact, IndexFlatIP) or "hnsw" (approximate,
        IndexHNSWFlat by inner product: fast for millions of images, may miss some).
    Returns:
      q lists of (id, score) pairs; k of them (fewer only from an approximate FAISS index).
    """
    queries = normalize(query_embeddings)
    if backend == "exact":
      scores, rows = top_k(queries, self.embeddings, k, mesh=mesh, chunk_rows=chunk_rows)
    elif backend == "faiss":
      if queries.ndim != 2 or queries.shape[1] != self.dim:
        raise ValueError(f"search: queries are {queries.shape}, the index is [{len(self)}, "
                         f"{self.dim}]; embed queries with the index's model.")
      if not 1 <= k <= len(self):
        raise ValueError(f"search: k={k} must be in [1, {len(self)}] (the index's size).")
      scores, rows = self._faiss_index(faiss_index).search(np.ascontiguousarray(queries), k)
    else:
      raise ValueError(f"search: backend={backend!r} must be 'exact' or 'faiss'.")
    return [[(self.ids[r], float(s)) for s, r in zip(row_scores, row_ids) if r >= 0]
            for row_scores, row_ids in zip(scores, rows)]  # FAISS pads a short list with -1.

  def _faiss_index(self, kind: str):
    """The FAISS index of `kind` ("flat" or "hnsw") over the embeddings, built once."""
    if kind not in ("flat", "hnsw"):
      raise ValueError(f"search: faiss_index={kind!r} must be 'flat' or 'hnsw'.")
    if kind not in self._faiss:
      try:
        import faiss  # Optional: only this backend needs it.
      except ImportError:
        raise ImportError("backend='faiss' needs the FAISS library: pip install faiss-cpu "
                          "(or use backend='exact').") from None
      if kind == "flat":
        index = faiss.IndexFlatIP(self.dim)
      else:
        index = faiss.IndexHNSWFlat(self.dim, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = 128  # Candidates per search: recall over speed.
      for start in range(0, len(self), 65536):  # A memmap is added a chunk at a time.
        index.add(np.ascontiguousarray(self.embeddings[start:start + 65536], np.float32))
      self._faiss[kind] = index
    return self._faiss[kind]


def _embed(embed: Callable, images: list) -> np.ndarray:
  """embed(images) checked to be [len(images), d]: float32 [b, d]."""
  vectors = np.asarray(embed(images), np.float32)
  if vectors.ndim != 2 or len(vectors) != len(images):
    raise TypeError(f"embed returned shape {vectors.shape} for {len(images)} images; it must "
                    "return [b, d] (one vector per image).")
  return vectors


def _embed_one_by_one(embed: Callable, images: list, ids: Sequence[str],
                      batch: list[int]) -> tuple[np.ndarray, list[int]]:
  """A batch `embed` rejected, image by image: (float32 [good, d], the good positions)."""
  vectors, good = [], []
  for i in batch:
    try:
      vectors.append(_embed(embed, [images[i]]))
      good.append(i)
    except ValueError as e:
      log(f"similarity: skipping {ids[i]}: {e}")
  return (np.concatenate(vectors) if vectors else np.zeros((0, 0), np.float32)), good
