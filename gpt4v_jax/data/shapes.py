"""`shapes`: an embedded, procedurally generated image/caption/QA dataset.

Every image is a 64x64 RGB scene of 1-4 flat-coloured shapes on a dark-grey
background. Each scene comes with 5 reference captions (COCO style) written in
a tiny language that `parse_caption` inverts exactly, and 6-8 short-answer
questions. A held-out set of (color, shape) pairs never appears in the
train/validation/test splits and appears in every `compositional` scene, to
measure compositional generalisation.

Nothing is downloaded: `Shapes` is a TFDS builder whose examples are generated
from `np.random.default_rng([seed, split_index, example_index])`, so every
example is reproducible on its own, independent of generation order.

Reading needs no TensorFlow: build with `file_format="array_record"` (done by
`load_builder`) and read with `builder.as_data_source()`. Per example,
`builder.as_data_source()[split][i]` is a dict with exactly these keys:

  image:          np.ndarray uint8 [64, 64, 3]
  captions:       list of 5 `bytes` (utf-8 captions)
  questions:      list of Q `bytes` (6 <= Q <= 8)
  answers:        list of Q `bytes`
  question_types: list of Q `bytes` (each one of QUESTION_TYPES)
  description:    `bytes`, a verbose description of the scene (summarization)
  objects:        dict with keys "shape", "color", "size" (lists of N
                  `np.int64` class indices into SHAPES / COLORS / SIZES) and
                  "x", "y" (lists of N `np.float32` centres in pixels),
                  1 <= N <= 4, sorted left to right
  id:             int, the example index i within its split

Sequences come back as Python lists (TFDS's NumPy decoding path does not
stack them); `example_to_numpy` turns them into arrays and
`example_scene` turns `objects` back into the scene dicts used below.
`encoded_sources` serves them as the standard examples every objective reads
(data/datasets.py).
"""
from __future__ import annotations

import dataclasses
import io
import re
from typing import Any, Optional

import numpy as np
import PIL.Image
import PIL.ImageDraw
import tensorflow_datasets as tfds

from gpt4v_jax.data import records, tokenizer

# ----------------------------------------------------------------------------
# Scene language.
# ----------------------------------------------------------------------------

SHAPES = ("circle", "square", "triangle", "diamond")
COLORS = ("red", "green", "blue", "yellow", "purple", "cyan")
SIZES = ("small", "large")
IMAGE_SIZE = 64
MAX_OBJECTS = 4

# Each colour and each shape occurs at most once, so every colour and every
# shape is still seen in training, just never in these combinations.
HELDOUT_PAIRS = (
    ("red", "circle"),
    ("green", "square"),
    ("blue", "triangle"),
    ("yellow", "diamond"),
)

# Exact fill colours. The closest two (blue, purple) are ~140 apart in RGB and
# every colour is >180 from the background, so a pixel parser can classify
# colours by nearest neighbour without ambiguity.
COLOR_RGB = {
    "red": (230, 25, 25),
    "green": (25, 200, 25),
    "blue": (30, 60, 240),
    "yellow": (240, 230, 20),
    "purple": (160, 30, 200),
    "cyan": (20, 220, 230),
}
BACKGROUND_RGB = (50, 50, 50)

# Half-size of an object's bounding box, in pixels: every shape is drawn
# inside the square [x - r, x + r] x [y - r, y + r] (inclusive).
RADIUS = {"small": 6, "large": 11}
# Background pixels kept between any two bounding boxes and the image border,
# so objects never touch and a parser can segment them by connectivity.
MIN_GAP = 2

SPLITS = ("train", "validation", "test", "compositional")
QUESTION_TYPES = ("color", "shape", "count", "existence", "relation", "size")
NUM_CAPTIONS = 5

_ALL_PAIRS = tuple((c, s) for c in COLORS for s in SHAPES)
_SEEN_PAIRS = tuple(p for p in _ALL_PAIRS if p not in HELDOUT_PAIRS)
_NUMBER_WORDS = ("zero", "one", "two", "three", "four")


