"""COCO Captions (2017), from the official files:

  DIR/annotations/captions_<split>2017.json   split = train, val (whichever exist)
  DIR/<split>2017/<file_name>                 the images, as listed in the JSON

One example per image that has captions, in the order of the JSON's "images" list, with all
its captions in annotation order; id = str(image_id). Captions of image ids missing from
"images" are dropped (a subset made by trimming "images" just works).

  sources = coco.load("/data/coco", data_dir)  # {"train": ExampleSource, "val": ...}
"""
from __future__ import annotations

import collections
import json
import os

from absl import logging

from gpt4v_jax.data import records

SPLITS = ("train", "val")

LAYOUT = """\
  DIR/annotations/captions_train2017.json
  DIR/annotations/captions_val2017.json
  DIR/train2017/000000000009.jpg ...
  DIR/val2017/000000000139.jpg ...
each annotation file holding
  {"images": [{"id": 9, "file_name": "000000000009.jpg", ...}, ...],
   "annotations": [{"image_id": 9, "caption": "a cat on a mat", ...}, ...]}"""


def annotation_path(path: str, split: str) -> str:
  return os.path.join(path, "annotations", f"captions_{split}2017.json")


def load_json(path: str, keys: tuple[str, ...], layout: str) -> dict:
  """The JSON object in `path`, checked to have `keys`; ValueError naming the file if not."""
  try:
    with open(path, "rb") as f:
      data = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise records.layout_error(f"{path}: not valid JSON ({e})", layout) from None
  missing = [k for k in keys if not isinstance(data, dict) or k not in data]
  if missing:
    raise records.layout_error(f"{path}: no {', '.join(missing)} key", layout)
  return data


def read_split(path: str, split: str) -> list[dict]:
  """Standard examples (without images) of one split, in the order of the "images" list."""
  ann_path = annotation_path(path, split)
  data = load_json(ann_path, ("images", "annotations"), LAYOUT)
  captions = collections.defaultdict(list)
  try:
    for ann in data["annotations"]:
      captions[ann["image_id"]].append(ann["caption"])
    images = [(image["id"], image["file_name"]) for image in data["images"]]
  except (KeyError, TypeError) as e:
    raise records.layout_error(f"{ann_path}: an entry lacks {e}", LAYOUT) from None
  examples = []
  for image_id, file_name in images:
    if captions.get(image_id):
      example = {"id": str(image_id), "captions": captions.pop(image_id),
                 "image_path": os.path.join(path, f"{split}2017", file_name)}
      examples.append({**example, "questions": [], "answers": [], "question_types": [],
                       "answer_types": [], "prompts": [], "targets": []})
  if len(examples) < len(images) or captions:
    logging.warning("%s: %d images without captions skipped; captions of %d image ids not "
                    "in 'images' dropped.", ann_path, len(images) - len(examples), len(captions))
  return examples


class CocoCaptions(records.RecordBuilder):
  """COCO Captions 2017 (see the module docstring)."""

  name = "coco_captions_records"
  LAYOUT = LAYOUT

  def source_files(self) -> list[str]:
    return [annotation_path(self.path, split) for split in SPLITS]

  def read_splits(self) -> dict[str, list[dict]]:
    splits = [s for s in SPLITS if os.path.exists(annotation_path(self.path, s))]
    if not splits:
      raise records.layout_error(
          f"no COCO caption annotations: neither {annotation_path(self.path, 'train')} nor "
          f"{annotation_path(self.path, 'val')} exists.", LAYOUT)
    return {split: read_split(self.path, split) for split in splits}


def load(path: str, data_dir: str) -> dict[str, records.ExampleSource]:
  """{split: ExampleSource} of the COCO folder at `path`, prepared under `data_dir`."""
  return records.load(CocoCaptions, data_dir, path)
