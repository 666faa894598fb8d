"""Visual question answering on the embedded `shapes` dataset.

  python -m gpt4v_jax.main --config=configs/shapes_caption.py --workdir=workdirs/shapes_caption
  python -m gpt4v_jax.main --config=configs/shapes_vqa.py:left_of \
      --workdir=workdirs/shapes_vqa_left_of
  python -m gpt4v_jax.main --config=configs/shapes_vqa.py --workdir=workdirs/shapes_vqa
  python -m gpt4v_jax.main --config=configs/shapes_vqa.py:tiny --workdir=/tmp/t

(`python -m experiments.reproduce --only shapes_vqa` runs the chain.) The argument picks a
variant: "" (the default CPU run: the second stage of the curriculum, from the "left_of" run;
both stages together are about 22 minutes of training on 2 cores; timings and results:
docs/vqa.md), "left_of" (its first stage, from the caption run) or "tiny" (a seconds-long smoke
run, used by the tests). Data, model, mesh, optimizer and checkpointing are shapes_caption's,
imported from there (run from the repository root, as `make` does); this file sets the
objective, the run length and evals.
"""
import ml_collections

from configs import shapes_caption


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = arg or ""
  c = shapes_caption.get_config("tiny" if arg == "tiny" else "")
  # A training row is a dialogue of all (6-8) questions of its image in random order: BOS,
  # then per question the task token, question, answer, EOS. A question is at most 12 tokens
  # (the generator's bound: "is the large purple triangle right of the large yellow
  # triangle?"), its answer one word, so 2 + 8 * 14 = 114 slots hold every image's questions,
  # and an eval prompt is [BOS][vqa] + 12 slots. Every answer is one token + EOS. A dialogue
  # row gives one encoder pass every answer of its image, so it learns faster per step than
  # one question per row (questions_per_row=1, max_text_len=16; docs/vqa.md).
  c.objective = dict(kind="vqa", max_text_len=114, max_question_len=12, max_new_tokens=2,
                     questions_per_row=8, relations_as="asked")

  if arg == "tiny":  # shapes_caption's tiny run length, evals and fresh init.
    return c
  if arg not in ("", "left_of"):
    raise ValueError(f"Unknown config variant {arg!r}; expected '', 'left_of' or 'tiny'.")
  # A relation's answer is an XOR of its word (left/right) and which named object is further
  # left: asked both ways from the start, training never leaves chance. A curriculum: the
  # first stage asks every relation as "left of" (the answer is then the objects' order, found
  # at once), the second as the data asks them (docs/vqa.md, "Why relation answers...").
  # 3,000 + 9,000 steps (192k images, ~1.4M questions): about half an hour of 2 CPU cores.
  if arg == "left_of":
    # Pretrain, then transfer (PaliGemma's recipe): every param starts from the caption
    # run, whose encoder already tells shapes apart and whose decoder lists objects left to
    # right (results against training from scratch: docs/vqa.md).
    c.init = dict(workdir="workdirs/shapes_caption", params=("vit", "projector", "decoder"))
    c.objective.relations_as = "left_of"
    c.train.update(steps=3000, checkpoint_every=3000)
  else:
    c.init = dict(workdir="workdirs/shapes_vqa_left_of",
                  params=("vit", "projector", "decoder"))
    c.objective.relations_as = "asked"
    c.train.update(steps=9000, checkpoint_every=3000)
  # 200 validation examples are ~1,400 questions; final evals ask all ~7,000 of 1,000.
  c.evals.every = 3000
  return c
