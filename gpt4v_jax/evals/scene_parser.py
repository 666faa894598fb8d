"""Reads a `shapes` scene back from its pixels, and scores generated images.

`parse_scene` turns an image into the scene's object list without any learned
model: objects are flat-coloured, never touch (MIN_GAP background pixels
between bounding boxes) and come from a fixed palette and four fixed shapes,
so connected components, nearest colours and fitting the renderer's own
shape masks suffice. It is built to survive what a VQ-VAE reconstruction or a
sampled image does to a rendering: pixel noise, blurred edges, slightly
shifted colours and stray specks.

`generation_scores` compares the parse of a generated image with the scene it
was asked for, GenEval-style (one yes/no per category), but exact, because
the parser replaces the object detector.
"""
from __future__ import annotations

import collections
from typing import Optional, Sequence

import numpy as np
import scipy.ndimage

from gpt4v_jax.data import shapes

# Palette entries, background last: every pixel is labelled by the nearest.
_PALETTE = np.array([shapes.COLOR_RGB[c] for c in shapes.COLORS]
                    + [shapes.BACKGROUND_RGB], np.float32)
_BACKGROUND = len(shapes.COLORS)
# The smallest object (a small triangle or diamond) covers 85 pixels: a
# component a quarter of that is a speck of noise, not an object.
MIN_OBJECT_PIXELS = 20
# Half-size of the window that shape templates are fitted in: the largest
# object's.
_HALF = shapes.RADIUS["large"]
# How far (pixels, per axis) a fitted centre may move from the component's
# bounding-box centre: noise specks and blurred tips move that box a little.
_MAX_SHIFT = 2
# A parsed centre this close (in pixels, on each axis) to the true one counts
# as the right position; rendered scenes parse to the exact centre.
POSITION_TOLERANCE = 1.0


# ----------------------------------------------------------------------------
# Parsing.
# ----------------------------------------------------------------------------


def _nearest(rgb: np.ndarray, palette: np.ndarray) -> np.ndarray:
  """[..., 3] colours -> [...] index of the nearest row of palette [k, 3]."""
  diff = rgb[..., None, :].astype(np.float32) - palette
  return np.argmin(np.sum(diff * diff, axis=-1), axis=-1)


def _render_templates() -> tuple[list[tuple[str, str]], np.ndarray]:
  """The (shape, size) kinds and their masks, float32 0/1 [kinds, w, w].

  Masks are centred in w = 2 * _HALF + 1 pixels, the largest bounding box.
  They come from the dataset's own renderer at an integer centre: drawing at
  integer coordinates is translation invariant, so one mask per kind fits
  every position.
  """
  c = shapes.IMAGE_SIZE // 2
  kinds = [(shape, size) for shape in shapes.SHAPES for size in shapes.SIZES]
  masks = []
  for shape, size in kinds:
    obj = {"shape": shape, "color": shapes.COLORS[0], "size": size,
           "x": float(c), "y": float(c)}
    image = shapes.render_scene([obj])[c - _HALF:c + _HALF + 1,
                                       c - _HALF:c + _HALF + 1]
    masks.append(np.any(image != shapes.BACKGROUND_RGB, axis=-1))
  return kinds, np.stack(masks).astype(np.float32)


_KINDS, _TEMPLATES = _render_templates()
_TEMPLATE_AREAS = _TEMPLATES.sum(axis=(1, 2))
_SHIFTS = [(dy, dx) for dy in range(-_MAX_SHIFT, _MAX_SHIFT + 1)
           for dx in range(-_MAX_SHIFT, _MAX_SHIFT + 1)]


def _fit_shape(mask: np.ndarray, box: tuple[slice, slice]
               ) -> tuple[str, str, int, int]:
  """The rendered shape that best covers one object.

  Every (shape, size) template is tried at every centre within _MAX_SHIFT of
  the bounding-box centre; the best intersection over union wins. Fitting
  whole masks, rather than thresholding features such as the fill ratio,
  keeps a diamond with blurred-off tips a diamond and a square with a speck
  of noise on its side a square.

  Args:
    mask: bool [height, width], the object's pixels in the full image.
    box: the object's bounding box, (row slice, column slice).

  Returns:
    (shape, size, x, y): the best kind and its integer centre.
  """
  pad = _HALF + _MAX_SHIFT
  padded = np.pad(mask, pad)
  cy = (box[0].start + box[0].stop - 1) // 2
  cx = (box[1].start + box[1].stop - 1) // 2
  width = 2 * _HALF + 1
  # Window of centre (y, x) starts at padded row y + pad - _HALF.
  windows = np.stack([
      padded[cy + dy + _MAX_SHIFT:cy + dy + _MAX_SHIFT + width,
             cx + dx + _MAX_SHIFT:cx + dx + _MAX_SHIFT + width]
      for dy, dx in _SHIFTS]).astype(np.float32)
  overlap = np.einsum("shw,khw->sk", windows, _TEMPLATES)
  iou = overlap / (mask.sum() + _TEMPLATE_AREAS[None, :] - overlap)
  shift, kind = np.unravel_index(np.argmax(iou), iou.shape)
  dy, dx = _SHIFTS[shift]
  return (*_KINDS[kind], cx + dx, cy + dy)


