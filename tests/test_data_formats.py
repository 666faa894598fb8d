"""The image-folder, COCO and VQAv2 builders: fixtures in each format's real layout are built
once per module, read back with the loaders and compared with hand-written expected examples."""
import io
import json
import os

import grain
import PIL.Image
import pytest

from gpt4v_jax.data import coco, export_shapes, image_folder, records, shapes, vqav2

EMPTY = {"captions": [], "questions": [], "answers": [], "question_types": [],
         "answer_types": [], "prompts": [], "targets": []}


def _image(seed: int, fmt: str) -> bytes:
  """A tiny distinct image file (16x16, colour from seed) in format fmt."""
  buffer = io.BytesIO()
  PIL.Image.new("RGB", (16, 16), (seed * 40 % 256, 90, 200)).save(buffer, format=fmt)
  return buffer.getvalue()


def _write(path, data) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  if isinstance(data, bytes):
    with open(path, "wb") as f:
      f.write(data)
  else:
    with open(path, "w", encoding="utf-8") as f:
      f.write(data if isinstance(data, str) else json.dumps(data))


def _jsonl(rows) -> str:
  return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def _expected(**fields) -> dict:
  """A standard example as the loader must return it: texts as UTF-8 bytes."""
  example = {**EMPTY, "image": b"", "image_path": "", **fields}
  enc = lambda t: t.encode("utf-8")
  for key in ("captions", "questions", "prompts", "targets"):
    example[key] = [enc(t) for t in example[key]]
  example["answers"] = [[enc(a) for a in answers] for answers in example["answers"]]
  return example


def _check_split(source, expected: list[dict]) -> None:
  assert len(source) == len(expected)
  for i, want in enumerate(expected):
    assert source[i] == want, f"example {i}"


# ----------------------------------------------------------------------------
# Image folder.
# ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  """(source path, data_dir, loaded sources, {split: expected examples})."""
  root = str(tmp_path_factory.mktemp("folder") / "my_data")
  data_dir = str(tmp_path_factory.mktemp("folder_data"))
  cat, dog, gif = _image(1, "JPEG"), _image(2, "PNG"), _image(3, "GIF")
  _write(f"{root}/train/images/cat.jpg", cat)
  _write(f"{root}/train/images/deep/dog.png", dog)
  _write(f"{root}/validation/x.gif", gif)
  junk = b"\x00\xffnot an image\x00\x00"  # Stored as is; the pipeline finds it corrupt.
  _write(f"{root}/validation/junk.jpg", junk)
  _write(f"{root}/extra/notes.txt", "a folder without metadata.jsonl is not a split")
  _write(f"{root}/train/metadata.jsonl", _jsonl([
      {"file_name": "images/cat.jpg", "captions": ["a cat", "un chat très mignon"],
       "license": "cc-by"},  # Unknown keys are ignored.
      {"file_name": "images/deep/dog.png", "caption": "一只狗 🐶"},
      {"prompt": "say hello in French", "target": "bonjour"},
      # Same image again, after other rows: merged into the first example.
      {"file_name": "./images/cat.jpg", "question": "what is it?", "answer": "cat",
       "question_type": "what", "answer_type": "other"},
      {"file_name": "images/cat.jpg", "question": "¿cuántos?", "answers": ["1", "one"]},
      {"file_name": "images/missing.jpg", "prompt": "read:", "target": "nothing"},
  ]) + "\n")  # A blank line is skipped.
  _write(f"{root}/validation/metadata.jsonl", _jsonl([
      {"file_name": "x.gif", "question": "color?", "answers": ["blue"], "answer_type": "other"},
      {"file_name": "junk.jpg", "caption": "?"},
  ]))
  expected = {
      "train": [
          _expected(id="images/cat.jpg", image=cat, image_path=f"{root}/train/images/cat.jpg",
                    captions=["a cat", "un chat très mignon"],
                    questions=["what is it?", "¿cuántos?"], answers=[["cat"], ["1", "one"]],
                    question_types=["what", ""], answer_types=["other", ""]),
          _expected(id="images/deep/dog.png", image=dog,
                    image_path=f"{root}/train/images/deep/dog.png", captions=["一只狗 🐶"]),
          _expected(id="metadata.jsonl:3", prompts=["say hello in French"], targets=["bonjour"]),
          # A missing file: image b"" with its path.
          _expected(id="images/missing.jpg", image_path=f"{root}/train/images/missing.jpg",
                    prompts=["read:"], targets=["nothing"]),
      ],
      "validation": [
          _expected(id="x.gif", image=gif, image_path=f"{root}/validation/x.gif",
                    questions=["color?"], answers=[["blue"]], question_types=[""],
                    answer_types=["other"]),
          _expected(id="junk.jpg", image=junk, image_path=f"{root}/validation/junk.jpg",
                    captions=["?"]),
      ],
  }
  return root, data_dir, image_folder.load(root, data_dir), expected


