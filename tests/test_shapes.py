"""Tests for the procedurally generated `shapes` dataset (gpt4v_jax/data/shapes.py)."""
import hashlib
import itertools
import json
import re

import numpy as np
import pytest

from gpt4v_jax.data import shapes as S
from gpt4v_jax.data import tokenizer

NUM_SCENES = 300


def _scenes(compositional: bool, n: int = NUM_SCENES, seed: int = 0):
  rng = np.random.default_rng(seed)
  return [S.sample_scene(rng, compositional) for _ in range(n)]


def _box(obj):
  """Inclusive pixel bounding box (x0, y0, x1, y1) of an object."""
  r = S.RADIUS[obj["size"]]
  return obj["x"] - r, obj["y"] - r, obj["x"] + r, obj["y"] + r


def _has_heldout(scene) -> bool:
  return any((o["color"], o["shape"]) in S.HELDOUT_PAIRS for o in scene)


# ----------------------------------------------------------------------------
# Scene language and sampling.
# ----------------------------------------------------------------------------


def test_constants():
  assert len(S.HELDOUT_PAIRS) == 4
  colors = [c for c, _ in S.HELDOUT_PAIRS]
  shapes = [s for _, s in S.HELDOUT_PAIRS]
  assert len(set(colors)) == 4 and len(set(shapes)) == 4
  assert set(colors) <= set(S.COLORS) and set(shapes) <= set(S.SHAPES)
  # Fill colours and background must be far apart for exact pixel parsing.
  rgbs = [np.array(S.COLOR_RGB[c], float) for c in S.COLORS]
  rgbs.append(np.array(S.BACKGROUND_RGB, float))
  for a, b in itertools.combinations(rgbs, 2):
    assert np.linalg.norm(a - b) > 100


@pytest.mark.parametrize("compositional", [False, True])
def test_sample_scene_constraints(compositional):
  counts = set()
  for scene in _scenes(compositional):
    counts.add(len(scene))
    assert 1 <= len(scene) <= 4
    assert _has_heldout(scene) == compositional
    keys = [(o["x"], o["y"]) for o in scene]
    assert keys == sorted(keys)  # Left to right, ties by y.
    for obj in scene:
      assert set(obj) == {"shape", "color", "size", "x", "y"}
      assert isinstance(obj["x"], float) and isinstance(obj["y"], float)
      x0, y0, x1, y1 = _box(obj)
      assert x0 >= 0 and y0 >= 0 and x1 <= 63 and y1 <= 63
    for a, b in itertools.combinations(scene, 2):
      ax0, ay0, ax1, ay1 = _box(a)
      bx0, by0, bx1, by1 = _box(b)
      # Boxes are disjoint (with a background gap).
      assert ax1 < bx0 - 1 or bx1 < ax0 - 1 or ay1 < by0 - 1 or by1 < ay0 - 1
  assert counts == {1, 2, 3, 4}


def test_render():
  palette = {tuple(S.BACKGROUND_RGB)} | {tuple(v) for v in S.COLOR_RGB.values()}
  for scene in _scenes(False, 100) + _scenes(True, 100):
    image = S.render_scene(scene)
    assert image.dtype == np.uint8 and image.shape == (64, 64, 3)
    # Flat colours only: every pixel is background or an exact fill colour.
    assert {tuple(p) for p in image.reshape(-1, 3)} <= palette
    assert tuple(image[0, 0]) == tuple(S.BACKGROUND_RGB)
    for obj in scene:
      x, y = int(obj["x"]), int(obj["y"])
      assert tuple(image[y, x]) == S.COLOR_RGB[obj["color"]]
    # Nothing is drawn outside the objects' boxes.
    inside = np.zeros((64, 64), bool)
    for obj in scene:
      x0, y0, x1, y1 = (int(v) for v in _box(obj))
      inside[y0:y1 + 1, x0:x1 + 1] = True
    assert (image[~inside] == S.BACKGROUND_RGB).all()


# ----------------------------------------------------------------------------
# Captions.
# ----------------------------------------------------------------------------


def test_parse_inverts_every_template():
  for scene in _scenes(False) + _scenes(True):
    truth = S.scene_objects(scene)
    for t in range(len(S.CAPTION_TEMPLATES)):
      assert S.parse_caption(S.format_caption(scene, t)) == truth


def test_captions_format():
  rng = np.random.default_rng(1)
  max_len = 0
  for scene in _scenes(False) + _scenes(True):
    caps = S.captions(scene, rng)
    assert len(caps) == 5 and len(set(caps)) == 5
    for cap in caps:
      assert cap == cap.lower() and cap.endswith(".")
      for obj in scene:
        assert S.object_phrase(obj) in cap
      assert S.parse_caption(cap) == S.scene_objects(scene)
      max_len = max(max_len, len(cap))
  # Worst case: four objects with the longest phrase.
  longest = [{"shape": "triangle", "color": "purple", "size": "large",
              "x": float(i), "y": 0.0} for i in range(4)]
  worst = max(len(S.format_caption(longest, t))
              for t in range(len(S.CAPTION_TEMPLATES)))
  print(f"max caption length: observed {max_len}, worst case {worst}")
  assert max_len <= worst <= 120


