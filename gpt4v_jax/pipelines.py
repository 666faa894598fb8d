"""Hugging Face-style pipelines over `Model`: one call per task, plain dicts out.

  from gpt4v_jax import pipeline
  captioner = pipeline("image-to-text", model="models/shapes_caption")
  captioner("photo.jpg")                  # -> [{"generated_text": "a small red circle ..."}]
  captioner(["a.jpg", "b.png"])           # -> [[{...}], [{...}]]
  vqa = pipeline("visual-question-answering", model="models/shapes_vqa")
  vqa(image="photo.jpg", question="what color is the circle?")  # [{"answer", "score"}]

Tasks and what they return (the shapes of the Hugging Face pipelines of the same names):
  image-to-text              one image -> [{"generated_text": str}]; a list -> a list of those
  visual-question-answering  one (image, question) -> [{"answer": str, "score": float}]; a
                             list -> a list of those. score: the answer's probability,
                             exp(Model.score) of the answer and EOS given image and question
  text-to-image              one prompt -> [{"image": PIL.Image}]; a list -> a list of those
  summarization              one text -> [{"summary_text": str}]; a list -> one dict per text
  image-feature-extraction   one image -> float32 numpy [tokens, width] (pool=True: [width]);
                             a list -> a list of those (numpy arrays, not nested lists)

An image is a path (str or os.PathLike), the file's bytes, a PIL image or a uint8 [H, W, 3]
numpy array. A list of inputs goes through the model in one call (the model batches it).
Keywords given to `pipeline` (max_new_tokens, num_beams, temperature, seed, ...) are the
defaults of every call; keywords given to a call override them for that call.
"""
import os
from typing import Any, Sequence

import numpy as np
import PIL.Image

from gpt4v_jax.model import Model

_SINGLE_IMAGE = (str, os.PathLike, bytes, PIL.Image.Image, np.ndarray)


class Pipeline:
  """A task bound to a model. `task`: its name; `model`: the `Model`; `kwargs`: the default
  keywords of every call."""
  task: str = ""
  part: str | None = None  # The Model.part the task needs (checked when the pipeline is made).

  def __init__(self, model: Model, **kwargs):
    if self.part is not None:
      model.part(self.part)  # ValueError naming what the model was trained on.
    self.model, self.kwargs = model, kwargs

  def _options(self, kwargs: dict) -> dict:
    return {**self.kwargs, **kwargs}

  def __repr__(self) -> str:
    return f"{type(self).__name__}(task={self.task!r}, model={self.model.info!r})"


class ImageToText(Pipeline):
  """Captions: `pipe(images, prompt="", **generate_kwargs)` (see the module docstring)."""
  task, part = "image-to-text", "caption"

  def __call__(self, images, **kwargs) -> list:
    single, images = _as_list(images)
    texts = self.model.caption(images, **self._options(kwargs))
    out = [[{"generated_text": t}] for t in texts]
    return out[0] if single else out


class VisualQuestionAnswering(Pipeline):
  """Answers: `pipe(image=..., question=...)`, `pipe(images, questions)` (one question per
  image; one image or one question is used for every row), `pipe({"image", "question"})` or
  a list of such dicts."""
  task, part = "visual-question-answering", "vqa"

  def __call__(self, image=None, question=None, **kwargs) -> list:
    single, images, questions = _vqa_rows(image, question)
    options = self._options(kwargs)
    pixels = self.model.images(images)  # Preprocessed once for answering and scoring.
    answers = self.model.answer(pixels, questions, **options)
    vqa = self.model.part("vqa")
    log_probs = self.model.score(pixels, [vqa.prompt_ids(q) for q in questions], answers)
    out = [[{"answer": a, "score": float(np.exp(p))}] for a, p in zip(answers, log_probs)]
    return out[0] if single else out


class TextToImage(Pipeline):
  """Images drawn from captions: `pipe(prompts, cfg_scale=, temperature=, top_k=, top_p=,
  seed=)`, the run's sampling settings unless given; the same seed gives the same images."""
  task, part = "text-to-image", "text_to_image"

  def __call__(self, prompts, **kwargs) -> list:
    single, prompts = _as_texts(prompts, "prompt")
    drawn = self.model.text_to_image(prompts, **self._options(kwargs))
    out = [[{"image": PIL.Image.fromarray(np.asarray(x, np.uint8))}] for x in drawn]
    return out[0] if single else out


