"""Visual question answering on the embedded `shapes` dataset.

  python -m gpt4v_jax.main --config=configs/shapes_vqa.py --workdir=workdirs/vqa
  python -m gpt4v_jax.main --config=configs/shapes_vqa.py:tiny --workdir=/tmp/t

The argument picks a variant, as in shapes_caption: "" (the default CPU run, ~18-24 min of
training on 2 idle cores) or "tiny" (a seconds-long smoke run, used by the tests). Data,
model, mesh, optimizer and checkpointing are shapes_caption's, imported from there (run from
the repository root, as `make` does); this file sets the objective, the run length and evals.
"""
import ml_collections

from configs import shapes_caption


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = shapes_caption.get_config(arg)
  # Text row: BOS, task token, question, answer, EOS. Question + answer is at most 13 tokens
  # (the generator's bound: its longest question, "is the large purple triangle right of the
  # large yellow triangle?", has 12 and a yes/no answer), so 16 slots fit every row. Every
  # answer is one word: one token + EOS.
  # questions_per_row > 1 trains on dialogues of several questions about one image (then
  # max_text_len must hold them: 2 + 8 * 14 fits all of any image).
  c.objective = dict(kind="vqa", max_text_len=16, max_new_tokens=2, questions_per_row=1)

  if not arg:  # "tiny" keeps shapes_caption's tiny run length and evals.
    # A row is 16 image + 16 text tokens: ~40-50 ms a step on 2 idle cores, so 12,000 steps
    # (192k questions, ~6.4 per image of the train split) are ~10 min of training.
    c.train.update(steps=12000, checkpoint_every=3000)
    # 200 validation examples are ~1,400 questions; final evals ask all ~7,000 of 1,000.
    c.evals.every = 3000
  return c
