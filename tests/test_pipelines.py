"""The pipelines and the predict command line on exported tiny runs: their predictions are the
training run's own evaluation of the same checkpoint, whatever form the images come in."""
import glob
import io
import json
import os
import re
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest

from conftest import FAST_COMPILE, ROOT
from gpt4v_jax import export
from gpt4v_jax.model import Model
from gpt4v_jax.pipelines import pipeline

N = 16  # Test examples to caption: all that the tiny caption run's final eval covered.


def _final_eval(workdir) -> list[dict]:
  """The records of the run's last evaluation of the test split, in order."""
  paths = glob.glob(os.path.join(workdir, "eval_test_step*.json"))
  last = max(paths, key=lambda p: int(re.search(r"step(\d+)", p).group(1)))
  with open(last) as f:
    return json.load(f)["predictions"]


def _exported(run, tmp_path_factory, name: str) -> str:
  r, workdir = run
  assert r.returncode == 0, r.stderr[-3000:]
  return export.export(str(workdir), str(tmp_path_factory.mktemp(name) / "model"))


@pytest.fixture(scope="module")
def caption_dir(tiny_run, tmp_path_factory):
  return _exported(tiny_run, tmp_path_factory, "caption_export")


@pytest.fixture(scope="module")
def vqa_dir(tiny_vqa_run, tmp_path_factory):
  return _exported(tiny_vqa_run, tmp_path_factory, "vqa_export")


@pytest.fixture(scope="module")
def t2i_dir(tiny_t2i_run, tmp_path_factory):
  path = _exported(tiny_t2i_run, tmp_path_factory, "t2i_export")
  # Self-contained: its VQ-VAE is a model directory inside it, not the VQ-VAE run's workdir.
  assert os.path.exists(os.path.join(path, "image_tokenizer", "model_info.json"))
  return path


@pytest.fixture(scope="module")
def caption_model(caption_dir):
  return Model.from_pretrained(caption_dir)


@pytest.fixture(scope="module")
def vqa_model(vqa_dir):
  return Model.from_pretrained(vqa_dir)


@pytest.fixture(scope="module")
def t2i_model(t2i_dir):
  return Model.from_pretrained(t2i_dir)


@pytest.fixture(scope="module")
def test_pngs(tiny_sources, tmp_path_factory) -> list[str]:
  """The first N test images as PNG files, in order."""
  root = tmp_path_factory.mktemp("pngs")
  paths = []
  for i in range(N):
    path = root / f"{i}.png"
    path.write_bytes(tiny_sources["test"][i]["image"])
    paths.append(str(path))
  return paths