# ----------------------------------------------------------------------------
# Scene sampling.
# ----------------------------------------------------------------------------


def _fits(x: float, y: float, r: int, placed: list[dict]) -> bool:
  """Whether a box of half-size r at (x, y) keeps MIN_GAP pixels to `placed`."""
  for other in placed:
    # Pixel boxes are inclusive, hence the +1: the gap between [.., x + r] and
    # [x' - r', ..] is x' - r' - (x + r) - 1 pixels.
    reach = r + RADIUS[other["size"]] + MIN_GAP + 1
    if abs(x - other["x"]) < reach and abs(y - other["y"]) < reach:
      return False
  return True


def _place(rng: np.random.Generator, pairs: list[tuple[str, str]],
           sizes: list[str], tries: int = 50) -> Optional[list[dict]]:
  """Rejection-samples non-overlapping centres; None if some object fails."""
  placed = []
  for (color, shape), size in zip(pairs, sizes):
    r = RADIUS[size]
    # Integer centres keep every shape symmetric on the pixel grid.
    low, high = r + MIN_GAP, IMAGE_SIZE - 1 - r - MIN_GAP
    for _ in range(tries):
      x, y = (float(v) for v in rng.integers(low, high + 1, size=2))
      if _fits(x, y, r, placed):
        placed.append(
            {"shape": shape, "color": color, "size": size, "x": x, "y": y})
        break
    else:
      return None
  return placed


def _sample_pairs(rng: np.random.Generator, n: int,
                  compositional: bool) -> list[tuple[str, str]]:
  """n (color, shape) pairs; compositional scenes get >= 1 held-out pair."""
  if not compositional:
    return [_SEEN_PAIRS[i] for i in rng.integers(len(_SEEN_PAIRS), size=n)]
  first = HELDOUT_PAIRS[rng.integers(len(HELDOUT_PAIRS))]
  rest = [_ALL_PAIRS[i] for i in rng.integers(len(_ALL_PAIRS), size=n - 1)]
  return [first] + rest


def sample_scene(rng: np.random.Generator, compositional: bool) -> list[dict]:
  """Samples a scene of 1-4 non-overlapping objects.

  Args:
    rng: the only source of randomness.
    compositional: if True, at least one object is a HELDOUT_PAIRS
      (color, shape) pair; if False, no object is.

  Returns:
    List of N dicts {"shape", "color", "size": str, "x", "y": float centre in
    pixels}, sorted left to right by x (ties by y).
  """
  n = int(rng.integers(1, MAX_OBJECTS + 1))
  while True:  # Crowded scenes (4 large objects) sometimes need a restart.
    pairs = _sample_pairs(rng, n, compositional)
    sizes = [SIZES[i] for i in rng.integers(len(SIZES), size=n)]
    objects = _place(rng, pairs, sizes)
    if objects is not None:
      return sorted(objects, key=lambda o: (o["x"], o["y"]))


# ----------------------------------------------------------------------------
# Rendering.
# ----------------------------------------------------------------------------


def _draw_object(draw: PIL.ImageDraw.ImageDraw, obj: dict) -> None:
  """Draws one flat-coloured shape inside its bounding box."""
  x, y, r = obj["x"], obj["y"], RADIUS[obj["size"]]
  fill = COLOR_RGB[obj["color"]]
  shape = obj["shape"]
  if shape == "circle":
    draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
  elif shape == "square":
    draw.rectangle([x - r, y - r, x + r, y + r], fill=fill)
  elif shape == "triangle":  # Apex up.
    draw.polygon([(x, y - r), (x + r, y + r), (x - r, y + r)], fill=fill)
  elif shape == "diamond":
    draw.polygon([(x, y - r), (x + r, y), (x, y + r), (x - r, y)], fill=fill)
  else:
    raise ValueError(f"unknown shape {shape!r}")