def test_singular_captions():
  scene = [{"shape": "circle", "color": "red", "size": "small", "x": 30.0,
            "y": 30.0}]
  caps = [S.format_caption(scene, t) for t in range(len(S.CAPTION_TEMPLATES))]
  assert len(set(caps)) == len(caps)
  for cap in caps:
    assert "objects" not in cap and " and " not in cap and "there are" not in cap


def test_parse_caption_robust():
  assert S.parse_caption("") == []
  assert S.parse_caption(None) == []
  assert S.parse_caption(12345) == []
  assert S.parse_caption(b"\xff\xfe small red circle") == [
      ("small", "red", "circle")]
  assert S.parse_caption(
      "Foo LARGE  Blue squares, a huge red circle, small green blob, small "
      "purple diamond!") == [("large", "blue", "square"),
                             ("small", "purple", "diamond")]
  assert S.parse_caption("smallred circle") == []


# ----------------------------------------------------------------------------
# Questions, checked against an independent reading of the question text.
# ----------------------------------------------------------------------------


def _phrase_attrs(phrase: str) -> dict:
  """"large blue objects" -> {"size": "large", "color": "blue"}."""
  attrs = {}
  for word in phrase.split():
    word = word[:-1] if word.endswith("s") and word[:-1] in S.SHAPES else word
    if word in S.SIZES:
      attrs["size"] = word
    elif word in S.COLORS:
      attrs["color"] = word
    elif word in S.SHAPES:
      attrs["shape"] = word
    else:
      assert word in ("object", "objects"), phrase
  return attrs


def _select(scene, phrase):
  attrs = _phrase_attrs(phrase)
  return [o for o in scene if all(o[k] == v for k, v in attrs.items())], attrs


def _left_of(a, b) -> bool:
  """a lies entirely left of b (no horizontal overlap of their boxes)."""
  return _box(a)[2] < _box(b)[0]


def _expected_answer(scene, question: str, qtype: str) -> str:
  """Answers `question` from the scene, asserting it is unambiguous."""
  if m := re.fullmatch(r"what (color|shape|size) is the ([a-z ]+)\?", question):
    attribute, phrase = m.groups()
    assert qtype == attribute
    matches, attrs = _select(scene, phrase)
    assert len(matches) == 1 and attribute not in attrs, question
    return matches[0][attribute]
  if m := re.fullmatch(r"how many ([a-z ]+) are there\?", question):
    assert qtype == "count"
    return str(len(_select(scene, m.group(1))[0]))
  if m := re.fullmatch(r"is there an? ([a-z ]+)\?", question):
    assert qtype == "existence"
    return "yes" if _select(scene, m.group(1))[0] else "no"
  if m := re.fullmatch(r"is the ([a-z ]+) (left|right) of the ([a-z ]+)\?",
                       question):
    assert qtype == "relation"
    (a,), _ = _select(scene, m.group(1))  # Unique referents.
    (b,), _ = _select(scene, m.group(3))
    if m.group(2) == "right":
      a, b = b, a
    assert _left_of(a, b) or _left_of(b, a), question  # Never a close call.
    return "yes" if _left_of(a, b) else "no"
  raise AssertionError(f"unknown question form: {question!r}")


def _check_questions(scene, qas):
  assert 6 <= len(qas) <= 8
  assert len({q for q, _, _ in qas}) == len(qas)
  for question, answer, qtype in qas:
    assert qtype in S.QUESTION_TYPES
    assert answer == _expected_answer(scene, question, qtype), question


def test_questions_correct_and_balanced():
  rng = np.random.default_rng(2)
  answers = {t: [] for t in S.QUESTION_TYPES}
  for scene in _scenes(False) + _scenes(True):
    qas = S.questions(scene, rng)
    _check_questions(scene, qas)
    for _, answer, qtype in qas:
      answers[qtype].append(answer)
  assert all(answers.values())  # Every qtype occurs.
  assert set(answers["count"]) == {"0", "1", "2", "3", "4"}
  for qtype in ("existence", "relation"):
    yes = np.mean([a == "yes" for a in answers[qtype]])
    assert set(answers[qtype]) == {"yes", "no"}
    assert 0.4 < yes < 0.6, (qtype, yes)


def test_seen_splits_never_mention_heldout_pairs():
  pattern = re.compile("|".join(rf"\b{c} {s}" for c, s in S.HELDOUT_PAIRS))
  for index in range(200):
    example = S.make_example(0, "train", index)
    for text in example["captions"] + example["questions"]:
      assert not pattern.search(text), text


