"""Visual-similarity search (gpt4v_jax/similarity.py, gpt4v_jax/similar.py): exact top-k against
numpy, streaming and sharding, tie order, the Index's files and backends, and the command."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

from gpt4v_jax import similar
from gpt4v_jax.similarity import Index, list_images, top_k

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _exact_data(n: int, d: int = 16, q: int = 5, seed: int = 0):
  """Random float32 queries [q, d] and keys [n, d] whose inner products float32 computes
  exactly in any summation order (multiples of 1/1024 below 1, d <= 16: every partial sum is
  an integer / 2^20 under 2^24 / 2^20), so the reference and top_k see the same scores."""
  rng = np.random.default_rng(seed)
  draw = lambda rows: (rng.integers(-1000, 1001, (rows, d)) / 1024).astype(np.float32)
  return draw(q), draw(n)


def _reference(queries, keys, k):
  """numpy's exact top-k: (scores float64 [q, k], indices [q, k]); ties: lower index first."""
  scores = queries.astype(np.float64) @ keys.astype(np.float64).T
  order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
  return np.take_along_axis(scores, order, 1), order


def _meshes():
  devices = np.array(jax.devices())
  return {"1": Mesh(devices[:1], ("rows",)), "8": None,  # None: the default, all 8 devices.
          "2x4": Mesh(devices.reshape(2, 4), ("a", "b"))}


@pytest.mark.parametrize("mesh_name", ["1", "8", "2x4"])
def test_top_k_equals_numpy(mesh_name):
  assert len(jax.devices()) == 8  # tests/conftest.py
  mesh = _meshes()[mesh_name]
  queries, keys = _exact_data(1000)
  for chunk_rows in (96, 65536):  # 96: 11 chunks, the last one partial; 65536: one.
    for k in (1, 10, 1000):
      scores, indices = top_k(queries, keys, k, mesh=mesh, chunk_rows=chunk_rows)
      ref_scores, ref_indices = _reference(queries, keys, k)
      assert scores.dtype == np.float32 and indices.dtype == np.int64
      assert scores.shape == indices.shape == (5, k)
      np.testing.assert_array_equal(indices, ref_indices, err_msg=f"{chunk_rows=} {k=}")
      np.testing.assert_array_equal(scores, ref_scores.astype(np.float32))


def test_top_k_float_embeddings_and_jax_queries():
  """Ordinary normal embeddings (numpy's float32 may differ in the last bit): same indices."""
  rng = np.random.default_rng(1)
  keys = rng.standard_normal((300, 32)).astype(np.float32)
  queries = rng.standard_normal((4, 32)).astype(np.float32)
  scores, indices = top_k(jax.numpy.asarray(queries), keys, 7, chunk_rows=40)
  ref_scores, ref_indices = _reference(queries, keys, 7)
  np.testing.assert_array_equal(indices, ref_indices)
  np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-5)


class _RowReader:
  """keys [n, d] behind .shape and row slicing only, recording the rows of each read."""

  def __init__(self, array):
    self.array, self.shape, self.reads = array, array.shape, []

  def __getitem__(self, rows: slice):
    self.reads.append(rows.stop - rows.start)
    return self.array[rows]


def test_top_k_streams_memmap_and_row_readers(tmp_path):
  queries, keys = _exact_data(1000, seed=2)
  np.save(tmp_path / "keys.npy", keys)
  mapped = np.load(tmp_path / "keys.npy", mmap_mode="r")
  assert isinstance(mapped, np.memmap)
  ref_scores, ref_indices = _reference(queries, keys, 10)
  scores, indices = top_k(queries, mapped, 10, chunk_rows=96)
  np.testing.assert_array_equal(indices, ref_indices)
  np.testing.assert_array_equal(scores, ref_scores.astype(np.float32))
  reader = _RowReader(keys)
  _, indices = top_k(queries, reader, 10, chunk_rows=96)
  np.testing.assert_array_equal(indices, ref_indices)
  # Each device reads its own 96 / 8 rows, never the whole array.
  assert max(reader.reads) == 12 and sum(reader.reads) == 1000