def _cli(*flags, cwd=ROOT) -> subprocess.CompletedProcess:
  """One run of the predict command on one (CPU) device."""
  env = {**os.environ, "XLA_FLAGS": FAST_COMPILE, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}
  return subprocess.run([sys.executable, "-m", "gpt4v_jax.predict", *map(str, flags)],
                        cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_image_to_text_is_the_evaluators_prediction_for_every_input_form(
    caption_model, tiny_run, test_pngs):
  records = _final_eval(tiny_run[1])
  assert len(records) == N and all(r["id"] == str(i) for i, r in enumerate(records))
  want = [r["prediction"] for r in records]
  pipe = pipeline("image-to-text", model=caption_model)
  pil = [PIL.Image.open(p) for p in test_pngs]
  arrays = [np.asarray(im.convert("RGB")) for im in pil]
  for images in (test_pngs, pil, arrays):
    out = pipe(images)
    assert out == [[{"generated_text": w}] for w in want]
  assert pipe(test_pngs[1]) == [{"generated_text": want[1]}]  # One input: one list.


def test_vqa_answers_are_the_evaluators_with_probabilities(vqa_model, tiny_vqa_run,
                                                           tiny_sources):
  test = tiny_sources["test"]
  images = {str(test[i]["id"]): test[i]["image"] for i in range(4)}
  records = [r for r in _final_eval(tiny_vqa_run[1]) if r["id"] in images][:24]
  assert len(records) == 24
  pipe = pipeline("visual-question-answering", model=vqa_model)
  out = pipe([images[r["id"]] for r in records], [r["question"] for r in records])
  assert [o[0]["answer"] for o in out] == [r["prediction"] for r in records]
  scores = np.array([o[0]["score"] for o in out])
  assert ((scores > 0) & (scores <= 1)).all() and np.ptp(scores) > 0  # Each row's own.
  vqa = vqa_model.part("vqa")
  # Greedy decoding checked through the teacher-forced pass instead of the KV cache: an empty
  # answer means EOS was the likeliest first token, so no one-word answer can be likelier.
  empty = [k for k, o in enumerate(out) if o[0]["answer"] == ""][:4]
  words = ["yes", "no", "red", "blue", "two", "circle"]
  if empty:
    rows = [records[k] for k in empty for _ in words]
    log_p = vqa_model.score([images[r["id"]] for r in rows],
                            [vqa.prompt_ids(r["question"]) for r in rows], words * len(empty))
    assert (log_p.reshape(len(empty), -1) <= np.log(scores[empty])[:, None] + 1e-5).all()
  # The score is the answer's probability: p(answer, EOS | image, question).
  r = records[0]
  log_p = vqa_model.score([images[r["id"]]], [vqa.prompt_ids(r["question"])],
                          [r["prediction"]])
  np.testing.assert_allclose(scores[0], np.exp(log_p[0]), rtol=1e-5)
  # Every call form gives the same row.
  one = pipe(image=images[r["id"]], question=r["question"])
  assert one == pipe({"image": images[r["id"]], "question": r["question"]})
  assert one[0]["answer"] == r["prediction"]
  np.testing.assert_allclose(one[0]["score"], scores[0], rtol=1e-5)


def test_text_to_image_draws_the_same_image_from_the_same_seed(t2i_model, tiny_sources):
  pipe = pipeline("text-to-image", model=t2i_model)
  size = PIL.Image.open(io.BytesIO(tiny_sources["test"][0]["image"])).size
  prompts = ["a small red circle", "two blue squares"]
  first, again = pipe(prompts, seed=1), pipe(prompts, seed=1)
  assert len(first) == 2
  for [a], [b] in zip(first, again):
    assert isinstance(a["image"], PIL.Image.Image)
    assert a["image"].size == size and a["image"].mode == "RGB"
    np.testing.assert_array_equal(np.asarray(a["image"]), np.asarray(b["image"]))
  [one] = pipe(prompts[0], seed=1)
  np.testing.assert_array_equal(np.asarray(one["image"]), np.asarray(first[0][0]["image"]))


def test_image_feature_extraction_shapes(caption_model, test_pngs):
  pipe = pipeline("image-feature-extraction", model=caption_model)
  config = caption_model.config.model
  tokens = pipe(test_pngs[:3])
  patches = (caption_model.preprocess.size // 16) ** 2  # The tiny runs' nano/16 ViT.
  assert len(tokens) == 3
  assert all(t.shape == (patches, config.width) and t.dtype == np.float32 for t in tokens)
  pooled = pipe(test_pngs[:3], pool=True)
  assert pooled[0].shape == (config.width,)
  np.testing.assert_allclose(np.stack(pooled), np.stack(tokens).mean(1), rtol=1e-5, atol=1e-6)
  assert pipe(test_pngs[0]).shape == (patches, config.width)


def test_unknown_or_untrained_task_is_a_clear_error(caption_model, t2i_model):
  with pytest.raises(ValueError, match="image-to-text.*visual-question-answering"):
    pipeline("image-captioning", model=caption_model)
  with pytest.raises(ValueError, match=r"trained on \['caption'\], not 'vqa'"):
    pipeline("visual-question-answering", model=caption_model)
  with pytest.raises(ValueError, match="not 'prompt'"):
    pipeline("summarization", model=caption_model)
  with pytest.raises(ValueError, match="no trained image encoder"):
    pipeline("image-feature-extraction", model=t2i_model)


def test_bad_image_names_its_file(caption_model, tmp_path):
  from gpt4v_jax.data.pipeline import BadExample
  bad = tmp_path / "bad.png"
  bad.write_bytes(b"not an image")
  with pytest.raises(BadExample, match="bad.png"):
    pipeline("image-to-text", model=caption_model)([str(bad)])


def test_predict_cli_captions_and_keeps_going_past_bad_files(caption_dir, caption_model,
                                                             test_pngs, tmp_path):
  bad = tmp_path / "corrupt.png"
  bad.write_bytes(b"\x89PNG not really")
  missing = tmp_path / "missing.png"
  # Two good files whose captions differ where the tiny run has two such (it captions most
  # images alike), found by a glob; then the bad ones. Lines come in input order.
  captions = caption_model.caption(test_pngs)
  other = next((k for k, c in enumerate(captions) if c != captions[0]), 1)
  good = tmp_path / "good"
  good.mkdir()
  for k, i in enumerate((0, other)):
    (good / f"{k}.png").write_bytes(open(test_pngs[i], "rb").read())
  r = _cli(f"--model={caption_dir}", f"--image={good}/*.png", f"--image={bad}",
           f"--image={missing}", "--batch_size=2")
  assert r.returncode == 0, r.stderr[-3000:]
  lines = [json.loads(x) for x in r.stdout.splitlines()]  # Nothing else on stdout.
  assert [x["image"] for x in lines] == [f"{good}/0.png", f"{good}/1.png", str(bad),
                                         str(missing)]
  assert [x["caption"] for x in lines[:2]] == [captions[0], captions[other]]
  assert "corrupt.png" in lines[2]["error"] and "caption" not in lines[2]
  assert "missing.png" in lines[3]["error"] and "No such file" in lines[3]["error"]
  assert "predict: 4/4 images" in r.stderr


def test_predict_cli_answers_a_question(vqa_dir, vqa_model, test_pngs, tmp_path):
  question = "what color is the circle?"
  out = tmp_path / "answers.jsonl"
  r = _cli(f"--model={vqa_dir}", f"--image={test_pngs[0]}", f"--image={test_pngs[1]}",
           f"--question={question}", f"--out={out}")
  assert r.returncode == 0, r.stderr[-3000:]
  lines = [json.loads(x) for x in out.read_text().splitlines()]
  want = vqa_model.answer(test_pngs[:2], question)
  assert lines == [dict(image=p, question=question, answer=a)
                   for p, a in zip(test_pngs[:2], want)]


def test_predict_cli_draws_prompts_to_pngs(t2i_dir, t2i_model, tmp_path):
  out = tmp_path / "drawn.jsonl"
  prompts = ["a small red circle", "two blue squares"]
  r = _cli(f"--model={t2i_dir}", *[f"--prompt={p}" for p in prompts], f"--out={out}",
           "--seed=3")
  assert r.returncode == 0, r.stderr[-3000:]
  lines = [json.loads(x) for x in out.read_text().splitlines()]
  assert [x["prompt"] for x in lines] == prompts
  want = t2i_model.text_to_image(prompts, seed=3)
  for line, image in zip(lines, want):
    assert os.path.dirname(line["image_path"]) == str(tmp_path)  # Next to --out.
    np.testing.assert_array_equal(np.asarray(PIL.Image.open(line["image_path"])), image)


def test_predict_cli_without_a_model_is_a_clear_error(tmp_path):
  # These exit before jax is imported: each costs a Python start, no compile.
  r = _cli("--image=a.png")
  assert r.returncode == 1 and "--model is required" in r.stderr
  r = _cli(f"--model={tmp_path / 'nope'}", "--image=a.png")
  assert r.returncode == 1 and "nope: no such directory" in r.stderr
