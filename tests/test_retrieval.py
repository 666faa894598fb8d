"""Retrieval evals (gpt4v_jax/evals/retrieval.py) against brute-force loops, and the shapes
retrieval keys and zero-shot tasks (gpt4v_jax/evals/shapes_metrics.py) against real scenes."""
import math

import jax
import numpy as np
import pytest

from gpt4v_jax.data import shapes
from gpt4v_jax.evals import retrieval
from gpt4v_jax.evals import shapes_metrics

KS = (1, 3, 5, 500)  # 500: more than every candidate set, so the whole ranking counts.


def _normalise(x):
  return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _order(query, keys, exclude=None):
  """Brute-force ranking: key indices by descending float64 score, ties to the lower index."""
  scores = [float(np.dot(query.astype(np.float64), k.astype(np.float64))) for k in keys]
  return sorted((j for j in range(len(keys)) if j != exclude), key=lambda j: (-scores[j], j))


def _assert_no_near_ties(queries, keys, depth):
  """The fixture is valid only if float32 and float64 rankings agree: no two of a query's
  `depth` best scores (nor the next) closer than float32 rounding could blur."""
  scores = np.sort(queries.astype(np.float64) @ keys.astype(np.float64).T, axis=1)[:, ::-1]
  gaps = -np.diff(scores[:, :depth + 2], axis=1)
  assert gaps.min() > 1e-5, "fixture has near-ties; pick another seed"


def _reference_recall(image_emb, text_emb, text_image, image_keys, text_keys, ks):
  """Loops straight from the definitions in the brief."""
  n, m = len(image_emb), len(text_emb)

  def same(a, b):
    return a is not None and b is not None and a == b

  out = {}
  i2t = [_order(image_emb[i], text_emb) for i in range(n)]
  t2i = [_order(text_emb[j], image_emb) for j in range(m)]
  for k in ks:
    strict_i2t = [any(text_image[j] == i for j in i2t[i][:k]) for i in range(n)]
    relaxed_i2t = [any(text_image[j] == i or same(text_keys[j], image_keys[i])
                       for j in i2t[i][:k]) for i in range(n)]
    strict_t2i = [text_image[j] in t2i[j][:k] for j in range(m)]
    relaxed_t2i = [any(i == text_image[j] or same(image_keys[i], text_keys[j])
                       for i in t2i[j][:k]) for j in range(m)]
    out[f"strict_i2t_recall_at_{k}"] = float(np.mean(strict_i2t))
    out[f"i2t_recall_at_{k}"] = float(np.mean(relaxed_i2t))
    out[f"strict_t2i_recall_at_{k}"] = float(np.mean(strict_t2i))
    out[f"t2i_recall_at_{k}"] = float(np.mean(relaxed_t2i))
  return out


def _planted(seed=0, n=40, d=16, num_keys=6):
  """Images clustered by key (so same-key texts compete with the paired one), some keys
  None; 0-3 noisy texts per image, most with their image's key, some None, some another key."""
  rng = np.random.default_rng(seed)
  pool = [("key", c) for c in range(num_keys)]
  centres = rng.normal(size=(num_keys, d))
  key_index = rng.integers(num_keys, size=n)
  image_emb = _normalise(centres[key_index] + 0.6 * rng.normal(size=(n, d)))
  image_keys = [None if rng.random() < 0.15 else pool[c] for c in key_index]
  text_image = np.repeat(np.arange(n), rng.integers(0, 4, size=n))
  m = len(text_image)
  text_emb = _normalise(image_emb[text_image] + 0.35 * rng.normal(size=(m, d)))
  text_keys = []
  for j in range(m):
    u = rng.random()
    text_keys.append(None if u < 0.1 else pool[rng.integers(num_keys)] if u < 0.2
                     else image_keys[text_image[j]])
  return image_emb, text_emb, text_image, image_keys, text_keys


def test_recall_matches_brute_force_on_planted_keys():
  image_emb, text_emb, text_image, image_keys, text_keys = _planted()
  _assert_no_near_ties(image_emb, text_emb, max(KS[:-1]))
  _assert_no_near_ties(text_emb, image_emb, max(KS[:-1]))
  got = retrieval.recall_at_k(image_emb, text_emb, text_image, ks=KS, image_keys=image_keys,
                              text_keys=text_keys)
  want = _reference_recall(image_emb, text_emb, text_image, image_keys, text_keys, KS)
  assert got == pytest.approx(want, abs=1e-12)
  # The fixture exercises what it should: relaxed above strict, and neither trivial.
  assert got["i2t_recall_at_1"] > got["strict_i2t_recall_at_1"]
  assert got["t2i_recall_at_1"] > got["strict_t2i_recall_at_1"]
  assert 0.2 < got["strict_t2i_recall_at_1"] < 0.9
  # Every image is ranked at k=500, so every text finds its image.
  assert got["strict_t2i_recall_at_500"] == 1.0
  assert got["strict_i2t_recall_at_500"] == np.mean(np.bincount(text_image, minlength=40) > 0)