def render_image(objects: list[dict]) -> PIL.Image.Image:
  """Renders a scene as a 64x64 RGB PIL image.

  ImageDraw fills without antialiasing, so every pixel is exactly
  BACKGROUND_RGB or one COLOR_RGB value.
  """
  image = PIL.Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), BACKGROUND_RGB)
  draw = PIL.ImageDraw.Draw(image)
  for obj in objects:
    _draw_object(draw, obj)
  return image


def render_scene(objects: list[dict]) -> np.ndarray:
  """Renders a scene. Returns uint8 [64, 64, 3] (rows = y, columns = x)."""
  return np.array(render_image(objects), dtype=np.uint8)


# ----------------------------------------------------------------------------
# Captions.
# ----------------------------------------------------------------------------

# (singular form, plural form). {a_list}: "a small red circle, a large blue
# square and a small green diamond"; {list}: the same without articles (used
# after a colon, and needed to keep 4-object captions <= 120 characters);
# {n}: number word.
CAPTION_TEMPLATES = (
    ("{a_list}.", "{a_list}."),
    ("a picture of {a_list}.", "a picture of {a_list}."),
    ("an image showing {a_list}.", "an image showing {a_list}."),
    ("a scene with {a_list}.", "a scene with {a_list}."),
    ("there is {a_list}.", "there is {a_list}."),
    ("only one object: {a_list}.", "from left to right: {list}."),
    ("there is one object: {a_list}.", "there are {n} objects: {list}."),
)


def object_phrase(obj: dict) -> str:
  """The canonical mention of an object: "<size> <color> <shape>"."""
  return f"{obj['size']} {obj['color']} {obj['shape']}"


def _join(items: list[str]) -> str:
  """"a", "a and b", "a, b and c"."""
  if len(items) == 1:
    return items[0]
  return ", ".join(items[:-1]) + " and " + items[-1]


def format_caption(objects: list[dict], template_index: int) -> str:
  """Fills CAPTION_TEMPLATES[template_index] with the objects, left to right."""
  phrases = [object_phrase(o) for o in objects]
  singular, plural = CAPTION_TEMPLATES[template_index]
  template = singular if len(objects) == 1 else plural
  return template.format(
      a_list=_join(["a " + p for p in phrases]),
      list=_join(phrases),
      n=_NUMBER_WORDS[len(objects)])


def captions(objects: list[dict], rng: np.random.Generator) -> list[str]:
  """NUM_CAPTIONS captions from distinct rng-chosen templates.

  Every caption names every object as "<size> <color> <shape>", left to right.
  """
  chosen = rng.choice(len(CAPTION_TEMPLATES), NUM_CAPTIONS, replace=False)
  return [format_caption(objects, int(t)) for t in chosen]


def description(objects: list[dict], rng: np.random.Generator) -> str:
  """A verbose description of the scene, for the summarization task (its summary is
  `summary(objects)`): the objects are numbered left to right, then each one's size, color
  and shape is stated in its own sentence, the sentences in rng order, so a summary has to
  gather three facts per object from across the text. Uses only words of `vocabulary()`, so
  the `words:shapes` tokenizer (and every run that uses it) is unchanged.

  "there are two objects, from left to right object 1 and object 2. the color of object 2
  is blue. the shape of object 1 is a circle. ..."
  """
  n = len(objects)
  numbered = _join([f"object {k + 1}" for k in range(n)])
  head = ("there is one object, object 1." if n == 1 else
          f"there are {_NUMBER_WORDS[n]} objects, from left to right {numbered}.")
  facts = []
  for k, obj in enumerate(objects):
    facts += [f"the size of object {k + 1} is {obj['size']}.",
              f"the color of object {k + 1} is {obj['color']}.",
              f"the shape of object {k + 1} is a {obj['shape']}."]
  return " ".join([head] + [facts[i] for i in rng.permutation(len(facts))])


def summary(objects: list[dict]) -> str:
  """The one-line summary of `description`: the plain caption, "a large red circle and a
  small blue square."."""
  return format_caption(objects, 0)


_MENTION = re.compile(r"\b({})\s+({})\s+({})s?\b".format(
    "|".join(SIZES), "|".join(COLORS), "|".join(SHAPES)))


