"""Summarization on the embedded `shapes` dataset: text only, no image.

  python -m gpt4v_jax.main --config=configs/shapes_summarize.py --workdir=workdirs/shapes_summarize
  python -m gpt4v_jax.main --config=configs/shapes_summarize.py:tiny --workdir=/tmp/t

Every shapes example carries a verbose description of its scene (objects numbered left to
right, then each one's size, color and shape in its own sentence, shuffled) whose summary is
the one-line caption ("a large red circle and a small blue square."): the decoder alone
learns to gather the facts. Scored with ROUGE-1/2/L (rouge-score) and exact match. Data,
model and optimizer are shapes_caption's; the argument picks "" (the default) or "tiny".
"""
import ml_collections

from configs import shapes_caption


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = shapes_caption.get_config(arg)
  # The longest description is 121 `words:shapes` tokens (4 objects: 21 + 4 x 25), the
  # longest summary 20 + EOS, after BOS and the task token: 144 slots.
  c.objective = dict(kind="prompt", max_text_len=144, max_prompt_len=121, metric="rouge",
                     use_images=False)
  if not arg:
    c.train.update(steps=4000, checkpoint_every=2000)
  return c