def test_recall_without_keys_is_strict():
  image_emb, text_emb, text_image, _, _ = _planted(seed=1)
  got = retrieval.recall_at_k(image_emb, text_emb, text_image, ks=(1, 5))
  for name in ("i2t", "t2i"):
    for k in (1, 5):
      assert got[f"{name}_recall_at_{k}"] == got[f"strict_{name}_recall_at_{k}"]
  want = _reference_recall(image_emb, text_emb, text_image, [None] * 40,
                           [None] * len(text_image), (1, 5))
  assert got == pytest.approx(want, abs=1e-12)
  # The mesh only decides where the scoring runs.
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:2]), ("rows",))
  assert retrieval.recall_at_k(image_emb, text_emb, text_image, ks=(1, 5), mesh=mesh) == got


def test_recall_strict_and_relaxed_differ_on_a_built_case():
  """Images 0 and 1 show the same objects (key "A"); text 0 belongs to image 1 but points
  exactly at image 0. Image 2 has key None and text 2 key None: they match nothing."""
  image_emb = np.eye(4, dtype=np.float32)[:3]
  text_emb = np.eye(4, dtype=np.float32)[[0, 1, 3]]
  text_image = np.array([1, 0, 2])
  keys = dict(image_keys=["A", "A", None], text_keys=["A", "A", None])
  got = retrieval.recall_at_k(image_emb, text_emb, text_image, ks=(1,), **keys)
  # i2t: image 0 -> text 0 (image 1's, same key), image 1 -> text 1 (image 0's, same key),
  # image 2 scores 0 with every text -> text 0 (ties to the lower index; key None vs "A").
  assert got["strict_i2t_recall_at_1"] == 0.0
  assert got["i2t_recall_at_1"] == pytest.approx(2 / 3)
  # t2i: text 0 -> image 0 (its image is 1), text 1 -> image 1 (its image is 0), text 2
  # scores 0 everywhere -> image 0.
  assert got["strict_t2i_recall_at_1"] == 0.0
  assert got["t2i_recall_at_1"] == pytest.approx(2 / 3)


def test_recall_rejects_bad_inputs():
  emb = np.eye(3, dtype=np.float32)
  with pytest.raises(ValueError, match="text_image"):
    retrieval.recall_at_k(emb, emb, np.array([0, 1, 3]))
  with pytest.raises(ValueError, match="width"):
    retrieval.recall_at_k(emb, np.eye(3, 4, dtype=np.float32), np.array([0, 1, 2]))
  with pytest.raises(ValueError, match="image_keys"):
    retrieval.recall_at_k(emb, emb, np.array([0, 1, 2]), image_keys=["a"])


def _reference_precision(image_emb, image_keys, ks):
  n = len(image_emb)
  out = {}
  for k in ks:
    got, best = [], []
    for q in range(n):
      key = image_keys[q]
      neighbours = _order(image_emb[q], image_emb, exclude=q)[:k]
      got.append(sum(key is not None and image_keys[j] == key for j in neighbours) / k)
      same = sum(key is not None and image_keys[j] == key for j in range(n) if j != q)
      best.append(min(k, same) / k)
    out[f"similar_precision_at_{k}"] = float(np.mean(got))
    out[f"similar_precision_at_{k}_max"] = float(np.mean(best))
  return out


def test_neighbour_precision_matches_brute_force():
  image_emb, _, _, image_keys, _ = _planted(seed=2)
  _assert_no_near_ties(image_emb, image_emb, max(KS[:-1]) + 1)
  got = retrieval.neighbour_precision(image_emb, image_keys, ks=KS)
  want = _reference_precision(image_emb, image_keys, KS)
  assert got == pytest.approx(want, abs=1e-12)
  for k in KS:
    assert 0 < got[f"similar_precision_at_{k}"] <= got[f"similar_precision_at_{k}_max"] <= 1


