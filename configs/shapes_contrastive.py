"""Contrastive image-text pretraining (SigLIP) on the embedded `shapes` dataset.

  python -m gpt4v_jax.main --config=configs/shapes_contrastive.py \
      --workdir=workdirs/shapes_contrastive
  python -m gpt4v_jax.main --config=configs/shapes_contrastive.py:tiny --workdir=/tmp/t

The argument picks a variant, as in shapes_caption: "" (the default CPU run; timings and
results: docs/contrastive.md) or "tiny" (a seconds-long smoke run, used by the tests). Data,
model, mesh and checkpointing are shapes_caption's; this file sets the objective, the batch
and the run length. Its encoder initialises caption and VQA runs through `config.init`
(`--config.init.workdir=workdirs/shapes_contrastive`).
"""
import ml_collections

from configs import shapes_caption


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = shapes_caption.get_config(arg)
  # A text row: BOS, task token, caption (<= 23 words and marks), EOS. SigLIP's sigmoid loss
  # ("softmax" is CLIP's) between the ViT's tokens pooled by attention (SigLIP's MAP head)
  # and the decoder's state at EOS (read causally, as CLIP's text tower does, so the decoder
  # stays a left-to-right model the caption and VQA runs can start from).
  c.objective = dict(kind="contrastive", max_text_len=26, embed_dim=128, loss="sigmoid",
                     image_pool="map", text_pool="last")
  if not arg:
    # Contrastive learning needs negatives: every image meets every text of the batch, so a
    # batch of 256 gives each image 255 wrong captions per step.
    c.data.global_batch_size = 256
    # ~610 ms a step on 2 CPU cores: 1,800 steps (461k pairs) are the 20-minute budget.
    c.train.update(steps=1800, checkpoint_every=600)
    c.evals.update(every=600)
  return c
