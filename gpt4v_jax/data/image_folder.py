"""A folder of images with a metadata.jsonl per split (the Hugging Face `imagefolder` layout).

  DIR/<split>/metadata.jsonl      one JSON object per line
  DIR/<split>/<any/sub/path.jpg>  the images (any format; stored as is, never decoded here)

Each row names its image by `file_name` (relative to the split folder) and carries any of:
  caption (str) or captions (list of str)
  question (str) with answer (str) or answers (non-empty list of str), optional question_type,
    answer_type (str)
  prompt (str) with target (str): any image-conditioned text task
Other keys are ignored. Rows with the same file_name are merged into one example (all its
captions, all its questions, in row order), placed where the image first appears: one example
per image, id = file_name. A row without file_name is a text-only example (image b"",
image_path "", id "metadata.jsonl:<line>") and needs prompt and target. The splits are the
subfolders that hold a metadata.jsonl.

A file_name whose file is missing is not a build error: the example keeps image b"" with its
image_path and counts as a bad example in training (see records.py).

  sources = image_folder.load("/data/my_folder", data_dir)  # {split: ExampleSource}
"""
from __future__ import annotations

import glob
import json
import os
import re

from gpt4v_jax.data import records

METADATA = "metadata.jsonl"

LAYOUT = """\
  DIR/train/metadata.jsonl
  DIR/train/images/0001.jpg
  DIR/validation/metadata.jsonl ...
with metadata.jsonl rows such as:
  {"file_name": "images/0001.jpg", "captions": ["a dog on a sofa", "a brown dog"]}
  {"file_name": "images/0001.jpg", "question": "what animal is it?", "answers": ["dog"]}
  {"file_name": "images/0002.jpg", "prompt": "read the sign:", "target": "stop"}
  {"prompt": "say hello in French", "target": "bonjour"}   (no file_name: text only)"""

# Split names end up in file names and split expressions: keep them plain.
_SPLIT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")
_TEXT_KEYS = ("caption", "captions", "question", "answer", "answers", "prompt", "target")
_STR_KEYS = ("file_name", "caption", "question", "answer", "question_type", "answer_type",
             "prompt", "target")
_LIST_KEYS = ("captions", "answers")


def _empty_example(example_id: str, image_path: str) -> dict:
  return {"id": example_id, "image_path": image_path, "captions": [], "questions": [],
          "answers": [], "question_types": [], "answer_types": [], "prompts": [], "targets": []}


def _check_row(row, where: str) -> None:
  """Raises ValueError (naming `where`, showing LAYOUT) unless `row` is a valid row."""
  fail = lambda message: records.layout_error(f"{where}: {message}", LAYOUT)
  if not isinstance(row, dict):
    raise fail(f"expected a JSON object, got {type(row).__name__}")
  for key in _STR_KEYS:
    if key in row and not isinstance(row[key], str):
      raise fail(f"{key} must be a string, got {type(row[key]).__name__} {row[key]!r}")
  for key in _LIST_KEYS:
    value = row.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
      raise fail(f"{key} must be a list of strings, got {value!r}")
  if not any(key in row for key in _TEXT_KEYS):
    raise fail(f"no text field; give one of {', '.join(_TEXT_KEYS)}")
  for one, many in (("caption", "captions"), ("answer", "answers")):
    if one in row and many in row:
      raise fail(f"both {one} and {many}; give one of them")
  if "question" in row:
    if "answer" not in row and not row.get("answers"):
      raise fail("question without answer (str) or answers (non-empty list of str)")
  else:
    for key in ("answer", "answers", "question_type", "answer_type"):
      if key in row:
        raise fail(f"{key} without question")
  if ("prompt" in row) != ("target" in row):
    raise fail("prompt without target" if "prompt" in row else "target without prompt")
  if "file_name" in row:
    if not row["file_name"] or os.path.isabs(row["file_name"]):
      raise fail(f"file_name must be a path relative to the split folder, got "
                 f"{row['file_name']!r}")
  elif "prompt" not in row:
    raise fail("a row without file_name is a text-only example and needs prompt and target")


def _add_row(example: dict, row: dict) -> None:
  """Appends the row's texts to the example it belongs to."""
  example["captions"] += [row["caption"]] if "caption" in row else row.get("captions", [])
  if "question" in row:
    example["questions"].append(row["question"])
    example["answers"].append([row["answer"]] if "answer" in row else row["answers"])
    example["question_types"].append(row.get("question_type", ""))
    example["answer_types"].append(row.get("answer_type", ""))
  if "prompt" in row:
    example["prompts"].append(row["prompt"])
    example["targets"].append(row["target"])


def read_split(split_dir: str) -> list[dict]:
  """Parses split_dir/metadata.jsonl into standard examples without images, in file order."""
  path = os.path.join(split_dir, METADATA)
  examples, by_file = [], {}
  with open(path, "rb") as f:
    for lineno, raw in enumerate(f, start=1):
      where = f"{path}:{lineno}"
      try:
        line = raw.decode("utf-8").lstrip("\ufeff")  # A BOM some editors write.
      except UnicodeDecodeError as e:
        raise records.layout_error(f"{where}: not UTF-8 ({e})", LAYOUT) from None
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise records.layout_error(
            f"{where}: not a JSON object ({e.msg}, column {e.colno})", LAYOUT) from None
      _check_row(row, where)
      if "file_name" not in row:
        example = _empty_example(f"{METADATA}:{lineno}", "")
        examples.append(example)
      else:
        # "./a.jpg" and "a.jpg" are the same image.
        file_name = os.path.normpath(row["file_name"]).replace(os.sep, "/")
        example = by_file.get(file_name)
        if example is None:
          example = by_file[file_name] = _empty_example(
              file_name, os.path.join(split_dir, file_name))
          examples.append(example)
      _add_row(example, row)
  return examples


class ImageFolder(records.RecordBuilder):
  """An image folder with metadata.jsonl per split (see the module docstring)."""

  name = "image_folder_records"
  LAYOUT = LAYOUT

  def _split_dirs(self) -> dict[str, str]:
    """{split: folder} of the subfolders of DIR that hold a metadata.jsonl."""
    if not os.path.isdir(self.path):
      raise records.layout_error(f"image folder {self.path} does not exist.", LAYOUT)
    splits = {}
    for path in sorted(glob.glob(os.path.join(glob.escape(self.path), "*", METADATA))):
      split_dir = os.path.dirname(path)
      split = os.path.basename(split_dir)
      if not _SPLIT_NAME.match(split):
        raise records.layout_error(
            f"split folder {split_dir}: rename it to letters, digits, '_' and '-' only.", LAYOUT)
      splits[split] = split_dir
    if not splits:
      found = (f" ({METADATA} found directly in it: move it and the images into a split "
               "folder such as train/)" if os.path.exists(os.path.join(self.path, METADATA))
               else "")
      raise records.layout_error(
          f"no split in {self.path}: no {os.path.join(self.path, '<split>', METADATA)}{found}.",
          LAYOUT)
    return splits

  def source_files(self) -> list[str]:
    if not os.path.isdir(self.path):
      return []
    return glob.glob(os.path.join(glob.escape(self.path), "*", METADATA))

  def read_splits(self) -> dict[str, list[dict]]:
    return {split: read_split(split_dir) for split, split_dir in self._split_dirs().items()}


def load(path: str, data_dir: str) -> dict[str, records.ExampleSource]:
  """{split: ExampleSource} of the image folder at `path`, prepared under `data_dir`."""
  return records.load(ImageFolder, data_dir, path)