def parse_caption(text: Any) -> list[tuple[str, str, str]]:
  """Every "<size> <color> <shape>" mention in `text`, in order.

  Accepts str or utf-8 bytes (as read from the data source); unknown words are
  skipped and malformed input yields [] rather than an exception.
  """
  try:
    if isinstance(text, (bytes, bytearray, np.bytes_)):
      text = bytes(text).decode("utf-8", errors="ignore")
    return [m.groups() for m in _MENTION.finditer(str(text).lower())]
  except Exception:  # pylint: disable=broad-except  # Must never raise.
    return []


def scene_objects(objects: list[dict]) -> list[tuple[str, str, str]]:
  """Ground truth in parse_caption's format: [(size, color, shape)], L to R."""
  return [(o["size"], o["color"], o["shape"]) for o in objects]


# ----------------------------------------------------------------------------
# Questions.
# ----------------------------------------------------------------------------

_ATTRIBUTES = ("size", "color", "shape")
# Non-empty attribute subsets usable in a referring expression, in word order.
_SUBSETS = (("size",), ("color",), ("shape",), ("size", "color"),
            ("size", "shape"), ("color", "shape"), ("size", "color", "shape"))
_VOCAB = {"size": SIZES, "color": COLORS, "shape": SHAPES}


def _count(objects: list[dict], attrs: dict) -> int:
  """Number of objects matching every attribute in `attrs`."""
  return sum(all(o[k] == v for k, v in attrs.items()) for o in objects)


def _noun_phrase(attrs: dict, plural: bool = False) -> str:
  """{"size": "large", "shape": "square"} -> "large square"; no shape -> "object"."""
  noun = attrs.get("shape", "object") + ("s" if plural else "")
  return " ".join([attrs[k] for k in ("size", "color") if k in attrs] + [noun])


def _mentions_heldout(attrs: dict) -> bool:
  return (attrs.get("color"), attrs.get("shape")) in HELDOUT_PAIRS


def _referents(objects: list[dict], obj: dict,
               exclude: Optional[str] = None) -> list[dict]:
  """Attribute subsets (never using `exclude`) that single out `obj`."""
  out = []
  for subset in _SUBSETS:
    if exclude in subset:
      continue
    attrs = {k: obj[k] for k in subset}
    if _count(objects, attrs) == 1:
      out.append(attrs)
  return out


def _pick(rng: np.random.Generator, items: list) -> Any:
  return items[int(rng.integers(len(items)))]


def _attribute_question(objects, rng, attribute):
  """"what <attribute> is the <unique referent not using attribute>?"."""
  candidates = [(o, attrs) for o in objects
                for attrs in _referents(objects, o, exclude=attribute)]
  if not candidates:
    return None
  obj, attrs = _pick(rng, candidates)
  question = f"what {attribute} is the {_noun_phrase(attrs)}?"
  return question, obj[attribute], attribute


def _random_attrs(objects, rng, subset) -> dict:
  """Attribute values for `subset`, half the time taken from a scene object.

  Values made up from the vocabulary never form a held-out (color, shape)
  pair: train text must not mention those pairs (not even as "0" or "no").
  """
  if rng.random() < 0.5:
    obj = _pick(rng, objects)
    return {k: obj[k] for k in subset}
  while True:
    attrs = {k: _pick(rng, _VOCAB[k]) for k in subset}
    if not _mentions_heldout(attrs):
      return attrs


def _count_question(objects, rng):
  """"how many <filter>s are there?" -> "0".."4"."""
  subset = _pick(rng, [(), ("shape",), ("color",), ("size",),
                       ("color", "shape"), ("size", "shape")])
  attrs = _random_attrs(objects, rng, subset) if subset else {}
  question = f"how many {_noun_phrase(attrs, plural=True)} are there?"
  return question, str(_count(objects, attrs)), "count"


