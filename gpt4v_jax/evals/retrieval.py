"""Retrieval evals for a contrastive (CLIP / SigLIP-style) image-text objective.

Embeddings are taken as L2-normalised, so the score of a pair is their inner product (the
cosine). Every ranking is exact (`gpt4v_jax.similarity.top_k`: best first, ties to the lower
index), so a number does not depend on an approximate index. Letters: N images, M texts,
C classes, d the embedding width.

Metrics:
- `recall_at_k`: image-to-text (i2t) recall@k is the fraction of the N images whose k
  best-scoring texts contain a hit; text-to-image (t2i) recall@k the fraction of the M texts
  whose k best-scoring images contain a hit. Two notions of hit are reported:
  * strict (`strict_i2t_recall_at_{k}`, `strict_t2i_recall_at_{k}`): the paired one. For
    image i, a text j with text_image[j] == i; for text j, the image text_image[j]. This is
    the recall@k of the COCO / Flickr30k retrieval literature.
  * relaxed (`i2t_recall_at_{k}`, `t2i_recall_at_{k}`): the paired one OR any one that
    describes the same thing, i.e. image_keys[i] == text_keys[j] (a key of None matches
    nothing). When captions cannot tell some images apart (two shapes scenes with the same
    objects at different places get interchangeable captions), strict recall punishes a
    model for a choice no one could make; relaxed recall does not. Without keys, relaxed ==
    strict.
- `neighbour_precision`: image-to-image. Each image's k nearest OTHER images; precision@k is
  the fraction of them that share its key (same objects, for shapes), averaged over images.
  `..._max` is the best any ranking could score (an image with fewer than k same-key images
  cannot fill its k slots with them), the ceiling to read precision against.
- `zero_shot_accuracy`: classify each image as the class whose embedding (`class_embeddings`:
  CLIP's prompt ensembling, the mean of a class's normalised prompt embeddings) scores
  highest; accuracy over the images that have a label.
"""
from __future__ import annotations

from typing import Any, Hashable, Sequence

import jax
import numpy as np

from gpt4v_jax.similarity import top_k

# Key ids for "no key": different for images and texts, so a None never equals anything.
_NO_IMAGE_KEY, _NO_TEXT_KEY = -1, -2


def _check_embeddings(name: str, emb: Any, width: int | None = None) -> tuple[int, int]:
  """(rows, d) of a [rows, d] embedding matrix; clear errors for anything else."""
  shape = tuple(getattr(emb, "shape", ()))
  if len(shape) != 2 or shape[0] == 0:
    raise ValueError(f"{name} must be a non-empty [rows, d] array; got shape {shape}")
  if width is not None and shape[1] != width:
    raise ValueError(f"{name} has width {shape[1]} but the image embeddings have {width}: "
                     "both towers must project to the same embedding width")
  return shape


def _check_indices(name: str, values: Any, rows: int, low: int, high: int) -> np.ndarray:
  """int64 [rows] values in [low, high), or a clear error."""
  values = np.asarray(values)
  if values.shape != (rows,) or not np.issubdtype(values.dtype, np.integer):
    raise ValueError(f"{name} must be an int array of shape ({rows},); got {values.dtype} "
                     f"{values.shape}")
  if values.min() < low or values.max() >= high:
    raise ValueError(f"{name} must lie in [{low}, {high}); got [{values.min()}, {values.max()}]")
  return values.astype(np.int64)


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
  ks = tuple(int(k) for k in ks)
  if not ks or min(ks) < 1:
    raise ValueError(f"ks must be non-empty positive integers; got {ks}")
  return ks


def _ranked(queries: Any, keys: Any, k: int, mesh: Any) -> np.ndarray:
  """int64 [q, k]: each query's k best keys, best first (ties to the lower index)."""
  _, indices = top_k(queries, keys, k, mesh=mesh)
  return np.asarray(jax.device_get(indices), np.int64)


