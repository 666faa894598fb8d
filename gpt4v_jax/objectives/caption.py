"""Image captioning: the caption task token (plus optional prompt text) after the image,
target = one reference caption.

Training samples one of an example's references per example and epoch, COCO-style.
Evaluation decodes greedily and scores CIDEr-D / BLEU-4 against all references, plus the
metrics only the dataset can compute (`datasets.dataset_metrics`: for shapes, whose scenes are
known exactly, object precision/recall/F1 of the caption parsed back into objects).
"""
from typing import Callable

import numpy as np

from gpt4v_jax.data import datasets, images
from gpt4v_jax.data.pipeline import BadExample, decode_text
from gpt4v_jax.data.tokenizer import Tokenizer
from gpt4v_jax.evals import caption_metrics
from gpt4v_jax.objectives import prefix_lm


def _text(x) -> str:
  return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def random_caption(example: dict, rng: np.random.Generator) -> str:
  """One of the example's reference captions, drawn with `rng`; BadExample if there are
  none or the drawn one is empty or not UTF-8."""
  captions = example["captions"]
  if len(captions) == 0:
    raise BadExample("no captions")
  return decode_text(captions[rng.integers(len(captions))], "caption")


class CaptionObjective(prefix_lm.PrefixLMObjective):
  """How an example becomes a caption training row, a decoding prompt, and a score.

  `extra_metrics(examples, predictions) -> metrics`: the dataset's own caption metrics
  (`datasets.dataset_metrics`), reported beside CIDEr-D and BLEU."""
  name = "caption"

  def __init__(self, tokenizer: Tokenizer, *, prompt: str, max_text_len: int,
               preprocess: images.Preprocess,
               extra_metrics: Callable[[list[dict], list[str]], dict] | None = None):
    self.tokenizer = tokenizer
    self.preprocess = preprocess
    self.extra_metrics = extra_metrics
    self.max_text_len = max_text_len
    self._prompt_ids = [tokenizer.task_ids["caption"]] + tokenizer.encode(prompt)
    self.prompt_len = len(self._prompt_ids) + 1  # + BOS
    self.max_new_tokens = max_text_len - self.prompt_len

  def prompt_ids(self, text: str = "") -> list[int]:
    """The decoding prompt's ids after BOS: `[caption] config prompt`, or `[caption] text`
    for another prompt text."""
    if not text:
      return list(self._prompt_ids)
    return [self.tokenizer.task_ids["caption"]] + self.tokenizer.encode(text)

  def train_example(self, example: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Standard example -> {image [S, S, 3] float32, text/ar_mask/... [max_text_len],
    truncated [] int32 (1 if the caption was cut to fit)}.

    Raises BadExample for a missing image or one that does not decode, and for a missing,
    empty or non-UTF-8 caption.
    """
    image = datasets.example_image(example, self.preprocess, rng)
    caption = random_caption(example, rng)
    t = self.tokenizer
    row, truncated = prefix_lm.make_row(self._prompt_ids, t.encode(caption), bos_id=t.bos_id,
                                        eos_id=t.eos_id, pad_id=t.pad_id,
                                        max_len=self.max_text_len)
    return dict(image=image, truncated=np.int32(truncated), **row)

  def eval_items(self, example: dict) -> list[tuple[dict[str, np.ndarray], dict]]:
    """Standard example -> its one eval item: ({image, prompt [prompt_len], prompt_mask
    [prompt_len]}, the example itself, which `score` reads the references from)."""
    t = self.tokenizer
    inputs = dict(image=datasets.example_image(example, self.preprocess),
                  **prefix_lm.make_prompt(self._prompt_ids, bos_id=t.bos_id, pad_id=t.pad_id,
                                          max_len=self.prompt_len))
    return [(inputs, example)]

  def score(self, examples: list[dict], predictions: list[str]) -> tuple[dict, list[dict]]:
    """Metrics over decoded captions (the infos of `eval_items`: the examples), and one
    JSON-ready record per example."""
    refs = {i: [_text(c) for c in ex["captions"]] for i, ex in enumerate(examples)}
    preds = dict(enumerate(predictions))
    # PTB tokens (as published COCO numbers) where Java runs, the built-in tokenizer else.
    corpus = caption_metrics.tokenize_corpus(refs, preds)
    bleu = caption_metrics.bleu_from_tokens(corpus)
    cider, _ = caption_metrics.cider_d_from_tokens(corpus)
    metrics = {"cider_d": cider, "bleu_4": bleu[3],
               "exact_match": caption_metrics.exact_match(preds, refs)}
    if self.extra_metrics is not None:
      metrics.update(self.extra_metrics(examples, predictions))
    records = [dict(id=_text(ex["id"]) if "id" in ex else i, prediction=predictions[i],
                    references=refs[i]) for i, ex in enumerate(examples)]
    return metrics, records