def test_neighbour_precision_drops_the_query_not_its_duplicates():
  """Exact arithmetic (entries 0 or +-1/2, four nonzero: unit norm, every score a multiple of
  1/4), so ties are exact. Rows 0-3 are one vector: for query 3 with k=1, rows 0 and 1 tie
  with it and come first, so its own row is not even among its 2 best."""
  rng = np.random.default_rng(3)
  emb = np.zeros((12, 8), np.float32)
  for row in emb:
    row[rng.choice(8, 4, replace=False)] = rng.choice([-0.5, 0.5], 4)
  emb[1:4] = emb[0]
  keys = ["a", "b", "a", "a", "b", None, "a", "b", "c", "c", None, "a"]
  ks = (1, 2, 3, 5, 11, 20)
  got = retrieval.neighbour_precision(emb, keys, ks=ks)
  assert got == pytest.approx(_reference_precision(emb, keys, ks), abs=1e-12)
  one = retrieval.neighbour_precision(emb[:4], ["a", "b", "c", "a"], ks=(1,))
  # Query 0 -> row 1 ("b"), 1 -> 0, 2 -> 0, 3 -> 0 ("a" == "a"): only query 3 is right.
  assert one["similar_precision_at_1"] == pytest.approx(1 / 4)
  assert one["similar_precision_at_1_max"] == pytest.approx(2 / 4)


def test_class_embeddings_ensembles_normalised_prompts():
  rng = np.random.default_rng(4)
  prompts = [rng.normal(size=(p, 6)) for p in (1, 3, 5)]
  got = retrieval.class_embeddings(prompts)
  assert got.shape == (3, 6) and got.dtype == np.float32
  for c, emb in enumerate(prompts):
    mean = sum(e / math.sqrt(sum(x * x for x in e)) for e in emb) / len(emb)
    np.testing.assert_allclose(got[c], mean / np.linalg.norm(mean), rtol=1e-5, atol=1e-6)
  # Normalised before averaging: a prompt's scale does not change its weight.
  scaled = [p * rng.uniform(0.1, 10, size=(len(p), 1)) for p in prompts]
  np.testing.assert_allclose(retrieval.class_embeddings(scaled), got, atol=1e-6)
  with pytest.raises(ValueError, match=r"prompt_emb\[1\]"):
    retrieval.class_embeddings([prompts[0], np.zeros((0, 6))])


def test_zero_shot_accuracy_on_a_built_case():
  class_emb = np.eye(4, dtype=np.float32)[:3]  # C = 3, d = 4.
  image_emb = _normalise(np.array([
      [1.0, 0.1, 0.0, 0.0],  # -> 0, label 0: right.
      [0.0, 1.0, 0.2, 0.0],  # -> 1, label 1: right.
      [0.1, 0.0, 1.0, 0.0],  # -> 2, label 2: right.
      [0.0, 0.0, 0.0, 1.0],  # unlabelled.
      [0.9, 0.3, 0.0, 0.0],  # -> 0, label 1: wrong.
      [0.0, 0.5, 0.5, 0.0],  # tie between 1 and 2 -> 1, label 2: wrong.
  ]))
  labels = np.array([0, 1, 2, -1, 1, 2])
  accuracy, count = retrieval.zero_shot_accuracy(image_emb, class_emb, labels)
  assert count == 5 and accuracy == pytest.approx(3 / 5)
  accuracy, count = retrieval.zero_shot_accuracy(image_emb, class_emb, np.full(6, -1))
  assert count == 0 and math.isnan(accuracy)
  with pytest.raises(ValueError, match="labels"):
    retrieval.zero_shot_accuracy(image_emb, class_emb, np.array([0, 1, 2, 3, 0, 0]))


# --- shapes -------------------------------------------------------------------------------

EXAMPLES = [shapes.make_standard_example(0, "train", i) for i in range(60)]
OBJECT_TYPES = [(z, c, s) for z in shapes.SIZES for c in shapes.COLORS for s in shapes.SHAPES]


def _bag(objects):
  """An oracle embedding: normalised counts of each (size, color, shape) object type."""
  v = np.zeros(len(OBJECT_TYPES))
  for o in objects:
    v[OBJECT_TYPES.index(tuple(o))] += 1
  return v / max(np.linalg.norm(v), 1e-12)


