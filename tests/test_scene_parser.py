"""The scene parser reads rendered scenes exactly and noisy ones nearly so."""
import numpy as np
import pytest
import scipy.ndimage

from gpt4v_jax.data import shapes
from gpt4v_jax.evals import scene_parser as P

NUM_SCENES = 300


@pytest.fixture(scope="module")
def scenes():
  """NUM_SCENES sampled scenes, half of them compositional."""
  rng = np.random.default_rng(0)
  return [shapes.sample_scene(rng, compositional=bool(i % 2))
          for i in range(NUM_SCENES)]


@pytest.fixture(scope="module")
def images(scenes):
  return [shapes.render_scene(s) for s in scenes]


def _perturb(images, seed, noise=0.0, blur=0.0):
  """Gaussian blur (sigma in pixels), then Gaussian noise (sigma in levels)."""
  rng = np.random.default_rng(seed)
  out = []
  for image in images:
    x = scipy.ndimage.gaussian_filter(image.astype(np.float32), (blur, blur, 0))
    x = x + rng.normal(0.0, noise, x.shape)
    out.append(np.clip(np.round(x), 0, 255).astype(np.uint8))
  return out


# ----------------------------------------------------------------------------
# Parsing.
# ----------------------------------------------------------------------------


def test_parses_rendered_scenes_exactly(scenes, images):
  for scene, image in zip(scenes, images):
    assert P.parse_scene(image) == scene
  assert P.parser_accuracy(images, scenes) == {
      "count": 1.0, "scene": 1.0, "shape": 1.0, "color": 1.0, "size": 1.0,
      "position": 1.0}


def test_every_shape_size_and_colour():
  for shape in shapes.SHAPES:
    for size in shapes.SIZES:
      for color in shapes.COLORS:
        scene = [{"shape": shape, "color": color, "size": size,
                  "x": 30.0, "y": 33.0}]
        assert P.parse_scene(shapes.render_scene(scene)) == scene


@pytest.mark.parametrize("noise, blur", [(20.0, 0.0), (0.0, 1.0), (15.0, 0.7)])
def test_robust_to_noise_and_blur(scenes, images, noise, blur):
  accuracy = P.parser_accuracy(_perturb(images, 1, noise, blur), scenes)
  assert accuracy["scene"] >= 0.98, accuracy


def test_ignores_specks_and_colour_drift(scenes, images):
  """Small blobs on the background are noise; shifted colours still map back."""
  rng = np.random.default_rng(2)
  drifted = []
  for scene, image in zip(scenes[:100], images[:100]):
    image = image.astype(np.int32)
    foreground = np.any(image != shapes.BACKGROUND_RGB, axis=-1)
    # Every object's colour moves by up to 40 levels per channel.
    image[foreground] += rng.integers(-40, 41, 3)
    # Ten 2x2 specks of palette colours, kept off objects and their gaps.
    near = scipy.ndimage.binary_dilation(foreground, iterations=3)
    for _ in range(10):
      y, x = rng.integers(0, shapes.IMAGE_SIZE - 1, 2)
      if not near[y:y + 2, x:x + 2].any():
        image[y:y + 2, x:x + 2] = shapes.COLOR_RGB[rng.choice(shapes.COLORS)]
    drifted.append(np.clip(image, 0, 255).astype(np.uint8))
  assert P.parser_accuracy(drifted, scenes[:100])["scene"] == 1.0


def test_empty_image():
  assert P.parse_scene(shapes.render_scene([])) == []


def test_parser_accuracy_counts_misses():
  red = {"shape": "circle", "color": "red", "size": "small", "x": 20.0,
         "y": 20.0}
  blue = {"shape": "square", "color": "blue", "size": "large", "x": 45.0,
          "y": 40.0}
  # The image lacks the blue square: count and scene wrong, half the objects.
  accuracy = P.parser_accuracy([shapes.render_scene([red])], [[red, blue]])
  assert accuracy == {"count": 0.0, "scene": 0.0, "shape": 0.5, "color": 0.5,
                      "size": 0.5, "position": 0.5}


