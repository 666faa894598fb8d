"""Visual question answering on your own images: a Hugging Face `imagefolder` directory.

  python -m gpt4v_jax.main --config=configs/folder_caption.py --config.data.path=DIR \
      --workdir=workdirs/folder_caption
  python -m gpt4v_jax.main --config=configs/folder_vqa.py --config.data.path=DIR \
      --workdir=workdirs/folder_vqa

DIR/<split>/metadata.jsonl rows give `question` with `answer` or `answers` (all of them are
scored, by the official VQA rules), optionally `question_type` and `answer_type` (accuracy is
reported per type). As shapes_vqa, the default starts every param from the caption run on the
same folder (`config.init`; set --config.init.workdir="" to train from scratch); text and
images as folder_caption. The argument: "" (default) or "tiny".
"""
import ml_collections

from configs import folder_caption, shapes_vqa


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = shapes_vqa.get_config(arg)
  caption = folder_caption.get_config(arg)
  c.data, c.tokenizer = caption.data, caption.tokenizer
  c.model.vocab_size = caption.model.vocab_size
  c.evals.update(during_splits=caption.evals.during_splits,
                 final_splits=caption.evals.final_splits)
  # Byte tokens: a question of up to 64 bytes, its answer up to 16, a dialogue of up to 4.
  c.objective.update(max_question_len=64, max_new_tokens=17, questions_per_row=4,
                     max_text_len=2 + 4 * (1 + 64 + 17))
  if not arg:
    # From the folder's caption run, as one stage: shapes' relation curriculum is its own.
    c.init.workdir = "workdirs/folder_caption"
    c.train.update(steps=12000, checkpoint_every=3000)
  return c
