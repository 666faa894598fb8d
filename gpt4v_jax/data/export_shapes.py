"""Exports the embedded shapes dataset to the image-folder layout (see image_folder.py).

  python -m gpt4v_jax.data.export_shapes --data_dir=DIR --out=OUT [--builder_config=tiny]

writes, per split, OUT/<split>/<id>.png (the stored PNG bytes, not re-encoded) and
OUT/<split>/metadata.jsonl with, per image in id order, one row {file_name, captions} and one
row {file_name, question, answer, question_type} per question. The image-folder builder merges
them back into one example per image, in the same order.
"""
from __future__ import annotations

import json
import os

from absl import app, flags

from gpt4v_jax.data import shapes

_DATA_DIR = flags.DEFINE_string("data_dir", None, "Where the shapes dataset is (or is built).")
_OUT = flags.DEFINE_string("out", None, "The image folder to write.")
_CONFIG = flags.DEFINE_enum("builder_config", "default", ["default", "tiny"],
                            "Which shapes config to export.")


def _text(value: bytes | str) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _question_row(file_name: str, example: dict, q: int) -> dict:
  """The metadata row of question q of a shapes example."""
  answers = example["answers"][q]
  # One answer per question; as a text, or as a one-element list in the standard example.
  answers = [_text(a) for a in answers] if isinstance(answers, (list, tuple)) else [_text(answers)]
  row = {"file_name": file_name, "question": _text(example["questions"][q])}
  row.update({"answer": answers[0]} if len(answers) == 1 else {"answers": answers})
  row["question_type"] = _text(example["question_types"][q])
  if len(example.get("answer_types", [])) > q:
    row["answer_type"] = _text(example["answer_types"][q])
  return row


def export(builder: shapes.Shapes, out: str) -> dict[str, int]:
  """Writes every split of `builder` under `out`. Returns {split: number of images}."""
  counts = {}
  for split, source in shapes.encoded_sources(builder).items():
    split_dir = os.path.join(out, split)
    os.makedirs(split_dir, exist_ok=True)
    with open(os.path.join(split_dir, "metadata.jsonl"), "w", encoding="utf-8") as f:
      for i in range(len(source)):
        example = source[i]
        file_name = f"{example['id']}.png"
        with open(os.path.join(split_dir, file_name), "wb") as image_file:
          image_file.write(bytes(example["image"]))
        rows = [{"file_name": file_name, "captions": [_text(c) for c in example["captions"]]}]
        rows += [_question_row(file_name, example, q) for q in range(len(example["questions"]))]
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    counts[split] = len(source)
  return counts


def main(argv):
  del argv
  builder = shapes.load_builder(_DATA_DIR.value, _CONFIG.value)
  for split, n in export(builder, _OUT.value).items():
    print(f"{split}: {n} images -> {os.path.join(_OUT.value, split)}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["data_dir", "out"])
  app.run(main)
