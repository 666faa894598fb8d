"""Contrastive image-text pretraining (SigLIP's sigmoid loss, or CLIP's softmax loss), and its
evaluation: retrieval recall, zero-shot classification and visual-similarity precision.

A training row is an image and one of its reference captions, drawn per example and epoch
(as captioning does). The model is a `GPT4V` with a `ContrastiveHead`: the ViT's tokens pooled
into an image embedding, the decoder's states over `[BOS] [contrastive] caption [EOS]` pooled
into a text embedding; every image of the global batch is scored against every text
(`models/contrastive.py`). The ViT is then the "vit" tree the other objectives take through
`config.init` (pretrain here, then caption or answer).

Evaluation embeds every image of the split and every reference caption, then reports
image->text and text->image recall@1/5/10 (`evals/retrieval.py`). Where the dataset says which
captions and images are interchangeable (`datasets.dataset_metrics(name)["contrastive"]`:
for shapes, the set of objects, since its captions do not state positions), a hit is the
query's own item or one with the same key (`i2t_recall_at_1`, ...), and the strict one-image
recall is reported beside it (`strict_i2t_recall_at_1`, ...); the dataset's zero-shot tasks
(`zero_shot_{task}_accuracy`: class prompts, ensembled, against the images) and the precision
of image->image neighbours that share the query's key (`similar_precision_at_k`) come with it.
"""
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gpt4v_jax import similarity
from gpt4v_jax.data import datasets, images
from gpt4v_jax.data.pipeline import decode_text
from gpt4v_jax.data.tokenizer import Tokenizer
from gpt4v_jax.evals import retrieval
from gpt4v_jax.models import contrastive as contrastive_lib
from gpt4v_jax.models.gpt4v import GPT4V, build_model
from gpt4v_jax.objectives.base import SingleObjective
from gpt4v_jax.objectives.caption import random_caption

# Retrieved captions kept per image in the eval records.
RECORD_TOP_K = 5