def _existence_question(objects, rng):
  """"is there a <filter>?" with "yes" and "no" equally likely."""
  subset = _pick(rng, [("color", "shape"), ("size", "shape"),
                       ("size", "color", "shape"), ("color",)])
  want_yes = rng.random() < 0.5
  attrs = None
  if want_yes:
    obj = _pick(rng, objects)
    attrs = {k: obj[k] for k in subset}
  else:
    for _ in range(20):  # Absent combinations are common; give up rarely.
      guess = {k: _pick(rng, _VOCAB[k]) for k in subset}
      if not _mentions_heldout(guess) and _count(objects, guess) == 0:
        attrs = guess
        break
    if attrs is None:
      return None
  answer = "yes" if _count(objects, attrs) else "no"
  return f"is there a {_noun_phrase(attrs)}?", answer, "existence"


def _relation_question(objects, rng):
  """"is the A left/right of the B?" for A entirely left of B (no x overlap)."""
  pairs = []
  for a in objects:
    for b in objects:
      apart = a["x"] + RADIUS[a["size"]] < b["x"] - RADIUS[b["size"]]
      if apart and _referents(objects, a) and _referents(objects, b):
        pairs.append((a, b))
  if not pairs:
    return None
  left, right = _pick(rng, pairs)
  ref_l = _noun_phrase(_pick(rng, _referents(objects, left)))
  ref_r = _noun_phrase(_pick(rng, _referents(objects, right)))
  return _pick(rng, [
      (f"is the {ref_l} left of the {ref_r}?", "yes", "relation"),
      (f"is the {ref_r} left of the {ref_l}?", "no", "relation"),
      (f"is the {ref_r} right of the {ref_l}?", "yes", "relation"),
      (f"is the {ref_l} right of the {ref_r}?", "no", "relation"),
  ])


_RIGHT_OF = re.compile(r"is the (.+) right of the (.+)\?")


def converse_relation(question: str) -> str | None:
  """"is the A right of the B?" -> "is the B left of the A?", its converse (the same answer),
  or None for any other question. A relation's answer is an XOR of its word and which of the
  two named objects is further left, so each alone tells nothing; with one word the answer
  is the objects' order alone, which training finds at once (docs/vqa.md)."""
  match = _RIGHT_OF.fullmatch(question)
  return match and f"is the {match.group(2)} left of the {match.group(1)}?"


_QUESTION_MAKERS = {
    "color": lambda objs, rng: _attribute_question(objs, rng, "color"),
    "shape": lambda objs, rng: _attribute_question(objs, rng, "shape"),
    "size": lambda objs, rng: _attribute_question(objs, rng, "size"),
    "count": _count_question,
    "existence": _existence_question,
    "relation": _relation_question,
}


def questions(objects: list[dict],
              rng: np.random.Generator) -> list[tuple[str, str, str]]:
  """6-8 distinct unambiguous (question, answer, qtype) triples.

  Every qtype in QUESTION_TYPES is tried once first (relation needs two
  horizontally separated objects, attribute questions a unique referent), then
  random qtypes fill up to the rng-chosen target. Answers are single words:
  a colour, shape or size name, a digit "0".."4", or "yes"/"no".
  """
  target = int(rng.integers(6, 9))
  first_round = [str(t) for t in rng.permutation(QUESTION_TYPES)]
  out, seen = [], set()
  for attempt in range(100):
    if len(out) == target:
      break
    qtype = (first_round[attempt] if attempt < len(first_round)
             else _pick(rng, QUESTION_TYPES))
    qa = _QUESTION_MAKERS[qtype](objects, rng)
    if qa is not None and qa[0] not in seen:
      seen.add(qa[0])
      out.append(qa)
  return out


# Words besides attribute values and caption-template words: lists ("a, b and c") and
# questions and answers.
_OTHER_WORDS = (",", "and", "?", "what", "is", "the", "how", "many", "are", "there", "a",
                "object", "objects", "left", "right", "of", "yes", "no", *_ATTRIBUTES,
                *(str(n) for n in range(MAX_OBJECTS + 1)))