def _key_ids(image_keys: Sequence[Hashable] | None, text_keys: Sequence[Hashable] | None,
             n: int, m: int) -> tuple[np.ndarray, np.ndarray]:
  """Keys -> int ids ([N], [M]) that are equal exactly where the keys are equal and not None.

  Missing keys (None lists) are all None: then nothing matches and relaxed == strict.
  """
  image_keys = [None] * n if image_keys is None else list(image_keys)
  text_keys = [None] * m if text_keys is None else list(text_keys)
  if len(image_keys) != n or len(text_keys) != m:
    raise ValueError(f"image_keys has {len(image_keys)} entries and text_keys {len(text_keys)}; "
                     f"they must have one per image ({n}) and one per text ({m})")
  ids: dict[Hashable, int] = {}

  def to_ids(keys, none_id):
    try:
      return np.array([none_id if k is None else ids.setdefault(k, len(ids)) for k in keys],
                      np.int64)
    except TypeError as e:
      raise TypeError(f"retrieval keys must be hashable (e.g. tuples, not lists): {e}") from e

  return to_ids(image_keys, _NO_IMAGE_KEY), to_ids(text_keys, _NO_TEXT_KEY)


def recall_at_k(image_emb: Any, text_emb: Any, text_image: Any, *,
                ks: Sequence[int] = (1, 5, 10),
                image_keys: Sequence[Hashable] | None = None,
                text_keys: Sequence[Hashable] | None = None,
                mesh: Any = None) -> dict[str, float]:
  """Image-to-text and text-to-image recall@k, strict and relaxed (see the module docstring).

  Args:
    image_emb: float [N, d], L2-normalised image embeddings.
    text_emb: float [M, d], L2-normalised text embeddings.
    text_image: int [M], the index in [0, N) of the image each text belongs to.
    ks: the k values to report. A k beyond the number of candidates (M texts for i2t, N
      images for t2i) ranks all of them.
    image_keys, text_keys: optional hashables, [N] and [M]; equal non-None keys make a
      relaxed hit.
    mesh: passed to `similarity.top_k`, which splits the keys' rows over it.

  Returns:
    {"i2t_recall_at_{k}", "t2i_recall_at_{k}", "strict_i2t_recall_at_{k}",
     "strict_t2i_recall_at_{k}": float in [0, 1]} for every k in ks; i2t averages over the
    N images, t2i over the M texts.
  """
  n, d = _check_embeddings("image_emb", image_emb)
  m, _ = _check_embeddings("text_emb", text_emb, d)
  ks = _check_ks(ks)
  text_image = _check_indices("text_image", text_image, m, 0, n)
  image_ids, text_ids = _key_ids(image_keys, text_keys, n, m)

  # i2t: [N, K] text indices per image query.
  ranked = _ranked(image_emb, text_emb, min(max(ks), m), mesh)
  strict_i2t = text_image[ranked] == np.arange(n)[:, None]
  relaxed_i2t = strict_i2t | (text_ids[ranked] == image_ids[:, None])
  # t2i: [M, K] image indices per text query.
  ranked = _ranked(text_emb, image_emb, min(max(ks), n), mesh)
  strict_t2i = ranked == text_image[:, None]
  relaxed_t2i = strict_t2i | (image_ids[ranked] == text_ids[:, None])

  out = {}
  for k in ks:
    for name, hits in (("i2t", relaxed_i2t), ("t2i", relaxed_t2i),
                       ("strict_i2t", strict_i2t), ("strict_t2i", strict_t2i)):
      out[f"{name}_recall_at_{k}"] = float(hits[:, :k].any(axis=1).mean())
  return out


