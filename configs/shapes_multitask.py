"""Captioning and VQA trained together, one model and one loop, on the embedded `shapes` dataset.

  python -m gpt4v_jax.main --config=configs/shapes_multitask.py --workdir=workdirs/multitask
  python -m gpt4v_jax.main --config=configs/shapes_multitask.py:tiny --workdir=/tmp/t

Variants as in shapes_caption ("" or "tiny"). Everything but the objective is shapes_caption's,
each part's own keys come from its single-task config, and the weights set how many rows of a
batch each task gets. Another task joins as one more `mixture` entry (its kind and keys).
"""
import ml_collections

from configs import shapes_caption, shapes_vqa


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = shapes_caption.get_config(arg)
  caption, vqa = c.objective, shapes_vqa.get_config(arg).objective
  # Every row has one layout and length, so it fits the longest task: a caption's 124 slots.
  # A batch step then costs what a caption step costs.
  c.objective = dict(
      kind="mixture", max_text_len=caption.max_text_len,
      mixture=dict(caption=dict(weight=1.0, prompt=caption.prompt),
                   vqa=dict(weight=1.0, max_new_tokens=vqa.max_new_tokens)))
  return c
