"""Your own data, as a user brings it: an image folder with odd and broken images, COCO captions
and VQAv2 files in their real layouts, through the input pipeline, the objectives and `main`
(a few train steps and an eval). The builders' round trips are tests/test_data_formats.py's."""
import io
import json
import os

import grain
import ml_collections
import numpy as np
import PIL.Image
import pytest

from configs import coco_captions, folder_caption, folder_vqa, shapes_summarize, vqav2
from gpt4v_jax import runs
from gpt4v_jax.data import datasets, pipeline, shapes

GOOD = 40  # Good images per split: two tiny batches of 16 and more.


def _save(image: PIL.Image.Image, fmt: str, **kwargs) -> bytes:
  buffer = io.BytesIO()
  image.save(buffer, format=fmt, **kwargs)
  return buffer.getvalue()


def _odd_images() -> dict[str, bytes]:
  """Files a real folder holds: every mode and format the preprocessing must take, and the
  broken ones it must skip."""
  rgb = PIL.Image.new("RGB", (48, 32), (200, 30, 30))
  exif = PIL.Image.Exif()
  exif[0x0112] = 6  # Rotated: shown 90 degrees clockwise.
  huge = _save(PIL.Image.new("L", (1, 1)), "PNG")
  huge = huge[:16] + (30000).to_bytes(4, "big") + (30000).to_bytes(4, "big") + huge[24:]
  return {
      "rotated.jpg": _save(rgb, "JPEG", exif=exif.tobytes()),
      "gray.png": _save(rgb.convert("L"), "PNG"),
      "palette.gif": _save(rgb.convert("P"), "GIF"),
      "cmyk.jpg": _save(rgb.convert("CMYK"), "JPEG"),
      "truncated.jpg": _save(rgb, "JPEG")[:200],
      "huge.png": huge,  # Claims 30000 x 30000 = 900M pixels.
  }


BAD = ("truncated.jpg", "huge.png", "missing.png")


def _write_folder(root: str) -> None:
  """DIR/{train,test}/metadata.jsonl + images: captions and questions on every image, the
  odd and broken files in train, and text-only prompt rows."""
  rng = np.random.default_rng(0)
  for split in ("train", "test"):
    os.makedirs(f"{root}/{split}/img", exist_ok=True)
    rows = []
    files = {f"img/{i:03d}.png": _save(PIL.Image.fromarray(
        rng.integers(0, 255, (40 + i, 64, 3), np.uint8)), "PNG") for i in range(GOOD)}
    if split == "train":
      files.update({f"img/{name}": data for name, data in _odd_images().items()})
    for name, data in files.items():
      with open(f"{root}/{split}/{name}", "wb") as f:
        f.write(data)
    for name in [*files, "img/missing.png"]:
      rows.append({"file_name": name, "captions": [f"a picture named {name}", "一张图片 ✓"]})
      rows.append({"file_name": name, "question": "what is it?",
                   "answers": ["a picture"] * 7 + ["an image"] * 3,
                   "question_type": "what is", "answer_type": "other"})
    rows += [{"prompt": f"say {i}", "target": f"{i}"} for i in range(4)]
    with open(f"{root}/{split}/metadata.jsonl", "w", encoding="utf-8") as f:
      f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> str:
  root = str(tmp_path_factory.mktemp("own") / "folder")
  _write_folder(root)
  return root


def _tiny(config_module, path: str, data_dir: str) -> ml_collections.ConfigDict:
  config = config_module.get_config("tiny")
  config.data.update(path=path, data_dir=data_dir)
  return config


def test_folder_pipeline_skips_and_counts_the_bad_files(folder, tmp_path):
  config = _tiny(folder_caption, folder, str(tmp_path))
  sources = datasets.open_splits(config.data)
  objective = runs.make_objective(config)
  source = sources["train"]
  # One example per image (+ 4 text-only rows without captions, also bad for captioning).
  assert len(source) == GOOD + 6 + 1 + 4
  it = iter(objective.train_dataset(source, seed=0, global_batch_size=16,
                                  process_index=0, process_count=1, num_threads=2))
  batches = [next(it) for _ in range(6)]  # 96 rows: past two epochs of the 44 good ones.
  # What an exact skip gives: the seeded shuffled stream, each kept row counting the bad
  # examples (broken or missing files, text-only rows) just before it.
  bad = {i for i in range(len(source)) if not source[i]["captions"]
         or source[i]["image_path"].rsplit("/", 1)[-1] in BAD}
  assert len(bad) == len(BAD) + 4
  order = grain.MapDataset.source(list(range(len(source)))).seed(0).shuffle().repeat()
  want_skipped, run, k = [], 0, 0
  while len(want_skipped) < 96:
    if order[k] in bad:
      run += 1
    else:
      want_skipped.append(run)
      run = 0
    k += 1
  assert list(np.concatenate([b["skipped"] for b in batches])) == want_skipped
  images = np.concatenate([b["image"] for b in batches])
  assert images.shape[1:] == (64, 64, 3) and np.isfinite(images).all()
  with pytest.raises(pipeline.BadExample, match="missing.png.*missing when the dataset"):
    objective.eval_items(next(source[i] for i in range(len(source))
                              if source[i]["image_path"].endswith("missing.png")))