def test_image_folder_round_trip(folder):
  root, _, sources, expected = folder
  assert sorted(sources) == ["train", "validation"]
  for split, want in expected.items():
    _check_split(sources[split], want)
  # The stored bytes are the file's, byte for byte.
  with open(f"{root}/train/images/cat.jpg", "rb") as f:
    assert sources["train"][0]["image"] == f.read()


def test_grain_accepts_source(folder):
  source = folder[2]["train"]
  dataset = grain.MapDataset.source(source)
  assert len(dataset) == len(source)
  assert dataset[1] == source[1]
  assert source.__getitems__([3, 0]) == [source[3], source[0]]


def test_second_load_reuses_prepared_copy(folder, monkeypatch):
  root, data_dir, _, expected = folder
  builder = records.prepare(image_folder.ImageFolder, data_dir, root)
  files = sorted(str(f) for f in builder.data_path.glob("*.array_record*"))
  assert files
  mtimes = [os.stat(f).st_mtime_ns for f in files]

  def fail(self):
    raise AssertionError("rebuilt")

  monkeypatch.setattr(image_folder.ImageFolder, "read_splits", fail)
  sources = image_folder.load(root, data_dir)
  _check_split(sources["train"], expected["train"])
  assert [os.stat(f).st_mtime_ns for f in files] == mtimes


def test_identity_is_the_absolute_path(tmp_path, monkeypatch):
  make = image_folder.ImageFolder.make_config
  monkeypatch.chdir(tmp_path)
  assert make("a").name == make(str(tmp_path / "a")).name
  assert make("a").name != make("b").name
  assert vqav2.VQAv2.make_config("a").name != vqav2.VQAv2.make_config("a", images_dir="c").name


def test_changed_metadata_rebuilds_with_progress_bar(tmp_path, capfd, monkeypatch):
  root, data_dir = str(tmp_path / "src"), str(tmp_path / "data")
  rows = [{"prompt": "p1", "target": "t1"}]
  _write(f"{root}/train/metadata.jsonl", _jsonl(rows))
  assert len(image_folder.load(root, data_dir)["train"]) == 1
  assert "Generating train examples" in capfd.readouterr().err  # TFDS's progress bar.
  _write(f"{root}/train/metadata.jsonl", _jsonl(rows * 3))
  source = image_folder.load(root, data_dir)["train"]
  assert [source[i]["targets"] for i in range(len(source))] == [[b"t1"]] * 3
  # A new split is a change too.
  _write(f"{root}/test/metadata.jsonl", _jsonl(rows))
  assert sorted(image_folder.load(root, data_dir)) == ["test", "train"]
  # The rebuilt copy recorded the new state: unchanged files are not rebuilt again.
  monkeypatch.setattr(image_folder.ImageFolder, "read_splits", lambda self: 1 / 0)
  assert len(image_folder.load(root, data_dir)["train"]) == 3