def vocabulary() -> list[str]:
  """Every word and punctuation mark a caption, question or answer can contain, sorted
  (the `words:shapes` tokenizer's list)."""
  words = set(_OTHER_WORDS) | set(SIZES) | set(COLORS) | set(_NUMBER_WORDS)
  words |= set(SHAPES) | {s + "s" for s in SHAPES}
  for template in CAPTION_TEMPLATES:
    for text in template:
      words |= set(tokenizer.WordTokenizer.split(re.sub(r"{\w+}", " ", text)))
  return sorted(words)


# ----------------------------------------------------------------------------
# Examples.
# ----------------------------------------------------------------------------


def example_rng(seed: int, split: str, index: int) -> np.random.Generator:
  """The generator of example `index` of `split`: independent of all others."""
  return np.random.default_rng([seed, SPLITS.index(split), index])


def make_example(seed: int, split: str, index: int) -> dict:
  """Generates one example without TFDS.

  Returns:
    {"image": uint8 [64, 64, 3], "captions": list[str] (5),
     "questions", "answers", "question_types": list[str] (6-8 each),
     "description": str (the summarization task's input, see `description`),
     "objects": scene (list of dicts, see sample_scene), "id": index}.
  """
  rng = example_rng(seed, split, index)
  objects = sample_scene(rng, compositional=(split == "compositional"))
  caps = captions(objects, rng)
  qas = questions(objects, rng)
  # Its own generator: the fields above are what they were before descriptions existed.
  text_rng = np.random.default_rng([seed, SPLITS.index(split), index, 1])
  return {
      "image": render_scene(objects),
      "captions": caps,
      "questions": [q for q, _, _ in qas],
      "answers": [a for _, a, _ in qas],
      "question_types": [t for _, _, t in qas],
      "description": description(objects, text_rng),
      "objects": objects,
      "id": index,
  }


def _png_bytes(image: np.ndarray) -> bytes:
  """PNG-encodes uint8 [H, W, 3]; TFDS's Image feature needs TF for arrays."""
  buffer = io.BytesIO()
  PIL.Image.fromarray(image).save(buffer, format="PNG")
  return buffer.getvalue()


def _to_tfds_features(example: dict) -> dict:
  """make_example output -> the encodable form of Shapes' features."""
  objects = example["objects"]
  return {
      **example,
      "image": _png_bytes(example["image"]),
      "objects": {
          "shape": [o["shape"] for o in objects],
          "color": [o["color"] for o in objects],
          "size": [o["size"] for o in objects],
          "x": np.asarray([o["x"] for o in objects], np.float32),
          "y": np.asarray([o["y"] for o in objects], np.float32),
      },
  }


def example_to_numpy(example: dict) -> dict:
  """Stacks a data-source example's lists into arrays.

  Returns:
    {"image": uint8 [64, 64, 3], "captions": object array of bytes [5],
     "questions"/"answers"/"question_types": object arrays of bytes [Q],
     "objects": {"shape"/"color"/"size": int64 [N], "x"/"y": float32 [N]},
     "id": int64 []}.
  """
  out = {k: np.asarray(v, dtype=object) for k, v in example.items()
         if k in ("captions", "questions", "answers", "question_types")}
  objects = example["objects"]
  out["objects"] = {
      **{k: np.asarray(objects[k], np.int64) for k in ("shape", "color", "size")},
      **{k: np.asarray(objects[k], np.float32) for k in ("x", "y")},
  }
  out["image"] = np.asarray(example["image"], np.uint8)
  out["id"] = np.int64(example["id"])
  return out


def example_scene(example: dict) -> list[dict]:
  """The scene (list of object dicts, as sample_scene) of a data-source example."""
  objects = example["objects"]
  return [{"shape": SHAPES[int(s)], "color": COLORS[int(c)],
           "size": SIZES[int(z)], "x": float(x), "y": float(y)}
          for s, c, z, x, y in zip(objects["shape"], objects["color"],
                                   objects["size"], objects["x"], objects["y"])]