def test_top_k_ties_lower_index_first():
  rng = np.random.default_rng(3)
  keys = rng.standard_normal((50, 4)).astype(np.float32)
  keys /= np.linalg.norm(keys, axis=1, keepdims=True)  # Row 3 is its own best match...
  keys[[7, 21, 44]] = keys[3]  # ...and these copies'. Across devices and chunks at 16 rows.
  for mesh in _meshes().values():
    _, indices = top_k(keys[3:4], keys, 4, mesh=mesh, chunk_rows=16)
    assert indices[0].tolist() == [3, 7, 21, 44]
    # All scores equal: the first k rows, in order; padding rows (n=50 -> 56) never appear.
    scores, indices = top_k(np.zeros((2, 4), np.float32), keys, 50, mesh=mesh, chunk_rows=16)
    assert (scores == 0).all() and indices.tolist() == [list(range(50))] * 2
  # Rows scoring -inf still beat padding and "no result yet" entries.
  keys = np.full((3, 1), -np.inf, np.float32)
  scores, indices = top_k(np.ones((1, 1), np.float32), keys, 3)
  assert indices.tolist() == [[0, 1, 2]] and np.isneginf(scores).all()


@pytest.mark.parametrize("queries, keys, k, match", [
    (np.ones((1, 4)), np.ones((5, 4)), 0, "k=0"),
    (np.ones((1, 4)), np.ones((5, 4)), 6, "k=6"),
    (np.ones((1, 3)), np.ones((5, 4)), 1, "width mismatch"),
    (np.ones((1, 4)), np.ones((0, 4)), 1, "empty"),
    (np.ones(4), np.ones((5, 4)), 1, "2-D"),
])
def test_top_k_errors(queries, keys, k, match):
  with pytest.raises(ValueError, match=match):
    top_k(queries, keys, k)


def _vector_embed(images):
  """A stand-in model: images are float vectors; their embedding is 3 * the vector."""
  return 3 * np.stack(images)


def test_index_build_save_load_search(tmp_path):
  rng = np.random.default_rng(4)
  vectors = list(rng.standard_normal((40, 8)).astype(np.float32))
  ids = [f"img{i}.png" for i in range(40)]
  index = Index.build(_vector_embed, vectors, batch_size=16, ids=ids, model="fake")
  np.testing.assert_allclose(np.linalg.norm(index.embeddings, axis=1), 1, rtol=1e-6)
  index.save(str(tmp_path / "idx"))
  meta = json.loads((tmp_path / "idx" / "index.json").read_text())
  assert meta == dict(ids=ids, dim=8, count=40, model="fake")
  loaded = Index.load(str(tmp_path / "idx"))
  assert isinstance(loaded.embeddings, np.memmap) and loaded.ids == ids
  np.testing.assert_array_equal(loaded.embeddings, index.embeddings)
  # Queries are normalised too: any positive multiple of an indexed vector finds it at 1.
  hits = loaded.search(np.stack([vectors[5] * 7, vectors[31]]), 3, chunk_rows=8)
  assert [h[0][0] for h in hits] == ["img5.png", "img31.png"]
  assert all(len(h) == 3 and abs(h[0][1] - 1) < 1e-5 for h in hits)
  normed = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
  expected = np.argsort(-(normed[31] @ normed.T), kind="stable")[:3]
  assert [i for i, _ in hits[1]] == [ids[j] for j in expected]
  with pytest.raises(FileNotFoundError, match="index.json"):
    Index.load(str(tmp_path))
  with pytest.raises(ValueError, match="backend"):
    index.search(vectors[:1], 1, backend="annoy")


def test_index_build_skips_bad_images():
  def embed(images):
    if any(isinstance(x, str) for x in images):
      raise ValueError("not an image")
    return _vector_embed(images)

  images = [np.ones(3, np.float32), "broken.png", np.arange(3, dtype=np.float32)]
  with pytest.raises(ValueError, match="not an image"):
    Index.build(embed, images)
  index = Index.build(embed, images, on_bad="skip", ids=["a", "b", "c"])
  assert index.ids == ["a", "c"] and index.embeddings.shape == (2, 3)


def test_faiss_backend_agrees_with_exact():
  pytest.importorskip("faiss")
  rng = np.random.default_rng(5)
  index = Index.build(_vector_embed, list(rng.standard_normal((300, 32)).astype(np.float32)))
  queries = rng.standard_normal((6, 32)).astype(np.float32)
  exact = index.search(queries, 10)
  flat = index.search(queries, 10, backend="faiss")
  hnsw = index.search(queries, 10, backend="faiss", faiss_index="hnsw")
  for e, f, h in zip(exact, flat, hnsw):
    assert [i for i, _ in f] == [i for i, _ in e]
    np.testing.assert_allclose([s for _, s in f], [s for _, s in e], atol=1e-5)
    assert len({i for i, _ in h} & {i for i, _ in e}) >= 9  # Approximate, 300 points: ~all.
  with pytest.raises(ValueError, match="k=301"):
    index.search(queries, 301, backend="faiss")