def test_odd_images_decode_in_colour_and_broken_ones_name_their_file(folder, tmp_path):
  config = _tiny(folder_caption, folder, str(tmp_path))
  source = datasets.open_splits(config.data)["train"]
  objective = runs.make_objective(config)
  by_name = {source[i]["image_path"].rsplit("/", 1)[-1]: source[i] for i in range(len(source))
             if source[i]["image_path"]}
  for name in ("rotated.jpg", "cmyk.jpg", "palette.gif"):
    (inputs, _), = objective.eval_items(by_name[name])
    red = inputs["image"][32, 32]
    assert red[0] > 0.3 and red[1] < -0.5, (name, red)  # Still red, whatever the mode.
  (inputs, _), = objective.eval_items(by_name["gray.png"])
  assert np.ptp(inputs["image"][32, 32]) < 1e-6  # Gray: equal channels.
  for name in BAD:
    with pytest.raises(pipeline.BadExample, match=name):
      objective.eval_items(by_name[name])


def test_folder_caption_run_trains_and_evaluates(folder, run_main, tmp_path):
  workdir = tmp_path / "caption"
  r = run_main(f"--workdir={workdir}", f"--config.data.path={folder}",
               f"--config.data.data_dir={tmp_path / 'data'}",
               "--config.evals.during_splits=('test',)", config="folder_caption.py:tiny")
  assert r.returncode == 0, r.stderr[-3000:]
  results = json.loads((workdir / "results.json").read_text())["test"]
  assert results["num_examples"] == 16 and results["skipped_examples"] == 0
  assert "cider_d" in results and "object_f1" not in results  # No scenes in a folder.
  assert "skipped_examples=" in r.stdout + r.stderr  # The broken train files, counted.


def test_folder_vqa_rows_score_every_answer(folder, tmp_path):
  config = _tiny(folder_vqa, folder, str(tmp_path))
  source = datasets.open_splits(config.data)["test"]
  objective = runs.make_objective(config)
  batch = next(iter(objective.train_dataset(source, seed=0, global_batch_size=16,
                                          process_index=0, process_count=1, num_threads=0)))
  # The training answer is the most frequent of the ten; the 4 text-only rows and the
  # missing file are skipped.
  assert objective.tokenizer.decode(batch["text"][0]) == "what is it?a picture"
  infos = [info for i in range(GOOD) for _, info in objective.eval_items(source[i])]
  # 7 of 10 humans said "a picture", 3 "an image": the official rule gives 1.0 and 0.9.
  metrics, records = objective.score(infos[:2], ["a picture", "an image"])
  assert metrics["accuracy"] == pytest.approx(0.95)
  assert metrics["accuracy_what is"] == metrics["accuracy_answer_other"] == metrics["accuracy"]
  assert records[0]["answers"] == ["a picture"] * 7 + ["an image"] * 3


def _coco(root: str) -> None:
  rng = np.random.default_rng(1)
  for split in ("train", "val"):
    images, annotations = [], []
    for i in range(20):
      file_name = f"{i + 1:012d}.jpg"
      os.makedirs(f"{root}/{split}2017", exist_ok=True)
      with open(f"{root}/{split}2017/{file_name}", "wb") as f:
        f.write(_save(PIL.Image.fromarray(rng.integers(0, 255, (48, 64, 3), np.uint8)),
                      "JPEG"))
      images.append({"id": i + 1, "file_name": file_name, "width": 64, "height": 48,
                     "license": 1, "coco_url": "", "date_captured": ""})
      annotations += [{"id": 100 * i + k, "image_id": i + 1, "caption": f"A photo of test image number {k}."}
                      for k in range(5)]
    os.makedirs(f"{root}/annotations", exist_ok=True)
    with open(f"{root}/annotations/captions_{split}2017.json", "w") as f:
      json.dump({"info": {"year": 2017}, "licenses": [], "images": images,
                 "annotations": annotations}, f)


