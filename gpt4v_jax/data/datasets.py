"""The data seam: `config.data` -> the dataset's splits as sources of standard examples, and
the image preprocessing every objective applies.

Every split is a random-access source (`len(source)`, `source[i]`) of dicts with these keys,
whatever the dataset (a "text" is UTF-8 `bytes`, as TFDS data sources return it, or `str`):

  id:             str or int, unique within the split
  image:          bytes, the encoded image file as stored (JPEG, PNG, WebP, GIF, ...); b""
                  when the row has none (a text-only row, or a missing file: see image_path)
  image_path:     str, where the image came from ("" if nowhere); a non-empty path with
                  image b"" is a file that was missing when the dataset was built
  captions:       list of texts (may be empty)
  questions:      list of texts
  answers:        list (one per question) of lists of texts (VQAv2 has 10 per question)
  question_types: list of texts, one per question (may be empty: unknown)
  answer_types:   list of texts, one per question (may be empty: unknown)
  prompts, targets: lists of texts, prompt -> target pairs (any image-conditioned text task,
                  or text alone when there is no image)
  scene:          (shapes only) the scene's objects, which shapes' own evals score against

Objectives read these keys and nothing else, so none of them knows which dataset it trains
on. Texts and images are decoded by the objectives (`pipeline.decode_text`,
`images.preprocess`), inside the input pipeline, so that a bad one is a bad example the
pipeline skips and counts (`config.data.on_bad_example`), never a crash mid-run.

Datasets (`config.data.name`):
  shapes         the embedded synthetic dataset (data/shapes.py), built on first use
  folder         a Hugging Face `imagefolder` directory, config.data.path (data/image_folder.py)
  coco_captions  COCO captions 2017, config.data.path (data/coco.py)
  vqav2          VQAv2 questions + annotations and COCO 2014 images, config.data.path
                 (data/vqav2.py)
The last three are converted once into array_record files under config.data.data_dir and read
from there afterwards; nothing is downloaded.
"""
from typing import Any

import ml_collections
import numpy as np

from gpt4v_jax.data import images
from gpt4v_jax.data.pipeline import BadExample

NAMES = ("shapes", "folder", "coco_captions", "vqav2")


def preprocess(data: ml_collections.ConfigDict) -> images.Preprocess:
  """The image preprocessing `config.data` states (size, resize policy, normalisation,
  train-time augmentation); a bad setting is a ValueError naming its config key."""
  try:
    return images.Preprocess(
        size=data.image_size, resize=data.resize, resample=data.resample,
        normalize=data.normalize,
        max_pixels=data.max_pixels,
        random_resized_crop=(tuple(data.random_resized_crop) if data.random_resized_crop
                             else False),
        hflip=data.hflip)
  except ValueError as e:  # "Preprocess.size=0: ..." -> "config.data.image_size=0: ..."
    message = str(e).removeprefix("Preprocess.")
    if message.startswith("size="):
      message = "image_size=" + message.removeprefix("size=")
    raise ValueError(f"config.data.{message}") from None


def open_splits(data: ml_collections.ConfigDict) -> dict[str, Any]:
  """{split name: source of standard examples} of the dataset `config.data` names, building
  its array_record files first if they are not there yet."""
  if data.name == "shapes":
    from gpt4v_jax.data import shapes  # Imported here: only shapes runs need its builder.
    return shapes.encoded_sources(shapes.load_builder(data.data_dir, data.builder_config))
  if data.name not in NAMES:
    raise ValueError(f"config.data.name={data.name!r}: expected one of {NAMES}.")
  if data.name == "folder":
    from gpt4v_jax.data import image_folder as module
  elif data.name == "coco_captions":
    from gpt4v_jax.data import coco as module
  else:
    from gpt4v_jax.data import vqav2 as module
  return module.load(data.path, data.data_dir)


def dataset_metrics(name: str) -> dict[str, Any]:
  """{objective kind: what only this dataset can score}. For shapes, whose scenes are known:
  "caption", fn(examples, predictions) -> metrics (captions parsed back into objects and
  scored against the scene: object precision/recall/F1, scene accuracy); "contrastive", the
  retrieval keys (images and captions with the same set of objects are interchangeable) and
  zero-shot tasks of `objectives/contrastive.py`. Other datasets have none."""
  if name == "shapes":
    from gpt4v_jax.evals import shapes_metrics
    return {"caption": shapes_metrics.caption_object_metrics,
            "contrastive": dict(image_key=shapes_metrics.image_key,
                                text_key=shapes_metrics.text_key,
                                zero_shot=shapes_metrics.zero_shot_tasks())}
  return {}


def example_image(example: dict, p: images.Preprocess,
                  rng: np.random.Generator | None = None) -> np.ndarray:
  """The example's image preprocessed: float32 [p.size, p.size, 3] (`images.preprocess`;
  `rng` draws the train-time augmentation, None evaluates). Raises BadExample for a row
  without an image, a file that was missing when the dataset was built, and any image
  `images.preprocess` rejects, naming the file where there is one."""
  path = example.get("image_path", "")
  if not len(example["image"]):
    raise BadExample(f"image file {path} was missing when the dataset was built" if path
                     else "the example has no image")
  try:
    return images.preprocess(example["image"], p, rng)
  except BadExample as e:
    raise BadExample(f"{path}: {e}" if path else str(e)) from None