def test_split_parser_accuracy():
  """On examples in the data-source format (class indices, float32 centres)."""
  source = []
  for index in range(20):
    example = shapes.make_example(0, "test", index)
    objects = example["objects"]
    source.append({"image": example["image"], "objects": {
        "shape": [shapes.SHAPES.index(o["shape"]) for o in objects],
        "color": [shapes.COLORS.index(o["color"]) for o in objects],
        "size": [shapes.SIZES.index(o["size"]) for o in objects],
        "x": np.asarray([o["x"] for o in objects], np.float32),
        "y": np.asarray([o["y"] for o in objects], np.float32)}})
  assert P.split_parser_accuracy(source, 100)["scene"] == 1.0


# ----------------------------------------------------------------------------
# Generation scores.
# ----------------------------------------------------------------------------


def _obj(color, shape, size="small", x=0.0, y=30.0):
  return {"color": color, "shape": shape, "size": size, "x": x, "y": y}


TARGET = [_obj("red", "circle", x=10.0), _obj("blue", "square", "large", 40.0)]
ALL_RIGHT = dict.fromkeys(P.GENERATION_CATEGORIES, 1)


@pytest.mark.parametrize("parsed, wrong", [
    # Exactly the target.
    (TARGET, ()),
    # The blue square is missing: nothing about it can be right.
    (TARGET[:1], ("presence", "color", "shape", "count", "size", "position",
                  "overall")),
    # Colours swapped between the shapes: each colour and shape is there,
    # but no (colour, shape) pair is.
    ([_obj("blue", "circle", x=10.0), _obj("red", "square", "large", 40.0)],
     ("presence", "size", "position", "overall")),
    # One object too many: presence holds, count does not.
    (TARGET + [_obj("green", "triangle", x=60.0)], ("count", "overall")),
    # Wrong size.
    ([TARGET[0], _obj("blue", "square", "small", 40.0)], ("size", "overall")),
    # Right objects, wrong order.
    ([_obj("red", "circle", x=50.0), _obj("blue", "square", "large", 20.0)],
     ("position", "overall")),
    # Stacked vertically (equal x): not out of order.
    ([_obj("red", "circle", x=30.0, y=10.0),
      _obj("blue", "square", "large", 30.0, 45.0)], ()),
])
def test_generation_scores(parsed, wrong):
  expected = {**ALL_RIGHT, **dict.fromkeys(wrong, 0)}
  assert P.generation_scores(parsed, TARGET) == expected


def test_generation_scores_pairs_same_kind_left_to_right():
  target = [_obj("red", "circle", "small", 10.0),
            _obj("red", "circle", "large", 40.0)]
  assert P.generation_scores(target, target) == ALL_RIGHT
  # The large one drawn first: the left one is paired with the small target.
  swapped = [_obj("red", "circle", "large", 10.0),
             _obj("red", "circle", "small", 40.0)]
  assert P.generation_scores(swapped, target) == {
      **ALL_RIGHT, "size": 0, "overall": 0}
  # Two asked, one drawn.
  assert P.generation_scores(target[:1], target)["presence"] == 0


def test_generation_scores_from_captions(scenes, images):
  """Targets read from captions have no coordinates; renders score 1."""
  rng = np.random.default_rng(3)
  for scene, image in zip(scenes[:50], images[:50]):
    caption = shapes.captions(scene, rng)[0]
    target = [{"size": z, "color": c, "shape": s}
              for z, c, s in shapes.parse_caption(caption)]
    assert P.generation_scores(P.parse_scene(image), target) == ALL_RIGHT


def test_generation_accuracy():
  parsed = [TARGET, TARGET[:1], TARGET + [_obj("green", "triangle", x=60.0)]]
  accuracy = P.generation_accuracy(parsed, [TARGET] * 3)
  assert accuracy == pytest.approx({
      "presence": 2 / 3, "color": 2 / 3, "shape": 2 / 3, "count": 1 / 3,
      "size": 2 / 3, "position": 2 / 3, "overall": 1 / 3})
  with pytest.raises(ValueError):
    P.generation_accuracy([], [])