class ContrastiveObjective(SingleObjective):
  """The contrastive objective: see the module docstring.

  retrieval: the dataset's retrieval keys (`datasets.dataset_metrics`), a dict with
  image_key(example) -> hashable, text_key(text) -> hashable or None, zero_shot {task:
  (class names, [prompts] per class, label(example) -> class index or -1)}; None: strict
  recall only."""
  name = "contrastive"
  log_keys = ("batch_accuracy", "temperature", "bias")

  def __init__(self, tokenizer: Tokenizer, *, max_text_len: int, embed_dim: int, loss: str,
               image_pool: str, text_pool: str, preprocess: images.Preprocess,
               retrieval_keys: dict | None = None):
    self.tokenizer = tokenizer
    self.max_text_len = max_text_len
    self.preprocess = preprocess
    self.head = contrastive_lib.ContrastiveHead(embed_dim, loss, image_pool, text_pool)
    self.retrieval_keys = retrieval_keys
    self._task_id = tokenizer.task_ids["contrastive"]

  # ------------------------------------------------------------------------------- Model.

  def attach_head(self, model: GPT4V) -> GPT4V:
    """`model` with this objective's head, its attention pooling sized like the ViT."""
    return model.clone(contrastive=self.head.clone(
        map_heads=model.vit.num_heads, map_mlp_dim=model.vit.mlp_dim,
        dtype=model.decoder.dtype))

  def build_model(self, model_config) -> GPT4V:
    return self.attach_head(build_model(model_config, image_size=self.preprocess.size))

  def init_variables(self, model, rng: jax.Array) -> dict:
    """The ViT's, the decoder's (as a text tower) and the head's variables: no projector."""
    t, s = self.max_text_len, self.preprocess.size
    return model.init({"params": rng}, jnp.zeros((1, s, s, 3)), jnp.zeros((1, t), jnp.int32),
                      jnp.ones((1, t), bool), method=GPT4V.contrastive_outputs)

  def batch_spec(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    b, t, s = batch_size, self.max_text_len, self.preprocess.size
    return dict(image=jax.ShapeDtypeStruct((b, s, s, 3), jnp.float32),
                text=jax.ShapeDtypeStruct((b, t), jnp.int32),
                input_mask=jax.ShapeDtypeStruct((b, t), jnp.bool_),
                truncated=jax.ShapeDtypeStruct((b,), jnp.int32),
                skipped=jax.ShapeDtypeStruct((b,), jnp.int32))

  def train_flops_per_example(self, model, frozen: tuple[str, ...] = ()) -> float:
    """3x the forward's matmuls (1x for frozen trees): the ViT and the decoder over the text
    (no logits). The head's matmuls and the [batch, batch] pair scores (2 * batch *
    embed_dim per example) are left out: under 1% at the default sizes."""
    causal = self.head.text_pool == "last"
    forward = dict(vit=model.vit.forward_flops(),
                   decoder=model.decoder.forward_flops(self.max_text_len, 0, causal),
                   contrastive=0.0)
    return sum(f * (1 if name in frozen else 3) for name, f in forward.items())

  # -------------------------------------------------------------------------------- Rows.

  def text_row(self, text: str) -> tuple[np.ndarray, np.ndarray, bool]:
    """A text -> (ids [max_text_len] int32 `[BOS] [contrastive] text [EOS] [PAD]...`,
    input_mask [max_text_len] bool, whether the text was cut to fit; a cut text keeps its
    EOS, whose state the "last" pooling reads)."""
    t = self.tokenizer
    ids = [t.bos_id, self._task_id] + t.encode(text)
    truncated = len(ids) + 1 > self.max_text_len
    ids = ids[:self.max_text_len - 1] + [t.eos_id]
    row = np.full(self.max_text_len, t.pad_id, np.int32)
    row[:len(ids)] = ids
    return row, np.arange(self.max_text_len) < len(ids), truncated

  def train_example(self, example: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Standard example -> {image [S, S, 3] float32, text, input_mask [max_text_len],
    truncated [] int32}; BadExample for a missing or bad image or caption."""
    image = datasets.example_image(example, self.preprocess, rng)
    text, mask, truncated = self.text_row(random_caption(example, rng))
    return dict(image=image, text=text, input_mask=mask, truncated=np.int32(truncated))

  def loss(self, model, params, model_state: dict, batch: dict, rng: jax.Array,
           deterministic: bool) -> tuple[jax.Array, dict, dict]:
    """(contrastive loss over the global batch, metrics, model_state unchanged)."""
    image_emb, text_emb, scale, bias = model.apply(
        {"params": params}, batch["image"], batch["text"], batch["input_mask"],
        deterministic=deterministic, rngs={"dropout": rng},
        method=GPT4V.contrastive_outputs)
    loss, metrics = contrastive_lib.contrastive_loss(self.head.loss, image_emb, text_emb,
                                                     scale, bias)
    return loss, metrics, model_state

  # ---------------------------------------------------------------------------- Evaluation.

  def evaluate(self, run) -> tuple[dict, list[dict], None]:
    """Embeds the split's images and captions (and the zero-shot prompts) and scores
    retrieval; records: each image's top captions."""
    metrics, image_records, _ = run(_ImageEmbeddings(self))
    _, text_records, _ = run(_TextEmbeddings(self))
    owner = {r["id"]: k for k, r in enumerate(image_records)}
    text_records = [r for r in text_records if r["id"] in owner]  # Its image may be bad.
    image_emb = np.stack([r["embedding"] for r in image_records])
    text_emb = np.stack([r["embedding"] for r in text_records])
    text_image = np.array([owner[r["id"]] for r in text_records])
    keys = self.retrieval_keys
    image_keys = [r["key"] for r in image_records] if keys else None
    text_keys = [r["key"] for r in text_records] if keys else None
    metrics.update(retrieval.recall_at_k(image_emb, text_emb, text_image,
                                         image_keys=image_keys, text_keys=text_keys))
    if keys:
      metrics.update(retrieval.neighbour_precision(image_emb, image_keys))
      for task, (classes, prompts, _) in keys["zero_shot"].items():
        _, prompt_records, _ = run(_TextEmbeddings(self), examples=[
            dict(id=c, captions=p) for c, p in zip(classes, prompts)])
        by_class = [np.stack([r["embedding"] for r in prompt_records if r["id"] == c])
                    for c in classes]
        labels = np.array([r["labels"][task] for r in image_records])
        accuracy, _ = retrieval.zero_shot_accuracy(
            image_emb, retrieval.class_embeddings(by_class), labels)
        metrics[f"zero_shot_{task}_accuracy"] = accuracy
    scores, top = similarity.top_k(image_emb, text_emb, min(RECORD_TOP_K, len(text_emb)))
    records = [dict(id=r["id"], retrieved=[text_records[j]["text"] for j in top[i]],
                    scores=[round(float(x), 4) for x in scores[i]],
                    own=[bool(text_image[j] == i) for j in top[i]])
               for i, r in enumerate(image_records)]
    return metrics, records, None


def _id(example: dict) -> Any:
  x = example.get("id", "")
  return x.decode("utf-8") if isinstance(x, bytes) else (x.item() if hasattr(x, "item") else x)


class _ImageEmbeddings:
  """A view the evaluator runs like an objective: every image's embedding and keys."""

  def __init__(self, objective: ContrastiveObjective):
    self.o = objective

  def eval_items(self, example: dict) -> list[tuple[dict, dict]]:
    keys = self.o.retrieval_keys
    info = dict(id=_id(example))
    if keys:
      info.update(key=keys["image_key"](example),
                  labels={task: label(example) for task, (_, _, label)
                          in keys["zero_shot"].items()})
    return [(dict(image=datasets.example_image(example, self.o.preprocess)), info)]

  def predict(self, model, params, model_state, inputs) -> jax.Array:
    del model_state
    return embed_images(model, params, inputs["image"])

  def to_predictions(self, outputs: np.ndarray) -> list[np.ndarray]:
    return list(outputs)

  def score(self, infos: list[dict], predictions: list[np.ndarray]) -> tuple[dict, list]:
    return {}, [dict(info, embedding=p) for info, p in zip(infos, predictions)]


class _TextEmbeddings(_ImageEmbeddings):
  """Every reference caption's embedding (one item per caption) and its key."""

  def eval_items(self, example: dict) -> list[tuple[dict, dict]]:
    keys = self.o.retrieval_keys
    items = []
    for caption in example["captions"]:
      text = decode_text(caption, "caption")
      ids, mask, _ = self.o.text_row(text)
      info = dict(id=_id(example), text=text)
      if keys:
        info["key"] = keys["text_key"](text)
      items.append((dict(text=ids, input_mask=mask), info))
    return items

  def predict(self, model, params, model_state, inputs) -> jax.Array:
    del model_state
    return embed_texts(model, params, inputs["text"], inputs["input_mask"])


@functools.partial(jax.jit, static_argnums=0)
def embed_images(model, params, pixels):
  """[b, S, S, 3] -> the image embeddings [b, embed_dim] of a GPT4V with a contrastive head."""
  return model.apply({"params": nn.unbox(params)}, pixels, method=GPT4V.embed_images)


@functools.partial(jax.jit, static_argnums=0)
def embed_texts(model, params, text, input_mask):
  """Text rows [b, t] and their input_mask -> the text embeddings [b, embed_dim]."""
  return model.apply({"params": nn.unbox(params)}, text, input_mask,
                     method=GPT4V.embed_texts)