class Summarization(Pipeline):
  """The text-only prompt objective's output: `pipe(texts, **generate_kwargs)`; a flat list,
  one dict per text, as Hugging Face's summarization pipeline returns."""
  task, part = "summarization", "prompt"

  def __call__(self, texts, **kwargs) -> list[dict]:
    _, texts = _as_texts(texts, "text")
    return [{"summary_text": s} for s in self.model.summarize(texts, **self._options(kwargs))]


class ImageFeatureExtraction(Pipeline):
  """The vision encoder's output: `pipe(images, pool=False)`: per image a float32 numpy
  [tokens, width] (every patch token), or [width] (their mean) with pool=True."""
  task = "image-feature-extraction"

  def __init__(self, model: Model, **kwargs):
    # A text-to-image model has an encoder's params, but no loss ever ran it: they are its
    # initialisation. A VQ-VAE has none.
    parts = getattr(model.objective, "parts", {model.objective.name: model.objective})
    if "vit" not in model.params or not any(getattr(p, "runs_images", True)
                                            for p in parts.values()):
      raise ValueError(f"This model (trained on {sorted(parts)}) has no trained image "
                       "encoder: load one trained on an image task (caption, vqa, ...) to "
                       "extract image features.")
    super().__init__(model, **kwargs)

  def __call__(self, images, **kwargs) -> np.ndarray | list[np.ndarray]:
    single, images = _as_list(images)
    pool = self._options(kwargs).get("pool", False)
    features = list(self.model.embed(images, pool=pool))
    return features[0] if single else features


TASKS = {p.task: p for p in (ImageToText, VisualQuestionAnswering, TextToImage, Summarization,
                             ImageFeatureExtraction)}


def pipeline(task: str, model: str | os.PathLike | Model, **kwargs) -> Pipeline:
  """The pipeline of `task` (a key of TASKS) on `model`: a `Model`, or a model directory or
  training workdir to load with `Model.from_pretrained`. `kwargs` are the default keywords
  of every call (generation settings: max_new_tokens, num_beams, temperature, seed, ...).

  Raises ValueError for an unknown task, or one the model was not trained on."""
  if task not in TASKS:
    raise ValueError(f"Unknown task {task!r}: expected one of {sorted(TASKS)}.")
  if not isinstance(model, Model):
    model = Model.from_pretrained(model)
  return TASKS[task](model, **kwargs)


def _is_single_image(x: Any) -> bool:
  """One image (not a batch): a 4-D array is a batch of uint8 [H, W, 3] images."""
  return isinstance(x, _SINGLE_IMAGE) and not (isinstance(x, np.ndarray) and x.ndim == 4)


def _as_list(images) -> tuple[bool, list]:
  """(whether `images` is one image, the images as a list)."""
  if _is_single_image(images):
    return True, [images]
  return False, list(images)


def _as_texts(texts: str | Sequence[str], what: str) -> tuple[bool, list[str]]:
  """(whether `texts` is one text, the texts as a list); TypeError for a non-str item."""
  single = isinstance(texts, str)
  texts = [texts] if single else list(texts)
  for x in texts:
    if not isinstance(x, str):
      raise TypeError(f"Expected a {what} as str (or a list of them), got {type(x).__name__}.")
  return single, texts


def _vqa_rows(image, question) -> tuple[bool, list, list[str]]:
  """VQA's call forms -> (whether it is one row, images, questions), one of each per row."""
  if question is None:  # {"image", "question"} or a list of them.
    if image is None:
      raise TypeError("Pass image= and question=, or {'image': ..., 'question': ...} dicts.")
    single = isinstance(image, dict)
    rows = [image] if single else list(image)
    try:
      return single, [r["image"] for r in rows], [r["question"] for r in rows]
    except (KeyError, TypeError):
      raise TypeError("Without question=, pass a dict {'image': ..., 'question': ...} or a "
                      "list of them.") from None
  single_image, images = _as_list(image)
  single_question, questions = _as_texts(question, "question")
  if single_image and not single_question:
    images = images * len(questions)
  elif single_question and not single_image:
    questions = questions * len(images)
  elif len(images) != len(questions):
    raise ValueError(f"{len(images)} images for {len(questions)} questions: pass one question "
                     "per image, or one image or one question for all.")
  return single_image and single_question, images, questions
