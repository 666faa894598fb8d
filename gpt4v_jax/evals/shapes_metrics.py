"""Evals only the embedded `shapes` dataset allows: its captions are written in a language
that `shapes.parse_caption` inverts exactly, so a predicted caption can be scored object by
object against the scene the image shows.

Retrieval keys (`image_key`, `text_key`) for `evals.retrieval`: a caption states the objects
(size, color, shape) but not where they are, so every scene with the same multiset of objects
fits the same captions. Equal keys make the "describes the same set of objects" hit of relaxed
retrieval recall.
"""
import itertools
from typing import Any, Callable

import numpy as np

from gpt4v_jax.data import shapes
from gpt4v_jax.evals import caption_metrics


def caption_object_metrics(examples: list[dict], predictions: list[str]) -> dict[str, float]:
  """Object precision/recall/F1 (`object_precision`, ...: each predicted caption parsed into
  (size, color, shape) objects, matched as multisets against the example's scene) and
  `scene_accuracy` (the parsed objects are exactly the scene's)."""
  pred_objs = [shapes.parse_caption(p) for p in predictions]
  true_objs = [shapes.scene_objects(ex["scene"]) for ex in examples]
  prf = caption_metrics.object_prf(pred_objs, true_objs)
  scene_acc = np.mean([sorted(p) == sorted(g) for p, g in zip(pred_objs, true_objs)])
  return {"scene_accuracy": float(scene_acc), **{f"object_{k}": v for k, v in prf.items()}}


ObjectKey = tuple[tuple[str, str, str], ...]


def image_key(example: dict) -> ObjectKey:
  """The multiset of (size, color, shape) objects of a standard example's `scene`, sorted."""
  return tuple(sorted(shapes.scene_objects(example["scene"])))


def text_key(text: Any) -> ObjectKey | None:
  """The multiset of objects a caption (str or utf-8 bytes) names, sorted; None if it names
  none (None matches nothing in `evals.retrieval`)."""
  return tuple(sorted(shapes.parse_caption(text))) or None


_ATTRIBUTE_VALUES = {"shape": shapes.SHAPES, "color": shapes.COLORS, "size": shapes.SIZES}


def _single_object_label(attribute: str) -> Callable[[dict], int]:
  """label(example) -> index of the one object's `attribute` value, -1 unless one object."""
  values = _ATTRIBUTE_VALUES[attribute]

  def label(example: dict) -> int:
    scene = example["scene"]
    return values.index(scene[0][attribute]) if len(scene) == 1 else -1

  return label


def _prompts(attribute: str, value: str) -> list[str]:
  """Every one-object caption whose object has `attribute` == value: each caption template
  times each combination of the other two attributes (ensembling over what is unknown)."""
  others = [a for a in _ATTRIBUTE_VALUES if a != attribute]
  prompts = []
  for template in range(len(shapes.CAPTION_TEMPLATES)):
    for combo in itertools.product(*(_ATTRIBUTE_VALUES[a] for a in others)):
      obj = {attribute: value, **dict(zip(others, combo))}
      prompts.append(shapes.format_caption([obj], template))
  return prompts


def zero_shot_tasks() -> dict[str, tuple[list[str], list[list[str]], Callable[[dict], int]]]:
  """Zero-shot classification tasks over single-object shapes scenes.

  Returns:
    {"shape" | "color" | "size": (class names (the attribute's values), per class its prompt
    texts, label(standard example) -> the class of the scene's object, or -1 when the scene
    has more than one object)}. Prompts are written in the caption language (a text tower
    trained on captions knows no other): for class v, every one-object caption of every
    template and every value of the two other attributes, to be averaged by
    `retrieval.class_embeddings`. Held-out (color, shape) pairs are among them, as a caption
    of such a scene would be.
  """
  return {a: (list(values), [_prompts(a, v) for v in values], _single_object_label(a))
          for a, values in _ATTRIBUTE_VALUES.items()}
