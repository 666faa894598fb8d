"""Captioning, VQA and text-to-image trained together: one model, one loop, on the embedded
`shapes` dataset.

  python -m gpt4v_jax.main --config=configs/shapes_caption.py --workdir=workdirs/shapes_caption
  python -m gpt4v_jax.main --config=configs/shapes_vqvae.py --workdir=workdirs/shapes_vqvae
  python -m gpt4v_jax.main --config=configs/shapes_t2i.py --workdir=workdirs/shapes_t2i
  python -m gpt4v_jax.main --config=configs/shapes_multitask.py --workdir=workdirs/multitask
  python -m gpt4v_jax.main --config=configs/shapes_multitask.py:tiny --workdir=/tmp/t \
      --config.objective.mixture.text_to_image.image_tokenizer=/tmp/vq_tiny

Variants as in shapes_caption ("" or "tiny"). Everything but the objective and the vocabulary
is shapes_caption's, each part's own keys come from its single-task config, and the weights'
shares of the batch are how many rows of every batch each task gets, each task's rows at its
own length (`objectives/mixture.py`). Text-to-image needs the VQ-VAE run first, as in
shapes_t2i.py, and the default starts from the text-to-image run's params.
"""
import ml_collections

from configs import shapes_caption, shapes_t2i, shapes_vqa


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = shapes_caption.get_config(arg)
  vqa_config = shapes_vqa.get_config(arg)
  caption, vqa = c.objective, vqa_config.objective
  t2i_config = shapes_t2i.get_config(arg)
  t2i = dict(t2i_config.objective)
  del t2i["kind"]
  # Weights 2:2:1.5 (caption, VQA, text-to-image; 6, 6 and 4 rows of every batch of 16): the
  # run starts from the text-to-image run, so captioning is learnt afresh; of the weights
  # tried, 2:2:1.5 left the tasks least behind their single-task runs (docs/multitask.md).
  # VQA dialogues of 91 slots (about 5 of an image's 6-8 questions fit; the single-task run's
  # 114 fit them all): the row length every measured mixture above trained with.
  c.objective = dict(
      kind="mixture",
      mixture=dict(caption=dict(weight=2.0, prompt=caption.prompt,
                                max_text_len=caption.max_text_len),
                   vqa=dict(weight=2.0, max_text_len=91, max_question_len=vqa.max_question_len,
                            max_new_tokens=vqa.max_new_tokens,
                            questions_per_row=vqa.questions_per_row),
                   text_to_image=dict(weight=1.5, **t2i)))
  c.model.vocab_size = t2i_config.model.vocab_size
  if not arg:  # "tiny" keeps shapes_caption's fresh init.
    # Pretrain, then transfer: the default starts every param from the text-to-image run,
    # whose frozen encoder and projector are the caption run's and whose 3-layer decoder
    # writes codes; this run teaches that model captions and answers beside. Text-to-image
    # is the task least able to learn from nothing on a quarter of the rows (the other
    # starting points: docs/multitask.md).
    c.model.depth = t2i_config.model.depth
    # 12,000 steps: what about half an hour of 2 CPU cores buys (timings: docs/multitask.md).
    c.train.steps = 12000
    c.init = dict(workdir="workdirs/shapes_t2i", params=("vit", "projector", "decoder"))
  # The caption run's peak learning rate (2e-3): half of it spared captioning an early dip
  # but slowed VQA (docs/multitask.md).
  return c