def test_make_example_is_order_independent():
  later_first = S.make_example(0, "test", 7)
  S.make_example(0, "test", 3)
  again = S.make_example(0, "test", 7)
  assert np.array_equal(later_first["image"], again["image"])
  assert {k: v for k, v in later_first.items() if k != "image"} == {
      k: v for k, v in again.items() if k != "image"}
  other_seed = S.make_example(1, "test", 7)
  assert other_seed["captions"] != again["captions"]


# ----------------------------------------------------------------------------
# The TFDS builder, read through as_data_source() without TensorFlow.
# ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
  """The "tiny" config built once per session; returns its data sources."""
  builder = S.load_builder(str(tmp_path_factory.mktemp("shapes")), "tiny")
  return builder.as_data_source()


def test_no_tensorflow(tiny):
  import sys
  del tiny
  assert "tensorflow" not in sys.modules


def test_data_source_features(tiny):
  sizes = {"train": 256, "validation": 32, "test": 32, "compositional": 32}
  assert {k: len(v) for k, v in tiny.items()} == sizes
  for split in S.SPLITS:
    for index in (0, sizes[split] - 1):
      example = tiny[split][index]
      assert set(example) == {"image", "captions", "questions", "answers",
                              "question_types", "description", "objects", "id"}
      assert example["id"] == index
      image = example["image"]
      assert isinstance(image, np.ndarray)
      assert image.dtype == np.uint8 and image.shape == (64, 64, 3)
      assert len(example["captions"]) == 5
      assert all(isinstance(c, bytes) for c in example["captions"])
      n_q = len(example["questions"])
      assert 6 <= n_q <= 8
      assert len(example["answers"]) == len(example["question_types"]) == n_q
      objects = example["objects"]
      assert set(objects) == {"shape", "color", "size", "x", "y"}
      assert len({len(v) for v in objects.values()}) == 1
      arrays = S.example_to_numpy(example)
      assert arrays["captions"].shape == (5,)
      assert arrays["questions"].shape == (n_q,)
      for key in ("shape", "color", "size"):
        assert arrays["objects"][key].dtype == np.int64
      for key in ("x", "y"):
        assert arrays["objects"][key].dtype == np.float32


def test_data_source_matches_generator(tiny):
  for split in S.SPLITS:
    for index in (0, 5, 31):
      example = tiny[split][index]
      expected = S.make_example(0, split, index)
      assert np.array_equal(example["image"], expected["image"])
      assert S.example_scene(example) == expected["objects"]
      assert [c.decode() for c in example["captions"]] == expected["captions"]
      assert [a.decode() for a in example["answers"]] == expected["answers"]


def test_split_heldout_pairs_and_answers(tiny):
  for split in S.SPLITS:
    for example in tiny[split]:
      scene = S.example_scene(example)
      assert _has_heldout(scene) == (split == "compositional")
      qas = list(zip(*(
          [t.decode() for t in example[k]]
          for k in ("questions", "answers", "question_types"))))
      _check_questions(scene, qas)
      for cap in example["captions"]:
        assert S.parse_caption(cap) == S.scene_objects(scene)


def test_two_builds_identical(tiny, tmp_path):
  again = S.load_builder(str(tmp_path), "tiny").as_data_source()
  for split in S.SPLITS:
    for index in range(len(again[split])):
      a, b = tiny[split][index], again[split][index]
      assert np.array_equal(a["image"], b["image"])
      assert a["captions"] == b["captions"]
      assert a["questions"] == b["questions"]
      assert a["answers"] == b["answers"]


def test_descriptions_left_every_other_field_as_it_was():
  """The description has its own generator: images, captions, questions and scenes are those
  of the dataset before it (a fingerprint of version 1.0.0's first 20 examples per split),
  so the runs trained on them still reproduce."""
  digest = hashlib.sha256()
  for split in S.SPLITS:
    for i in range(20):
      example = S.make_example(0, split, i)
      del example["description"]
      digest.update(example.pop("image").tobytes())
      digest.update(json.dumps(example, sort_keys=True).encode())
  assert digest.hexdigest() == (
      "3ed15d49475a32c39d211936c82eea7d8b74b96c68dedb57dcbf633d24916af9")


def test_summarization_pair_states_every_fact_and_uses_only_vocabulary_words():
  words = set(S.vocabulary())
  for split in S.SPLITS:
    for i in range(50):
      example = S.make_standard_example(0, split, i)
      (description,), (summary,) = example["prompts"], example["targets"]
      assert set(tokenizer.WordTokenizer.split(description)) <= words
      assert S.parse_caption(summary) == S.scene_objects(example["scene"])
      # Every object's size, color and shape is one sentence of the description.
      for k, obj in enumerate(example["scene"]):
        for fact in (f"the size of object {k + 1} is {obj['size']}.",
                     f"the color of object {k + 1} is {obj['color']}.",
                     f"the shape of object {k + 1} is a {obj['shape']}."):
          assert fact in description
      assert description.count(".") == 1 + 3 * len(example["scene"])
