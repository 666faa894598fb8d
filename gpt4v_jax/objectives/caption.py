"""Image captioning: the caption task token (plus optional prompt text) after the image,
target = one reference caption.

Training samples one of the (5) references per example and epoch, COCO-style. Evaluation
decodes greedily and scores CIDEr-D / BLEU-4 against all references, and, since the shapes
scenes are known exactly, object precision/recall/F1 by parsing the caption back into objects.
"""
import numpy as np

from gpt4v_jax.data import shapes
from gpt4v_jax.data.pipeline import BadExample, decode_image, decode_text, image_to_float
from gpt4v_jax.data.tokenizer import TASK_IDS, Tokenizer
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
  """How a shapes example becomes a caption training row, a decoding prompt, and a score."""
  name = "caption"

  def __init__(self, tokenizer: Tokenizer, *, prompt: str, max_text_len: int):
    self.tokenizer = tokenizer
    self.max_text_len = max_text_len
    self._prompt_ids = [TASK_IDS["caption"]] + tokenizer.encode(prompt)
    self.prompt_len = len(self._prompt_ids) + 1  # + BOS
    self.max_new_tokens = max_text_len - self.prompt_len

  def train_example(self, example: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Data-source example -> {image [H, W, 3] float32, text/ar_mask/... [max_text_len],
    truncated [] int32 (1 if the caption was cut to fit)}.

    Raises BadExample for an image that does not decode or has the wrong size, and for a
    missing, empty or non-UTF-8 caption.
    """
    image = decode_image(example["image"], shapes.IMAGE_SIZE)
    caption = random_caption(example, rng)
    t = self.tokenizer
    row, truncated = prefix_lm.make_row(self._prompt_ids, t.encode(caption), bos_id=t.bos_id,
                                        eos_id=t.eos_id, pad_id=t.pad_id,
                                        max_len=self.max_text_len)
    return dict(image=image_to_float(image), truncated=np.int32(truncated), **row)

  def eval_items(self, example: dict) -> list[tuple[dict[str, np.ndarray], dict]]:
    """Data-source example -> its one eval item: ({image, prompt [prompt_len], prompt_mask
    [prompt_len]}, the example itself, which `score` reads the references from)."""
    t = self.tokenizer
    image = decode_image(example["image"], shapes.IMAGE_SIZE)
    inputs = dict(image=image_to_float(image),
                  **prefix_lm.make_prompt(self._prompt_ids, bos_id=t.bos_id, pad_id=t.pad_id,
                                          max_len=self.prompt_len))
    return [(inputs, example)]

  def score(self, examples: list[dict], predictions: list[str]) -> tuple[dict, list[dict]]:
    """Metrics over decoded captions (the infos of `eval_items`: the examples), and one
    JSON-ready record per example."""
    refs = {i: [_text(c) for c in ex["captions"]] for i, ex in enumerate(examples)}
    preds = dict(enumerate(predictions))
    bleu = caption_metrics.bleu(refs, preds)
    cider, _ = caption_metrics.cider_d(refs, preds)
    pred_objs = [shapes.parse_caption(p) for p in predictions]
    true_objs = [shapes.scene_objects(shapes.example_scene(ex)) for ex in examples]
    prf = caption_metrics.object_prf(pred_objs, true_objs)
    scene_acc = np.mean([sorted(p) == sorted(g) for p, g in zip(pred_objs, true_objs)])
    metrics = {"cider_d": cider, "bleu_4": bleu[3], "exact_match":
               caption_metrics.exact_match(preds, refs), "scene_accuracy": float(scene_acc),
               **{f"object_{k}": v for k, v in prf.items()}}
    records = [dict(id=_text(ex["id"]) if "id" in ex else i, prediction=predictions[i],
                    references=refs[i]) for i, ex in enumerate(examples)]
    return metrics, records