def _vqav2(root: str) -> None:
  rng = np.random.default_rng(2)
  for split in ("train", "val"):
    questions, annotations = [], []
    os.makedirs(f"{root}/{split}2014", exist_ok=True)
    for i in range(20):
      with open(f"{root}/{split}2014/COCO_{split}2014_{i:012d}.jpg", "wb") as f:
        f.write(_save(PIL.Image.fromarray(rng.integers(0, 255, (48, 64, 3), np.uint8)),
                      "JPEG"))
      for k in range(2):
        qid = 10 * i + k
        questions.append({"image_id": i, "question": f"Is this {k}?", "question_id": qid})
        answers = ["yes"] * 6 + ["no"] * 4
        annotations.append({
            "question_type": "is this", "multiple_choice_answer": "yes", "image_id": i,
            "answer_type": "yes/no", "question_id": qid,
            "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": j + 1}
                        for j, a in enumerate(answers)]})
    with open(f"{root}/v2_OpenEnded_mscoco_{split}2014_questions.json", "w") as f:
      json.dump({"task_type": "Open-Ended", "data_type": "mscoco", "questions": questions}, f)
    with open(f"{root}/v2_mscoco_{split}2014_annotations.json", "w") as f:
      json.dump({"data_type": "mscoco", "annotations": annotations}, f)


@pytest.mark.parametrize("config_module, write", [(coco_captions, _coco), (vqav2, _vqav2)])
def test_coco_and_vqav2_rows_and_scores(config_module, write, tmp_path):
  write(str(tmp_path / "src"))
  config = _tiny(config_module, str(tmp_path / "src"), str(tmp_path / "data"))
  sources = datasets.open_splits(config.data)
  objective = runs.make_objective(config)
  it = iter(objective.train_dataset(sources["train"], seed=0, global_batch_size=16,
                                  process_index=0, process_count=1, num_threads=2))
  batch = next(it)
  assert batch["image"].shape == (16, 64, 64, 3) and batch["skipped"].sum() == 0
  items = [item for i in range(len(sources["val"]))
           for item in objective.eval_items(sources["val"][i])]
  infos = [info for _, info in items]
  if config_module is vqav2:
    # 6 of 10 humans said "yes": full credit; "no" (4 of 10) gets the official 1.0 too,
    # "maybe" nothing. Per answer type as VQAv2 reports.
    metrics, _ = objective.score(infos, ["yes", "no", "maybe", "yes"] * 10)
    assert metrics["accuracy"] == pytest.approx(0.75)
    assert metrics["accuracy_answer_yes_no"] == metrics["accuracy_is this"] == \
        metrics["accuracy"]
    assert objective.tokenizer.decode(batch["text"][0]).startswith("Is this")
  else:
    metrics, records = objective.score(infos, ["A photo of test image number 0."] * len(infos))
    assert metrics["bleu_4"] > 0.5 and "object_f1" not in metrics
    assert records[0]["references"] == [f"A photo of test image number {k}." for k in range(5)]


def test_summarization_trains_without_images_and_scores_with_rouge(tiny_sources):
  from rouge_score import rouge_scorer
  objective = runs.make_objective(shapes_summarize.get_config("tiny"))
  example = tiny_sources["train"][0]
  row = objective.train_example(example, np.random.default_rng(0))
  assert "image" not in row and not row["has_image"]
  text = objective.tokenizer.decode(row["text"])  # Description, then its summary.
  assert text.startswith("there") and text.endswith(shapes.summary(example["scene"]))
  items = [info for _, info in objective.eval_items(tiny_sources["test"][0])]
  prediction = "a large red circle and a small blue square."
  metrics, records = objective.score(items, [prediction])
  reference = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True).score(
      items[0]["target"], prediction)
  for name in ("rouge1", "rouge2", "rougeL"):
    assert metrics[name] == pytest.approx(reference[name].fmeasure)
  assert metrics["exact_match"] == float(prediction == items[0]["target"])


class _Recording:
  """The first `n` examples of a source, recording which were read."""

  def __init__(self, source, n):
    self.source, self.n, self.read = source, n, set()

  def __len__(self):
    return self.n

  def __getitem__(self, index):
    self.read.add(index)
    return self.source[index]


def test_each_process_reads_only_its_rows_of_the_folder(folder, tmp_path):
  """Two processes' local batches side by side are the one-process batch, and neither reads
  (decodes) an example of the other's rows. (Over the good images: a dropped bad example
  shifts only its own process's rows, see pipeline.py.)"""
  config = _tiny(folder_caption, folder, str(tmp_path))
  source = datasets.open_splits(config.data)["test"]
  objective = runs.make_objective(config)

  def batches(process_index, process_count, recorder):
    it = iter(objective.train_dataset(recorder, seed=0, global_batch_size=16,
                                    process_index=process_index, process_count=process_count,
                                    num_threads=0))
    return [next(it) for _ in range(2)]

  one = batches(0, 1, _Recording(source, GOOD))
  recorders = [_Recording(source, GOOD), _Recording(source, GOOD)]
  local = [batches(i, 2, recorders[i]) for i in range(2)]
  for step, global_batch in enumerate(one):
    for key, value in global_batch.items():
      np.testing.assert_array_equal(
          np.concatenate([local[0][step][key], local[1][step][key]]), value)
  assert recorders[0].read and not recorders[0].read & recorders[1].read