@pytest.mark.parametrize("lines, message", [
    (['{"prompt": "p", "target": "t"}', '{"file_name": "a.jpg", "caption": "x",}'],
     r"metadata.jsonl:2: not a JSON object"),
    (['{"file_name": "a.jpg"}'], r"metadata.jsonl:1: no text field"),
    (['{"file_name": "a.jpg", "answer": "yes"}'], r"metadata.jsonl:1: answer without question"),
    (['{"file_name": "a.jpg", "question": "q?"}'], r":1: question without answer"),
    (['{"file_name": "a.jpg", "prompt": "p"}'], r"metadata.jsonl:1: prompt without target"),
    (['{"file_name": "a.jpg", "captions": "a cat"}'],
     r"metadata.jsonl:1: captions must be a list of strings"),
    (['{"file_name": "a.jpg", "question": 7, "answer": "x"}'],
     r"metadata.jsonl:1: question must be a string"),
    (['{"file_name": "a.jpg", "question": "q", "answers": []}'], r":1: question without answer"),
    (['{"caption": "no image"}'], r":1: a row without file_name is a text-only example"),
    (['["a list"]'], r"metadata.jsonl:1: expected a JSON object"),
])
def test_image_folder_row_errors(tmp_path, lines, message):
  root = str(tmp_path / "src")
  _write(f"{root}/train/metadata.jsonl", "\n".join(lines) + "\n")
  with pytest.raises(ValueError, match=message) as error:
    image_folder.load(root, str(tmp_path / "data"))
  assert f"{root}/train/metadata.jsonl:" in str(error.value)
  assert "Expected layout:" in str(error.value)
  assert '"file_name": "images/0001.jpg"' in str(error.value)


def test_image_folder_layout_errors(tmp_path):
  data_dir = str(tmp_path / "data")
  with pytest.raises(ValueError, match=r"image folder .*nowhere does not exist"):
    image_folder.load(str(tmp_path / "nowhere"), data_dir)
  root = str(tmp_path / "flat")
  _write(f"{root}/metadata.jsonl", '{"prompt": "p", "target": "t"}\n')
  _write(f"{root}/train/a.jpg", _image(0, "JPEG"))
  with pytest.raises(ValueError, match=r"no split in .*flat: no .*flat/<split>/metadata.jsonl "
                     r"\(metadata.jsonl found directly in it"):
    image_folder.load(root, data_dir)


def test_export_shapes_round_trip(tiny_data_dir, tmp_path):
  builder = shapes.load_builder(tiny_data_dir, "tiny")
  out = str(tmp_path / "shapes_folder")
  counts = export_shapes.export(builder, out)
  folder_sources = image_folder.load(out, str(tmp_path / "data"))
  shapes_sources = shapes.encoded_sources(builder)
  assert sorted(folder_sources) == sorted(shapes_sources) == sorted(shapes.SPLITS)
  for split, source in shapes_sources.items():
    assert len(folder_sources[split]) == len(source) == counts[split]
    for i in range(len(source)):
      want, got = source[i], folder_sources[split][i]
      assert got["id"] == f"{want['id']}.png" and want["id"] == i
      assert got["image"] == bytes(want["image"])
      assert got["captions"] == list(want["captions"])
      assert got["questions"] == list(want["questions"])
      # Shapes has one answer per question (a text, or a one-text list in a standard example).
      assert got["answers"] == [a if isinstance(a, list) else [a] for a in want["answers"]]
      assert got["question_types"] == [t.decode() for t in want["question_types"]]
      assert got["answer_types"] == [""] * len(want["questions"])
      assert got["prompts"] == got["targets"] == []


# ----------------------------------------------------------------------------
# COCO captions.
# ----------------------------------------------------------------------------


def _coco_file(images, annotations) -> dict:
  return {
      "info": {"description": "COCO 2017 Dataset", "version": "1.0", "year": 2017},
      "licenses": [{"url": "http://creativecommons.org/licenses/by-nc-sa/2.0/", "id": 1,
                    "name": "Attribution-NonCommercial-ShareAlike License"}],
      "images": [{"license": 1, "file_name": name, "coco_url": "http://x/" + name,
                  "height": 16, "width": 16, "date_captured": "2013-11-14 11:18:45",
                  "flickr_url": "http://y/" + name, "id": image_id}
                 for image_id, name in images],
      "annotations": [{"image_id": image_id, "id": ann_id, "caption": caption}
                      for ann_id, (image_id, caption) in enumerate(annotations, start=100)],
  }


