"""VQAv2, from the official files:

  DIR/v2_OpenEnded_mscoco_<split>2014_questions.json   split = train, val (whichever exist)
  DIR/v2_mscoco_<split>2014_annotations.json
  IMAGES/<split>2014/COCO_<split>2014_<image_id:012d>.jpg   (IMAGES = images_dir, default DIR)

One example per image, in the order the questions file first mentions it, with all its
questions in file order; id = str(image_id). Each question's answers are its annotation's 10
human `answer` strings; question_type and answer_type come from the annotation. Test questions
(no annotations) are skipped.

  sources = vqav2.load("/data/vqav2", data_dir, images_dir="/data/coco")
"""
from __future__ import annotations

import glob
import os

from absl import logging

from gpt4v_jax.data import records
from gpt4v_jax.data.coco import load_json

SPLITS = ("train", "val")

LAYOUT = """\
  DIR/v2_OpenEnded_mscoco_train2014_questions.json
    {"questions": [{"image_id": 9, "question": "what is it?", "question_id": 9000}, ...]}
  DIR/v2_mscoco_train2014_annotations.json
    {"annotations": [{"question_id": 9000, "image_id": 9, "question_type": "what is",
      "answer_type": "other", "answers": [{"answer": "a cat", ...} x 10], ...}, ...]}
  DIR/v2_OpenEnded_mscoco_val2014_questions.json, DIR/v2_mscoco_val2014_annotations.json
  IMAGES/train2014/COCO_train2014_000000000009.jpg ... (IMAGES: images_dir, default DIR)"""


def questions_path(path: str, split: str) -> str:
  return os.path.join(path, f"v2_OpenEnded_mscoco_{split}2014_questions.json")


def annotations_path(path: str, split: str) -> str:
  return os.path.join(path, f"v2_mscoco_{split}2014_annotations.json")


def image_path(images_dir: str, split: str, image_id: int) -> str:
  return os.path.join(images_dir, f"{split}2014", f"COCO_{split}2014_{int(image_id):012d}.jpg")


def read_split(path: str, images_dir: str, split: str) -> list[dict]:
  """Standard examples (without images) of one split, one per image."""
  q_path, a_path = questions_path(path, split), annotations_path(path, split)
  questions = load_json(q_path, ("questions",), LAYOUT)["questions"]
  annotations = load_json(a_path, ("annotations",), LAYOUT)["annotations"]
  try:
    by_question = {ann["question_id"]: ann for ann in annotations}
  except (KeyError, TypeError) as e:
    raise records.layout_error(f"{a_path}: an annotation lacks {e}", LAYOUT) from None
  examples, by_image = [], {}
  for q in questions:
    try:
      image_id, question_id, text = q["image_id"], q["question_id"], q["question"]
    except (KeyError, TypeError) as e:
      raise records.layout_error(f"{q_path}: a question lacks {e}", LAYOUT) from None
    ann = by_question.get(question_id)
    if ann is None:
      raise records.layout_error(
          f"{a_path}: no annotation for question_id {question_id} of {q_path}", LAYOUT)
    try:
      answers = [a["answer"] for a in ann["answers"]]
      types = ann["question_type"], ann["answer_type"]
    except (KeyError, TypeError) as e:
      raise records.layout_error(
          f"{a_path}: the annotation of question_id {question_id} lacks {e}", LAYOUT) from None
    if not answers:
      raise records.layout_error(
          f"{a_path}: the annotation of question_id {question_id} has no answers", LAYOUT)
    example = by_image.get(image_id)
    if example is None:
      example = by_image[image_id] = {
          "id": str(image_id), "image_path": image_path(images_dir, split, image_id),
          "captions": [], "questions": [], "answers": [], "question_types": [],
          "answer_types": [], "prompts": [], "targets": []}
      examples.append(example)
    example["questions"].append(text)
    example["answers"].append(answers)
    example["question_types"].append(types[0])
    example["answer_types"].append(types[1])
  return examples


class VQAv2(records.RecordBuilder):
  """VQAv2 (see the module docstring); option images_dir (default: the source path)."""

  name = "vqav2_records"
  LAYOUT = LAYOUT

  @property
  def images_dir(self) -> str:
    return self.builder_config.options.get("images_dir", self.path)

  def source_files(self) -> list[str]:
    return [f(self.path, s) for s in SPLITS for f in (questions_path, annotations_path)]

  def read_splits(self) -> dict[str, list[dict]]:
    splits = {}
    for split in SPLITS:
      q_path, a_path = questions_path(self.path, split), annotations_path(self.path, split)
      if os.path.exists(q_path) and os.path.exists(a_path):
        splits[split] = read_split(self.path, self.images_dir, split)
      elif os.path.exists(q_path) or os.path.exists(a_path):
        missing, found = (a_path, q_path) if os.path.exists(q_path) else (q_path, a_path)
        raise records.layout_error(f"{found} has no partner file {missing}.", LAYOUT)
    for path in glob.glob(os.path.join(glob.escape(self.path), "v2_OpenEnded_mscoco_test*")):
      logging.info("Skipping %s: test questions have no annotations.", path)
    if not splits:
      raise records.layout_error(
          f"no VQAv2 files: neither {questions_path(self.path, 'train')} nor "
          f"{questions_path(self.path, 'val')} (with its annotations) exists.", LAYOUT)
    return splits


def load(path: str, data_dir: str,
         images_dir: str | None = None) -> dict[str, records.ExampleSource]:
  """{split: ExampleSource} of the VQAv2 files at `path` (images under images_dir, default
  path), prepared under `data_dir`."""
  if images_dir and os.path.abspath(images_dir) == os.path.abspath(path):
    images_dir = None  # The default: the same prepared copy.
  return records.load(VQAv2, data_dir, path, images_dir=images_dir)