def test_summarization_joins_a_mixture(tiny_sources):
  """Captions with images and summaries without, in one batch: each part's sub-batch has its
  batch_spec, and the mixture's loss traces over them (jax.eval_shape: no compilation)."""
  import flax.linen as nn
  import jax
  config = shapes_summarize.get_config("tiny")
  summarize = dict(config.objective, weight=1.0)
  config.objective = dict(kind="mixture", mixture=dict(
      caption=dict(weight=1.0, prompt="", max_text_len=26), prompt=summarize))
  objective = runs.make_objective(config)
  batch = next(iter(objective.train_dataset(tiny_sources["train"], seed=0,
                                          global_batch_size=16, process_index=0,
                                          process_count=1, num_threads=0)))
  spec = objective.batch_spec(16)
  assert "image" not in batch["prompt"] and "image" in batch["caption"]
  for part in spec:
    assert {k: (v.shape, v.dtype) for k, v in batch[part].items()} == {
        k: (v.shape, v.dtype) for k, v in spec[part].items()}, part
  model = objective.build_model(config.model)
  params = jax.eval_shape(lambda: nn.unbox(objective.init_variables(
      model, jax.random.key(0)))["params"])
  loss, metrics, _ = jax.eval_shape(
      lambda p: objective.loss(model, p, {}, batch, jax.random.key(1), True), params)
  assert loss.shape == () and "prompt/loss" in metrics


def test_a_text_only_row_beside_image_rows_is_the_decoder_alone(folder, tmp_path):
  """The prompt objective on a folder: a row without an image (its slots hidden) gets the
  logits of the decoder run on its text alone, while the image row beside it sees its image."""
  import flax.linen as nn
  import jax
  config = _tiny(folder_caption, folder, str(tmp_path))
  config.objective = dict(kind="prompt", max_text_len=40, max_prompt_len=16,
                          metric="exact_match", use_images=True)
  objective = runs.make_objective(config)
  source = datasets.open_splits(config.data)["train"]
  text_only = next(source[i] for i in range(len(source)) if source[i]["prompts"])
  with_image = dict(source[0], prompts=[b"what is it?"], targets=[b"noise"])
  rows = [objective.train_example(ex, np.random.default_rng(0))
          for ex in (text_only, with_image)]
  assert [bool(r["has_image"]) for r in rows] == [False, True]
  batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
  model = objective.build_model(config.model)
  params = jax.jit(lambda key: nn.unbox(objective.init_variables(model, key)))(
      jax.random.key(0))["params"]
  forward = jax.jit(lambda images, text, ar, valid, mask: model.apply(
      {"params": params}, images, text, ar, valid, image_mask=mask))
  apply = lambda images, b, image_mask=None: forward(images, b["text"], b["ar_mask"],
                                                     b["input_mask"], image_mask)
  both = apply(batch["image"], batch, image_mask=batch["has_image"])
  alone = apply(None, {k: v[:1] for k, v in batch.items()})
  seen = apply(batch["image"][1:], {k: v[1:] for k, v in batch.items()})
  valid = batch["input_mask"]  # Padding's logits are never read.
  np.testing.assert_allclose(both[0][valid[0]], alone[0][valid[0]], atol=2e-5)
  np.testing.assert_allclose(both[1][valid[1]], seen[0][valid[1]], atol=2e-5)
  assert np.abs(both[1][valid[1]] - apply(None, {k: v[1:] for k, v in batch.items()})[0][
      valid[1]]).max() > 1e-3  # The image row's logits do depend on its image.


def test_coco_run_trains_and_evaluates(run_main, tmp_path):
  """COCO's layout through main: the tiny caption model (the folder run's program, so its
  compilation is cached), its splits train and val."""
  _coco(str(tmp_path / "coco"))
  workdir = tmp_path / "run"
  r = run_main(f"--workdir={workdir}", f"--config.data.path={tmp_path / 'coco'}",
               f"--config.data.data_dir={tmp_path / 'data'}", config="coco_captions.py:tiny")
  assert r.returncode == 0, r.stderr[-3000:]
  results = json.loads((workdir / "results.json").read_text())
  assert results["val"]["num_examples"] == 16 and "cider_d" in results["val"]
