"""Captioning, VQA and text-to-image trained together: one model, one loop, on the embedded
`shapes` dataset.

  python -m gpt4v_jax.main --config=configs/shapes_caption.py --workdir=workdirs/shapes_caption
  python -m gpt4v_jax.main --config=configs/shapes_vqvae.py --workdir=workdirs/shapes_vqvae
  python -m gpt4v_jax.main --config=configs/shapes_t2i.py --workdir=workdirs/shapes_t2i
  python -m gpt4v_jax.main --config=configs/shapes_multitask.py:left_of \
      --workdir=workdirs/shapes_multitask_left_of
  python -m gpt4v_jax.main --config=configs/shapes_multitask.py --workdir=workdirs/shapes_multitask
  python -m gpt4v_jax.main --config=configs/shapes_multitask.py:tiny --workdir=/tmp/t \
      --config.objective.mixture.text_to_image.image_tokenizer=/tmp/vq_tiny

(`python -m experiments.reproduce --only shapes_multitask` runs the chain.) Variants as in
shapes_vqa: "" (the default: the second stage of the relation curriculum, from the "left_of"
run), "left_of" (its first stage, from the text-to-image run) or "tiny". Everything but the
objective and the vocabulary is shapes_caption's, each part's own keys come from its
single-task config, and the weights' shares of the batch are how many rows of every batch each
task gets, each task's rows at its own length (`objectives/mixture.py`). Text-to-image needs
the VQ-VAE run first, as in shapes_t2i.py.
"""
import ml_collections

from configs import shapes_caption, shapes_t2i, shapes_vqa


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = arg or ""
  if arg not in ("", "left_of", "tiny"):
    raise ValueError(f"Unknown config variant {arg!r}; expected '', 'left_of' or 'tiny'.")
  variant = "tiny" if arg == "tiny" else ""  # The single-task configs' sizes and keys.
  c = shapes_caption.get_config(variant)
  caption, vqa = c.objective, shapes_vqa.get_config(variant).objective
  t2i_config = shapes_t2i.get_config(variant)
  t2i = dict(t2i_config.objective)
  del t2i["kind"]
  # Weights 2:2:1.5 (caption, VQA, text-to-image; 6, 6 and 4 rows of every batch of 16): the
  # run starts from the text-to-image run, so captioning is learnt afresh; of the weights
  # tried, 2:2:1.5 left the tasks least behind their single-task runs (1.5:2:2 in the second
  # stage did worse on all three: docs/multitask.md).
  # VQA dialogues of 91 slots (about 5 of an image's 6-8 questions fit; the single-task run's
  # 114 fit them all): the row length every measured mixture above trained with.
  c.objective = dict(
      kind="mixture",
      mixture=dict(caption=dict(weight=2.0, prompt=caption.prompt,
                                max_text_len=caption.max_text_len),
                   vqa=dict(weight=2.0, max_text_len=91, max_question_len=vqa.max_question_len,
                            max_new_tokens=vqa.max_new_tokens,
                            questions_per_row=vqa.questions_per_row,
                            relations_as=vqa.relations_as),
                   text_to_image=dict(weight=1.5, **t2i)))
  c.model.vocab_size = t2i_config.model.vocab_size
  if arg == "tiny":  # shapes_caption's fresh init.
    return c
  c.model.depth = t2i_config.model.depth
  # VQA's relation curriculum (shapes_vqa.py; docs/vqa.md, "Why relation answers..."): asked
  # both ways from the start, relation answers stay at chance, so the first stage asks every
  # relation as "left of" and the second as the data asks them (3,000 + 12,000 steps:
  # timings in docs/multitask.md).
  if arg == "left_of":
    # Pretrain, then transfer: every param starts from the text-to-image run, whose frozen
    # encoder and projector are the caption run's and whose 3-layer decoder writes codes;
    # the mixture teaches that model captions and answers beside. Text-to-image is the task
    # least able to learn from nothing on a quarter of the rows (the other starting points:
    # docs/multitask.md).
    c.init = dict(workdir="workdirs/shapes_t2i", params=("vit", "projector", "decoder"))
    c.objective.mixture.vqa.relations_as = "left_of"
    c.train.update(steps=3000, checkpoint_every=3000)
    # The stage's test metrics are its record; the default's evals are the comparison.
    c.evals.final_splits = ("test",)
  else:
    c.init = dict(workdir="workdirs/shapes_multitask_left_of",
                  params=("vit", "projector", "decoder"))
    # 12,000 steps, not the 9,000 of VQA's curriculum: text-to-image, the slowest learner
    # (its own run was still gaining at 12,500 steps of 16 rows), ended 5.7 points behind at
    # 9,000 with 4 rows a step; the same 9,000 steps at half the peak rate ended no nearer
    # (docs/multitask.md). 15,000 steps in all keep the chain inside 30 minutes of training.
    c.train.update(steps=12000, checkpoint_every=3000)
  # The caption run's peak learning rate (2e-3) in both stages: half of it from the start
  # spared captioning an early dip but slowed VQA (docs/multitask.md).
  return c
