"""Prompt -> target: any text task, conditioned on the example's image when it has one, on
the text alone when it has none (summarization, a text-only instruction row).

  [image tokens][BOS][prompt task][prompt tokens...] [target tokens...][EOS]
  prefix: full attention                             causal; the loss is on target and EOS

A row without an image keeps its image slots, hidden from every token (`image_mask`): with
RoPE's relative positions that is the decoder alone on the text, so one batch can mix rows
with and without images. With `use_images=False` no row shows an image and the model runs
without the encoder at all (`GPT4V(None, ...)`), as text-to-image does.

Training samples one of an example's (prompt, target) pairs per example and epoch.
Evaluation decodes every pair's prompt greedily and scores the target with ROUGE-1/2/L
F-measures (`metric="rouge"`, the rouge-score package, for summaries) or exact match.
"""
import jax
import jax.numpy as jnp
import numpy as np
from rouge_score import rouge_scorer

from gpt4v_jax import decode
from gpt4v_jax.data import datasets, images
from gpt4v_jax.data.pipeline import BadExample, decode_text
from gpt4v_jax.data.tokenizer import Tokenizer
from gpt4v_jax.objectives import prefix_lm

METRICS = ("rouge", "exact_match")
_ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


class PromptObjective(prefix_lm.PrefixLMObjective):
  """How an example's (prompt, target) pairs become training rows, decoding prompts and a
  score."""
  name = "prompt"

  def __init__(self, tokenizer: Tokenizer, *, max_text_len: int, max_prompt_len: int,
               metric: str, use_images: bool, preprocess: images.Preprocess):
    if metric not in METRICS:
      raise ValueError(f"config.objective.metric={metric!r}: expected one of {METRICS}.")
    self.tokenizer = tokenizer
    self.preprocess = preprocess
    self.metric = metric
    self.runs_images = use_images  # Whether the loss runs the model with images at all.
    self.max_text_len = max_text_len
    self.max_prompt_len = max_prompt_len
    self.prompt_len = 2 + max_prompt_len  # BOS, task token, prompt.
    self.max_new_tokens = max_text_len - self.prompt_len
    if self.max_new_tokens < 2:  # At least one target token and EOS.
      raise ValueError(f"config.objective.max_text_len={max_text_len} leaves no room for a "
                       f"target after a prompt of max_prompt_len={max_prompt_len}: it must "
                       f"be >= {self.prompt_len + 2}.")

  def _pairs(self, example: dict) -> list[tuple[str, str]]:
    """The example's (prompt, target) texts; BadExample if there are none, the lists differ
    in length, or a text is empty or not UTF-8."""
    prompts, targets = example["prompts"], example["targets"]
    if len(prompts) == 0 or len(prompts) != len(targets):
      raise BadExample(f"{len(prompts)} prompts and {len(targets)} targets")
    return [(decode_text(p, "prompt"), decode_text(t, "target"))
            for p, t in zip(prompts, targets)]

  def prompt_ids(self, prompt: str) -> list[int]:
    """`[prompt task] prompt` ids (BOS is added by prefix_lm); BadExample if the prompt is
    longer than max_prompt_len tokens (cutting it could cut what the target needs)."""
    ids = self.tokenizer.encode(prompt)
    if len(ids) > self.max_prompt_len:
      raise BadExample(f"prompt of {len(ids)} tokens is longer than "
                       f"max_prompt_len={self.max_prompt_len}")
    return [self.tokenizer.task_ids["prompt"]] + ids

  def _image(self, example: dict, rng=None) -> tuple[np.ndarray | None, bool]:
    """(image [S, S, 3] float32 or None, whether the row shows it): rows without an image
    file show none; a file that is missing or does not decode is a BadExample."""
    if not self.runs_images:
      return None, False
    if not len(example["image"]) and not example.get("image_path"):  # No file at all.
      s = self.preprocess.size
      return np.zeros((s, s, 3), np.float32), False
    return datasets.example_image(example, self.preprocess, rng), True

  def batch_spec(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    """prefix_lm's rows plus `has_image` [batch] bool; no `image` without images."""
    spec = dict(super().batch_spec(batch_size),
                has_image=jax.ShapeDtypeStruct((batch_size,), jnp.bool_))
    if not self.runs_images:
      del spec["image"]
    return spec

  def train_example(self, example: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Standard example -> {image [S, S, 3] float32 (with use_images), has_image [] bool,
    text/ar_mask/... [max_text_len], truncated [] int32 (1 if the target was cut)} for one
    rng-chosen pair."""
    image, has_image = self._image(example, rng)
    pairs = self._pairs(example)
    prompt, target = pairs[rng.integers(len(pairs))]
    t = self.tokenizer
    row, truncated = prefix_lm.make_row(self.prompt_ids(prompt), t.encode(target),
                                        bos_id=t.bos_id, eos_id=t.eos_id, pad_id=t.pad_id,
                                        max_len=self.max_text_len)
    out = dict(has_image=np.bool_(has_image), truncated=np.int32(truncated), **row)
    return out if image is None else dict(out, image=image)

  def loss(self, model, params, model_state: dict, batch: dict, rng: jax.Array,
           deterministic: bool) -> tuple[jax.Array, dict, dict]:
    """(mean next-token loss over target tokens, metrics, model_state unchanged); rows
    without an image have theirs hidden."""
    logits = model.apply({"params": params}, batch.get("image"), batch["text"],
                         batch["ar_mask"], batch["input_mask"], deterministic=deterministic,
                         image_mask=batch["has_image"] if self.runs_images else None,
                         rngs={"dropout": rng})
    loss, aux = prefix_lm.next_token_loss(logits, batch["targets"], batch["loss_mask"])
    return loss, aux, model_state

  def eval_items(self, example: dict) -> list[tuple[dict[str, np.ndarray], dict]]:
    """Standard example -> one item per pair: ({image (with use_images), has_image, prompt
    [prompt_len], prompt_mask [prompt_len]}, {id, prompt, target})."""
    t = self.tokenizer
    image, has_image = self._image(example)
    items = []
    for prompt, target in self._pairs(example):
      inputs = dict(has_image=np.bool_(has_image),
                    **prefix_lm.make_prompt(self.prompt_ids(prompt), bos_id=t.bos_id,
                                            pad_id=t.pad_id, max_len=self.prompt_len))
      if image is not None:
        inputs["image"] = image
      items.append((inputs, dict(id=str(example["id"]), prompt=prompt, target=target)))
    return items

  def predict(self, model, params, model_state: dict, inputs: dict) -> jax.Array:
    """Greedy continuations: [batch, max_new_tokens] int32."""
    del model_state
    t = self.tokenizer
    return decode.greedy_decode(model, params, inputs.get("image"), inputs["prompt"],
                                inputs["prompt_mask"], max_new_tokens=self.max_new_tokens,
                                eos_id=t.eos_id, pad_id=t.pad_id,
                                image_mask=inputs["has_image"] if self.runs_images else None)

  def score(self, items: list[dict], predictions: list[str]) -> tuple[dict, list[dict]]:
    """`exact_match` (stripped strings) and, with metric="rouge", the mean ROUGE-1/2/L
    F-measures (`rouge1`, `rouge2`, `rougeL`: rouge-score's, with its stemmer); one record
    per item."""
    targets = [item["target"] for item in items]
    metrics = {"exact_match": float(np.mean([p.strip() == t.strip()
                                             for p, t in zip(predictions, targets)]))}
    records = [dict(id=item["id"], prompt=item["prompt"], prediction=p, target=item["target"])
               for item, p in zip(items, predictions)]
    if self.metric == "rouge":
      scores = rouge_scores(targets, predictions)
      metrics.update({k: float(np.mean(v)) for k, v in scores.items()})
      for k, record in enumerate(records):
        record.update({name: round(float(v[k]), 4) for name, v in scores.items()})
    return metrics, records


def rouge_scores(targets: list[str], predictions: list[str]) -> dict[str, list[float]]:
  """{rouge1, rouge2, rougeL: F-measure per (target, prediction) pair}, from rouge-score
  (Porter stemmer on, as summarization papers report)."""
  scorer = rouge_scorer.RougeScorer(list(_ROUGE_TYPES), use_stemmer=True)
  per_pair = [scorer.score(t, p) for t, p in zip(targets, predictions)]
  return {name: [s[name].fmeasure for s in per_pair] for name in _ROUGE_TYPES}