def neighbour_precision(image_emb: Any, image_keys: Sequence[Hashable], *,
                        ks: Sequence[int] = (1, 5, 10), mesh: Any = None) -> dict[str, float]:
  """Image-to-image precision@k by key, and its ceiling.

  Each image i ranks the other N - 1 images (its own row is left out by index, so a
  duplicate of it elsewhere still counts as a neighbour). A neighbour is right if its key
  equals image_keys[i] (None matches nothing).

  Args:
    image_emb: float [N, d], L2-normalised image embeddings.
    image_keys: [N] hashables (e.g. `shapes_metrics.image_key` of each example).
    ks: the k values to report. Precision divides by k even when k > N - 1 (the missing
      neighbours count as wrong), and so does the ceiling.
    mesh: passed to `similarity.top_k`.

  Returns:
    {"similar_precision_at_{k}": mean over images of (#right among its k nearest) / k,
     "similar_precision_at_{k}_max": mean over images of min(k, #other images with its
     key) / k} for every k in ks.
  """
  n, _ = _check_embeddings("image_emb", image_emb)
  if n < 2:
    raise ValueError(f"neighbour_precision needs at least 2 images; got {n}")
  ks = _check_ks(ks)
  ids, _ = _key_ids(image_keys, None, n, 0)
  kk = min(max(ks), n - 1)
  # One more than needed, then drop the query itself. If the query is not among its k + 1
  # best (lower-index duplicates tie with it and come first), its k best others are the k
  # first, so the last is dropped instead.
  ranked = _ranked(image_emb, image_emb, kk + 1, mesh)  # [N, kk + 1]
  is_self = ranked == np.arange(n)[:, None]
  drop = np.where(is_self.any(axis=1), is_self.argmax(axis=1), kk)
  keep = np.arange(kk + 1)[None, :] != drop[:, None]
  neighbours = ranked[keep].reshape(n, kk)  # [N, kk], boolean indexing keeps row order.
  right = (ids[neighbours] == ids[:, None]) & (ids[:, None] != _NO_IMAGE_KEY)

  # Other images sharing each image's key: the ceiling's supply of right answers.
  _, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
  same = np.where(ids == _NO_IMAGE_KEY, 0, counts[inverse.reshape(-1)] - 1)
  out = {}
  for k in ks:
    out[f"similar_precision_at_{k}"] = float(right[:, :k].sum(axis=1).mean() / k)
    out[f"similar_precision_at_{k}_max"] = float(np.minimum(k, same).mean() / k)
  return out


def class_embeddings(prompt_emb: Sequence[Any]) -> np.ndarray:
  """CLIP prompt ensembling: one embedding per class from its prompts' embeddings.

  Args:
    prompt_emb: C arrays, class c's float [P_c, d] (one row per prompt text, P_c >= 1).

  Returns:
    float32 [C, d]: per class, the mean of its L2-normalised prompt embeddings,
    L2-normalised again.
  """
  out = []
  for c, emb in enumerate(prompt_emb):
    emb = np.asarray(jax.device_get(emb), np.float64)
    if emb.ndim != 2 or emb.shape[0] == 0:
      raise ValueError(f"prompt_emb[{c}] must be a non-empty [P, d] array; got {emb.shape}")
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    mean = emb.mean(axis=0)
    out.append(mean / max(np.linalg.norm(mean), 1e-12))
  if not out:
    raise ValueError("class_embeddings needs at least one class")
  widths = {e.shape[0] for e in out}
  if len(widths) != 1:
    raise ValueError(f"every class's prompt embeddings must have the same width; got {widths}")
  return np.stack(out).astype(np.float32)


def zero_shot_accuracy(image_emb: Any, class_emb: Any, labels: Any, *,
                       mesh: Any = None) -> tuple[float, int]:
  """Zero-shot classification accuracy: each image takes its best-scoring class.

  Args:
    image_emb: float [N, d], L2-normalised image embeddings.
    class_emb: float [C, d], e.g. `class_embeddings(...)`.
    labels: int [N], the true class in [0, C), or -1 where the task does not apply (e.g. a
      shape question about a scene of several objects).
    mesh: passed to `similarity.top_k`.

  Returns:
    (accuracy over the labelled images, number of labelled images); the accuracy is NaN
    when no image is labelled.
  """
  n, d = _check_embeddings("image_emb", image_emb)
  c, _ = _check_embeddings("class_emb", class_emb, d)
  labels = _check_indices("labels", labels, n, -1, c)
  labelled = np.flatnonzero(labels >= 0)
  if labelled.size == 0:
    return float("nan"), 0
  queries = image_emb[labelled] if labelled.size < n else image_emb
  predicted = _ranked(queries, class_emb, 1, mesh)[:, 0]
  return float((predicted == labels[labelled]).mean()), int(labelled.size)