# ----------------------------------------------------------------------------
# TFDS builder.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class ShapesConfig(tfds.core.BuilderConfig):
  """Split sizes and the generation seed."""
  train: int = 0
  validation: int = 0
  test: int = 0
  compositional: int = 0
  seed: int = 0


class Shapes(tfds.core.GeneratorBasedBuilder):
  """Procedurally generated shapes scenes with captions and QA."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "Initial release.",
                   "1.1.0": "description: a verbose scene description to summarize."}
  BUILDER_CONFIGS = [
      ShapesConfig(name="default", description="Full dataset.", train=30000,
                   validation=1000, test=1000, compositional=1000),
      ShapesConfig(name="tiny", description="For tests.", train=256,
                   validation=32, test=32, compositional=32),
  ]
  DEFAULT_CONFIG_NAME = "default"

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    # TFDS locates a packaged builder's source via `importlib_resources`, which
    # is not installed here (it is a TF-side dependency), and only uses the
    # path to find a checksums.tsv of download URLs. We download nothing.
    return None

  def _info(self) -> tfds.core.DatasetInfo:
    # DatasetInfo directly, not dataset_info_from_configs: the latter reads
    # README/CITATIONS metadata files from this module's directory.
    text_list = tfds.features.Sequence(tfds.features.Text())
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__.split("\n\n")[0],
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 3)),
            "captions": text_list,
            "questions": text_list,
            "answers": text_list,
            "question_types": text_list,
            "description": tfds.features.Text(),
            "objects": tfds.features.Sequence({
                "shape": tfds.features.ClassLabel(names=SHAPES),
                "color": tfds.features.ClassLabel(names=COLORS),
                "size": tfds.features.ClassLabel(names=SIZES),
                "x": tfds.features.Tensor(shape=(), dtype=np.float32),
                "y": tfds.features.Tensor(shape=(), dtype=np.float32),
            }),
            "id": tfds.features.Tensor(shape=(), dtype=np.int64),
        }),
        # Keep generation order, so data_source[split][i]["id"] == i.
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    return {split: self._generate_examples(split) for split in SPLITS}

  def _generate_examples(self, split: str):
    for index in range(getattr(self.builder_config, split)):
      example = make_example(self.builder_config.seed, split, index)
      yield index, _to_tfds_features(example)


def load_builder(data_dir: str, config: str = "default") -> Shapes:
  """Returns the Shapes builder in `data_dir`, generating it first if needed.

  Read it without TensorFlow via `builder.as_data_source()` (see the module
  docstring for the per-example structure).
  """
  builder = Shapes(config=config, data_dir=data_dir, file_format="array_record")
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(
          # Never look for a prepared copy on GCS: there is none, and the
          # machine may be offline.
          try_download_gcs=False))
  return builder


def standard_example(example: dict, scene: list[dict] | None = None) -> dict:
  """A data-source example (images as PNG bytes) -> the standard example every objective
  reads (data/datasets.py): one answer per question, no answer types, the summarization
  pair (description -> summary) as its one prompt and target, the scene (by default
  `example_scene(example)`) as `scene`."""
  scene = example_scene(example) if scene is None else scene
  return dict(id=example["id"], image=example["image"], image_path="",
              captions=example["captions"], questions=example["questions"],
              answers=[[a] for a in example["answers"]],
              question_types=example["question_types"], answer_types=[],
              prompts=[example["description"]], targets=[summary(scene)], scene=scene)


def make_standard_example(seed: int, split: str, index: int) -> dict:
  """`make_example`'s example as the data source serves it: a standard example, its image
  PNG bytes."""
  example = make_example(seed, split, index)
  return standard_example(_to_tfds_features(example), example["objects"])


def encoded_sources(builder: Shapes) -> dict[str, Any]:
  """Every split's source of standard examples, with images left as PNG bytes.

  The input pipeline decodes them itself (`images.preprocess`), so an image that does not
  decode is a bad example it can count and skip, not an exception inside the data source.
  """
  sources = builder.as_data_source(decoders={"image": tfds.decode.SkipDecoding()})
  return {split: records.ExampleSource(source, standard_example)
          for split, source in sources.items()}