@pytest.fixture(scope="module")
def coco_data(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("coco"))
  data_dir = str(tmp_path_factory.mktemp("coco_data"))
  a, b, c = _image(4, "JPEG"), _image(5, "JPEG"), _image(6, "JPEG")
  _write(f"{root}/train2017/000000000139.jpg", a)
  _write(f"{root}/train2017/000000000009.jpg", b)
  _write(f"{root}/val2017/000000000724.jpg", c)
  _write(f"{root}/annotations/captions_train2017.json", _coco_file(
      [(139, "000000000139.jpg"), (9, "000000000009.jpg"), (77, "000000000077.jpg"),
       (5, "000000000005.jpg")],
      [(9, "A plate of food."), (139, "A woman stands in the kitchen."), (9, "Café au lait ☕"),
       (77, "An image whose file is missing."), (123456, "An image not in 'images'.")]))
  _write(f"{root}/annotations/captions_val2017.json", _coco_file(
      [(724, "000000000724.jpg")], [(724, "A stop sign.\n")]))
  expected = {
      "train": [
          _expected(id="139", image=a, image_path=f"{root}/train2017/000000000139.jpg",
                    captions=["A woman stands in the kitchen."]),
          _expected(id="9", image=b, image_path=f"{root}/train2017/000000000009.jpg",
                    captions=["A plate of food.", "Café au lait ☕"]),
          _expected(id="77", image_path=f"{root}/train2017/000000000077.jpg",
                    captions=["An image whose file is missing."]),
          # Image 5 has no captions: no example.
      ],
      "val": [_expected(id="724", image=c, image_path=f"{root}/val2017/000000000724.jpg",
                        captions=["A stop sign.\n"])],
  }
  return root, data_dir, coco.load(root, data_dir), expected


def test_coco_round_trip(coco_data):
  _, _, sources, expected = coco_data
  assert sorted(sources) == ["train", "val"]
  for split, want in expected.items():
    _check_split(sources[split], want)


def test_coco_errors(tmp_path):
  data_dir = str(tmp_path / "data")
  with pytest.raises(ValueError, match=r"no COCO caption annotations: neither .*"
                     r"annotations/captions_train2017.json nor .*captions_val2017.json"):
    coco.load(str(tmp_path / "empty"), data_dir)
  root = str(tmp_path / "bad")
  _write(f"{root}/annotations/captions_val2017.json", "{not json")
  with pytest.raises(ValueError, match=r"bad/annotations/captions_val2017.json: not valid JSON"):
    coco.load(root, data_dir)
  _write(f"{root}/annotations/captions_val2017.json", {"images": []})
  with pytest.raises(ValueError, match=r"captions_val2017.json: no annotations key"):
    coco.load(root, data_dir)


# ----------------------------------------------------------------------------
# VQAv2.
# ----------------------------------------------------------------------------


def _vqa_files(split: str, questions) -> tuple[dict, dict]:
  """The official questions and annotations JSON of (image_id, question_id, question,
  answers, question_type, answer_type) tuples."""
  common = {"info": {"description": "This is v2.0 of the VQA dataset.", "year": 2017},
            "license": {"name": "Creative Commons Attribution 4.0 International License"},
            "data_subtype": f"{split}2014", "data_type": "mscoco"}
  q_file = {**common, "task_type": "Open-Ended", "questions": [
      {"image_id": image_id, "question": q, "question_id": qid}
      for image_id, qid, q, *_ in questions]}
  a_file = {**common, "annotations": [
      {"question_type": qtype, "multiple_choice_answer": answers[0],
       "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": j + 1}
                   for j, a in enumerate(answers)],
       "image_id": image_id, "answer_type": atype, "question_id": qid}
      for image_id, qid, _, answers, qtype, atype in reversed(questions)]}  # Any order.
  return q_file, a_file


