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
  # Text row: BOS, task token, question, answer, EOS. Question + answer is at most 67 bytes
  # (measured over all four splits; also the generator's bound: its longest question, "is the
  # large purple triangle right of the large yellow triangle?", has 64 bytes and a yes/no
  # answer), so 70 slots fit every row. The longest answer is "triangle": 8 bytes + EOS.
  c.objective = dict(kind="vqa", max_text_len=70, max_new_tokens=9)

  if not arg:  # "tiny" keeps shapes_caption's tiny run length and evals.
    # A row is 16 image + 70 text tokens (caption: 16 + 124). A 600-step probe with the
    # earlier 4-layer decoder (8.7 GFLOP/step) ran at 0.82 s/step on a CPU shared three ways,
    # ~0.23-0.3 s/step scaled to 2 idle cores; the 2-layer decoder is cheaper still, so
    # 4,800 steps (77k questions, one per image and epoch) stay under ~20 min of training.
    c.train.steps = 4800
    # 200 validation examples are ~1,400 questions; final evals ask all ~7,000 of 1,000.
    c.evals.every = 1200
  return c