def parse_scene(image: np.ndarray) -> list[dict]:
  """The objects of a scene image.

  Every pixel takes the nearest palette colour, background included;
  8-connected groups of non-background pixels of at least MIN_OBJECT_PIXELS
  are objects. An object's colour is the palette colour nearest its pixels'
  median RGB (robust to blurred edges and noise); its shape, size and centre
  come from the rendered template that covers it best (`_fit_shape`).

  Args:
    image: uint8 [height, width, 3] (rows = y, columns = x).

  Returns:
    List of dicts {"shape", "color", "size": str, "x", "y": float centre in
    pixels}, sorted left to right by x (ties by y), as `shapes.sample_scene`.
  """
  image = np.asarray(image)
  foreground = _nearest(image, _PALETTE) != _BACKGROUND
  labels, _ = scipy.ndimage.label(foreground, structure=np.ones((3, 3)))
  objects = []
  for index, box in enumerate(scipy.ndimage.find_objects(labels), start=1):
    mask = labels == index
    if mask.sum() < MIN_OBJECT_PIXELS:
      continue
    median = np.median(image[mask].astype(np.float32), axis=0)
    shape, size, x, y = _fit_shape(mask, box)
    # Object colours only: a median need not be near any single pixel.
    color = shapes.COLORS[_nearest(median, _PALETTE[:_BACKGROUND])]
    objects.append({"shape": shape, "color": color, "size": size,
                    "x": float(x), "y": float(y)})
  return sorted(objects, key=lambda o: (o["x"], o["y"]))


# ----------------------------------------------------------------------------
# Parser accuracy on rendered scenes.
# ----------------------------------------------------------------------------


def _match_by_position(parsed: Sequence[dict],
                       targets: Sequence[dict]) -> list[Optional[dict]]:
  """For each target, the parsed object nearest its centre inside its box.

  Target boxes never overlap, so a parsed object matches at most one target.
  """
  out = []
  for t in targets:
    r = shapes.RADIUS[t["size"]]
    inside = [p for p in parsed
              if abs(p["x"] - t["x"]) <= r and abs(p["y"] - t["y"]) <= r]
    out.append(min(inside, default=None, key=lambda p: (
        (p["x"] - t["x"]) ** 2 + (p["y"] - t["y"]) ** 2)))
  return out


def _object_checks(parsed: Optional[dict], target: dict) -> dict[str, bool]:
  """Which attributes of `target` its matched parsed object gets right."""
  if parsed is None:
    return {"shape": False, "color": False, "size": False, "position": False}
  return {
      **{k: parsed[k] == target[k] for k in ("shape", "color", "size")},
      "position": (abs(parsed["x"] - target["x"]) <= POSITION_TOLERANCE
                   and abs(parsed["y"] - target["y"]) <= POSITION_TOLERANCE),
  }


def parser_accuracy(images: Sequence[np.ndarray],
                    scenes: Sequence[Sequence[dict]]) -> dict[str, float]:
  """How well `parse_scene` reads images whose true scenes are known.

  Each true object is matched to the parsed object nearest its centre within
  its bounding box (none: every attribute wrong).

  Args:
    images: uint8 [64, 64, 3] per scene.
    scenes: the true objects per scene (dicts as `shapes.sample_scene`).

  Returns:
    {"count": fraction of scenes parsed into the right number of objects,
     "shape", "color", "size": fraction of true objects whose match has that
       attribute right,
     "position": fraction of true objects whose match's centre is within
       POSITION_TOLERANCE pixels on both axes,
     "scene": fraction of scenes with the right count and every object right
       in all four}.
  """
  if len(images) != len(scenes) or not scenes:
    raise ValueError(f"Need as many images as scenes, and some: got "
                     f"{len(images)} and {len(scenes)}.")
  totals = collections.Counter()
  num_objects = 0
  for image, scene in zip(images, scenes):
    parsed = parse_scene(image)
    checks = [_object_checks(p, t)
              for p, t in zip(_match_by_position(parsed, scene), scene)]
    count_right = len(parsed) == len(scene)
    totals["count"] += count_right
    totals["scene"] += count_right and all(all(c.values()) for c in checks)
    for c in checks:
      totals.update(c)
    num_objects += len(scene)
  out = {k: totals[k] / len(scenes) for k in ("count", "scene")}
  out.update({k: totals[k] / num_objects
              for k in ("shape", "color", "size", "position")})
  return out