@pytest.fixture(scope="module")
def vqa_data(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("vqa"))
  images = str(tmp_path_factory.mktemp("vqa_images"))
  data_dir = str(tmp_path_factory.mktemp("vqa_data"))
  a, b = _image(7, "JPEG"), _image(8, "JPEG")
  _write(f"{images}/train2014/COCO_train2014_000000458752.jpg", a)
  _write(f"{images}/val2014/COCO_val2014_000000000042.jpg", b)
  ten = lambda *answers: [answers[j % len(answers)] for j in range(10)]
  train = [
      (458752, 458752000, "What is this photo taken looking through?", ten("net", "netting"),
       "what is this", "other"),
      (262146, 262146000, "What color is the snow?", ten("white"), "what color is the", "other"),
      (458752, 458752001, "Is the ball flying?", ten("yes", "no"), "is the", "yes/no"),
  ]
  val = [(42, 42000, "¿Qué es esto? 🤔", ten("un perro", "chien"), "what is", "other")]
  for split, questions in (("train", train), ("val", val)):
    q_file, a_file = _vqa_files(split, questions)
    _write(f"{root}/v2_OpenEnded_mscoco_{split}2014_questions.json", q_file)
    _write(f"{root}/v2_mscoco_{split}2014_annotations.json", a_file)
  _write(f"{root}/v2_OpenEnded_mscoco_test-dev2015_questions.json",
         _vqa_files("test-dev", [(1, 1000, "q", ["a"], "", "")])[0])
  expected = {
      "train": [
          _expected(id="458752", image=a,
                    image_path=f"{images}/train2014/COCO_train2014_000000458752.jpg",
                    questions=["What is this photo taken looking through?",
                               "Is the ball flying?"],
                    answers=[ten("net", "netting"), ten("yes", "no")],
                    question_types=["what is this", "is the"], answer_types=["other", "yes/no"]),
          _expected(id="262146", image_path=f"{images}/train2014/COCO_train2014_000000262146.jpg",
                    questions=["What color is the snow?"], answers=[ten("white")],
                    question_types=["what color is the"], answer_types=["other"]),
      ],
      "val": [_expected(id="42", image=b,
                        image_path=f"{images}/val2014/COCO_val2014_000000000042.jpg",
                        questions=["¿Qué es esto? 🤔"], answers=[ten("un perro", "chien")],
                        question_types=["what is"], answer_types=["other"])],
  }
  return root, data_dir, vqav2.load(root, data_dir, images_dir=images), expected


def test_vqav2_round_trip(vqa_data):
  _, _, sources, expected = vqa_data
  assert sorted(sources) == ["train", "val"]  # The test-dev questions are skipped.
  for split, want in expected.items():
    _check_split(sources[split], want)
  assert all(len(a) == 10 for a in sources["train"][0]["answers"])


def test_vqav2_errors(tmp_path):
  data_dir = str(tmp_path / "data")
  with pytest.raises(ValueError, match=r"no VQAv2 files: neither .*"
                     r"v2_OpenEnded_mscoco_train2014_questions.json nor"):
    vqav2.load(str(tmp_path / "empty"), data_dir)
  root = str(tmp_path / "bad")
  q_file, a_file = _vqa_files("val", [(1, 10, "q?", ["a"], "what", "other"),
                                      (1, 11, "r?", ["b"], "what", "other")])
  _write(f"{root}/v2_OpenEnded_mscoco_val2014_questions.json", q_file)
  with pytest.raises(ValueError, match=r"questions.json has no partner file .*"
                     r"v2_mscoco_val2014_annotations.json"):
    vqav2.load(root, data_dir)
  a_file["annotations"] = a_file["annotations"][1:]
  _write(f"{root}/v2_mscoco_val2014_annotations.json", a_file)
  with pytest.raises(ValueError, match=r"annotations.json: no annotation for question_id 11"):
    vqav2.load(root, data_dir)


def test_answers_regrouped_per_question():
  """to_record -> TFDS encoding is checked by the builds; here the (re)grouping alone."""
  example = {"id": "x", "image": b"\x00\xff\x00", "image_path": "p", "captions": ["c"],
             "questions": ["q1", "q2", "q3"], "answers": [["a"], ["b", "c", "d"], ["e"]],
             "question_types": ["t1", "t2", "t3"], "answer_types": ["", "", "y"],
             "prompts": [], "targets": []}
  record = records.to_record(example)
  assert list(record["answer_counts"]) == [1, 3, 1]
  back = records.to_example(record)
  assert back["answers"] == [[b"a"], [b"b", b"c", b"d"], [b"e"]]
  assert back["image"] == b"\x00\xff\x00" and back["id"] == "x"
  with pytest.raises(ValueError, match="2 answers for 3 questions"):
    records.to_record({**example, "answers": [["a"], ["b"]]})