def test_shapes_keys_on_real_examples():
  for ex in EXAMPLES:
    key = shapes_metrics.image_key(ex)
    assert sorted(key) == sorted((o["size"], o["color"], o["shape"]) for o in ex["scene"])
    assert len(ex["captions"]) == shapes.NUM_CAPTIONS
    for caption in ex["captions"]:
      assert shapes_metrics.text_key(caption) == key
      assert shapes_metrics.text_key(caption.encode()) == key
  assert shapes_metrics.text_key("a picture of nothing at all.") is None
  # The key is a multiset: order does not matter, repeats do.
  assert (shapes_metrics.text_key("a large red square and a small blue circle.")
          == shapes_metrics.text_key("a small blue circle and a large red square."))
  assert (shapes_metrics.text_key("a small blue circle and a small blue circle.")
          != shapes_metrics.text_key("a small blue circle."))


def test_shapes_oracle_retrieval_is_perfect_when_relaxed():
  """An oracle that embeds each multiset of objects as its own one-hot direction cannot tell
  apart scenes with the same objects (two pairs among these 60): relaxed recall@1 is 1,
  strict recall@1 is not, and the shapes keys plug straight into recall_at_k."""
  bags = {}  # Multiset of objects -> its one-hot dimension.
  image_bags = [bags.setdefault(tuple(sorted(shapes.scene_objects(ex["scene"]))), len(bags))
                for ex in EXAMPLES]
  texts = [(i, c) for i, ex in enumerate(EXAMPLES) for c in ex["captions"]]
  text_bags = [bags[tuple(sorted(shapes.parse_caption(c)))] for _, c in texts]
  image_emb, text_emb = (np.eye(len(bags), dtype=np.float32)[b] for b in (image_bags, text_bags))
  assert len(bags) < len(EXAMPLES)  # Some scenes share their objects.
  got = retrieval.recall_at_k(
      image_emb, text_emb, np.array([i for i, _ in texts]), ks=(1,),
      image_keys=[shapes_metrics.image_key(ex) for ex in EXAMPLES],
      text_keys=[shapes_metrics.text_key(c) for _, c in texts])
  assert got["i2t_recall_at_1"] == 1.0 and got["t2i_recall_at_1"] == 1.0
  # Ties go to the lower index, so the second scene of each pair loses strictly: its image
  # query gets the first scene's text, and its 5 texts get the first scene's image.
  duplicates = len(EXAMPLES) - len(bags)
  assert got["strict_i2t_recall_at_1"] == pytest.approx(1 - duplicates / len(EXAMPLES))
  assert got["strict_t2i_recall_at_1"] == pytest.approx(1 - duplicates / len(EXAMPLES))


def test_zero_shot_tasks_labels_and_prompts():
  tasks = shapes_metrics.zero_shot_tasks()
  assert set(tasks) == {"shape", "color", "size"}
  values = {"shape": shapes.SHAPES, "color": shapes.COLORS, "size": shapes.SIZES}
  position = {"size": 0, "color": 1, "shape": 2}  # In a (size, color, shape) key.
  single = [ex for ex in EXAMPLES if len(ex["scene"]) == 1]
  assert 3 <= len(single) < len(EXAMPLES)  # Both kinds of scene are tested.
  for attribute, (names, prompts, label) in tasks.items():
    assert names == list(values[attribute]) and len(prompts) == len(names)
    for ex in EXAMPLES:
      want = (names.index(ex["scene"][0][attribute]) if len(ex["scene"]) == 1 else -1)
      assert label(ex) == want
    others = math.prod(len(v) for a, v in values.items() if a != attribute)
    for name, texts in zip(names, prompts):
      assert len(set(texts)) == len(texts) == len(shapes.CAPTION_TEMPLATES) * others
      for text in texts:
        key = shapes_metrics.text_key(text)
        assert key is not None and len(key) == 1 and key[0][position[attribute]] == name


def test_shapes_zero_shot_with_oracle_embeddings_is_perfect():
  """Ensembling over the unknown attributes weighs them equally for every class, so with
  bag-of-objects embeddings only the asked attribute decides: accuracy 1 on every task."""
  image_emb = np.stack([_bag(shapes.scene_objects(ex["scene"])) for ex in EXAMPLES])
  for attribute, (_, prompts, label) in shapes_metrics.zero_shot_tasks().items():
    class_emb = retrieval.class_embeddings(
        [np.stack([_bag(shapes.parse_caption(t)) for t in texts]) for texts in prompts])
    labels = np.array([label(ex) for ex in EXAMPLES])
    accuracy, count = retrieval.zero_shot_accuracy(image_emb.astype(np.float32), class_emb,
                                                   labels)
    assert count == int((labels >= 0).sum()) > 0
    assert accuracy == 1.0, attribute
