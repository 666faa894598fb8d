"""Visual question answering on VQAv2, from the official files you already have (nothing
is downloaded):

  python -m gpt4v_jax.main --config=configs/vqav2.py --config.data.path=VQA \
      --workdir=workdirs/vqav2

VQA/v2_OpenEnded_mscoco_{train,val}2014_questions.json, VQA/v2_mscoco_{train,val}2014_
annotations.json and the COCO 2014 images VQA/{train,val}2014/COCO_<split>2014_<id>.jpg;
converted once into config.data.data_dir. Each training question's target is the most
frequent of its 10 human answers; evaluation scores all 10 by the official VQA rules (the
evaluation script's accuracy, question by question), per question type and per answer type
("yes/no", "number", "other"). Images and model as coco_captions; a starting point for an
accelerator run, not measured here. The argument: "" (default) or "tiny".
"""
import ml_collections

from configs import coco_captions, folder_vqa


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = folder_vqa.get_config(arg)
  coco = coco_captions.get_config(arg)
  c.data, c.model = coco.data, coco.model
  c.data.name = "vqav2"
  c.init.workdir = ""  # From scratch by default; a caption run's workdir transfers.
  c.evals.update(during_splits=("val",), final_splits=("val",))
  # VQAv2 questions are < 100 bytes, answers < 30: one question per turn, up to 3 per row.
  c.objective.update(max_question_len=100, max_new_tokens=31, questions_per_row=3,
                     max_text_len=2 + 3 * (1 + 100 + 31))
  if not arg:
    c.optimizer = coco.optimizer
    c.train.update(steps=20000, checkpoint_every=2000)
    c.evals = coco.evals
    c.evals.final_num_examples = 2000
  return c