def split_parser_accuracy(source, num_examples: int) -> dict[str, float]:
  """`parser_accuracy` on the first `num_examples` of a data-source split.

  Args:
    source: `load_builder(...).as_data_source()[split]`.
    num_examples: how many examples to read (at most len(source)).
  """
  examples = [source[i] for i in range(min(num_examples, len(source)))]
  return parser_accuracy([e["image"] for e in examples],
                         [shapes.example_scene(e) for e in examples])


# ----------------------------------------------------------------------------
# Scoring generated images.
# ----------------------------------------------------------------------------

GENERATION_CATEGORIES = ("presence", "color", "shape", "count", "size",
                         "position", "overall")


def _match_by_kind(parsed: Sequence[dict],
                   targets: Sequence[dict]) -> list[Optional[dict]]:
  """For each target, a distinct parsed object of the same (color, shape).

  Objects of one kind are paired in left-to-right order (the i-th target red
  circle from the left with the i-th parsed one), the pairing that keeps their
  order; targets left over get None.
  """
  pool = collections.defaultdict(list)
  for p in sorted(parsed, key=lambda o: (o["x"], o["y"])):
    pool[p["color"], p["shape"]].append(p)
  out = []
  for t in targets:
    same_kind = pool[t["color"], t["shape"]]
    out.append(same_kind.pop(0) if same_kind else None)
  return out


def _contains(have: Sequence, want: Sequence) -> bool:
  """Whether multiset `want` is inside multiset `have`."""
  return not collections.Counter(want) - collections.Counter(have)


def generation_scores(parsed_objects: Sequence[dict],
                      target_objects: Sequence[dict]) -> dict[str, int]:
  """Scores a generated image's parse against the scene it was asked for.

  Every category is 1 (right) or 0 (wrong):

    presence: each target (color, shape) pair is among the parsed objects,
      as a multiset (two red circles asked, two needed). Extra objects are
      allowed here (see count).
    color: each target colour is present, as a multiset, whatever the shapes
      (presence without the colour-shape binding).
    shape: the same for shapes.
    count: as many parsed objects as target objects.
    size: presence holds and every target object's matched object (same
      color and shape; objects of one kind paired left to right) has the
      target size.
    position: presence holds and the matched objects, taken in the targets'
      left-to-right order, have non-decreasing x (equal x allowed, as for
      objects stacked vertically). Relative order only: a caption fixes no
      coordinates. For a one-object target it equals presence.
    overall: all of presence, count, size and position: the image shows
      exactly the target objects, with their sizes, in their order.

  Args:
    parsed_objects: `parse_scene` of the generated image.
    target_objects: the prompt's scene, dicts with "color", "shape", "size",
      sorted left to right (extra keys such as "x", "y" are ignored).

  Returns:
    {category: 0 or 1} for each of GENERATION_CATEGORIES.
  """
  matches = _match_by_kind(parsed_objects, target_objects)
  presence = all(m is not None for m in matches)
  size = presence and all(m["size"] == t["size"]
                          for m, t in zip(matches, target_objects))
  xs = [m["x"] for m in matches] if presence else []
  position = presence and all(a <= b for a, b in zip(xs, xs[1:]))
  count = len(parsed_objects) == len(target_objects)
  scores = {
      "presence": presence,
      "color": _contains([o["color"] for o in parsed_objects],
                         [o["color"] for o in target_objects]),
      "shape": _contains([o["shape"] for o in parsed_objects],
                         [o["shape"] for o in target_objects]),
      "count": count,
      "size": size,
      "position": position,
      "overall": presence and count and size and position,
  }
  return {k: int(v) for k, v in scores.items()}


def generation_accuracy(parsed_scenes: Sequence[Sequence[dict]],
                        target_scenes: Sequence[Sequence[dict]]
                        ) -> dict[str, float]:
  """Mean of `generation_scores` over images: {category: fraction right}."""
  if len(parsed_scenes) != len(target_scenes) or not target_scenes:
    raise ValueError(f"Need as many parses as targets, and some: got "
                     f"{len(parsed_scenes)} and {len(target_scenes)}.")
  totals = collections.Counter()
  for parsed, target in zip(parsed_scenes, target_scenes):
    totals.update(generation_scores(parsed, target))
  return {k: totals[k] / len(target_scenes) for k in GENERATION_CATEGORIES}