def test_faiss_is_optional(monkeypatch):
  index = Index.build(_vector_embed, [np.ones(4, np.float32)])
  monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` now raises ImportError.
  with pytest.raises(ImportError, match="pip install faiss-cpu"):
    index.search(np.ones((1, 4)), 1, backend="faiss")
  code = ("import sys, gpt4v_jax.similarity, gpt4v_jax.similar; "
          "assert 'faiss' not in sys.modules, 'faiss imported at import time'")
  r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                     env={**os.environ, "PYTHONPATH": ROOT}, timeout=120)
  assert r.returncode == 0, r.stderr[-2000:]


def test_list_images_recursive_sorted_by_extension(tmp_path):
  for name in ["b.PNG", "a/z.jpg", "a/y.JPEG", "c.webp", "d.Gif", "e.bmp", "notes.txt",
               "f.png.bak", "a/b/x.png"]:
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / name).write_bytes(b"")
  found = [os.path.relpath(p, tmp_path) for p in list_images(str(tmp_path))]
  assert found == ["a/b/x.png", "a/y.JPEG", "a/z.jpg", "b.PNG", "c.webp", "d.Gif", "e.bmp"]
  with pytest.raises(FileNotFoundError, match="no such directory"):
    list_images(str(tmp_path / "missing"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="no image files"):
    Index.from_folder(_vector_embed, str(tmp_path / "empty"))


@pytest.fixture
def image_folder(tmp_path):
  """Five distinct shapes scenes as PNGs (one in a subfolder), a text file, a fake PNG."""
  from gpt4v_jax.data import shapes
  folder = tmp_path / "images"
  (folder / "sub").mkdir(parents=True)
  for i in range(5):
    scene = shapes.sample_scene(np.random.default_rng(i), compositional=False)
    shapes.render_image(scene).save(folder / ("sub" if i == 4 else "") / f"scene{i}.png")
  (folder / "readme.txt").write_text("not indexed")
  (tmp_path / "fake.png").write_text("not an image")
  return folder


def test_cli(tiny_run, image_folder, tmp_path, capsys):
  r, workdir = tiny_run
  assert r.returncode == 0, r.stderr[-3000:]
  query = str(image_folder / "scene2.png")
  flags = [f"--model={workdir}", f"--query={query}", f"--query={image_folder}/sub/scene4.png"]
  similar.main(["similar", *flags, f"--index={image_folder}", "-k", "3",
                f"--save_index={tmp_path / 'idx'}", f"--json={tmp_path / 'hits.json'}"])
  out = capsys.readouterr().out
  hits = json.loads((tmp_path / "hits.json").read_text())
  assert [h["query"] for h in hits] == [query, f"{image_folder}/sub/scene4.png"]
  for h in hits:
    assert [x["rank"] for x in h["results"]] == [1, 2, 3]
    assert h["results"][0]["path"] == h["query"]  # Itself first, at cosine 1.
    assert abs(h["results"][0]["score"] - 1) < 1e-4
    scores = [x["score"] for x in h["results"]]
    assert scores == sorted(scores, reverse=True)
    assert f"   1   1.0000  {h['query']}" in out  # The table: rank, score, path.
  assert Index.load(str(tmp_path / "idx")).ids == [str(image_folder / f"scene{i}.png")
                                                   for i in range(4)] + [
      str(image_folder / "sub" / "scene4.png")]
  # The saved index, searched by FAISS, with more results asked than it holds.
  similar.main(["similar", *flags, f"--index={tmp_path / 'idx'}", "-k", "9", "--backend=faiss",
                f"--json={tmp_path / 'hits2.json'}"])
  again = json.loads((tmp_path / "hits2.json").read_text())
  assert [len(h["results"]) for h in again] == [5, 5]
  assert [x["path"] for x in again[0]["results"][:3]] == [x["path"] for x in hits[0]["results"]]
  # A query that is not an image, or is missing: a one-line error naming the file.
  for bad in (tmp_path / "fake.png", tmp_path / "missing.png"):
    with pytest.raises(SystemExit) as e:
      similar.main(["similar", f"--model={workdir}", f"--index={tmp_path / 'idx'}",
                    f"--query={bad}"])
    assert isinstance(e.value.code, str) and str(bad) in e.value.code
    assert "\n" not in e.value.code
