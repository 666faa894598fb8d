"""Objective mixtures: rows in the configured proportions, exact resume, evals per part, and
the config checks."""
import json

import jax
import numpy as np
import pytest

from configs import shapes_multitask, shapes_vqa
from gpt4v_jax import config_checks, decode, sharding, train
from gpt4v_jax.data import pipeline
from gpt4v_jax.data.tokenizer import TASK_IDS, get_tokenizer
from gpt4v_jax.evals import evaluator
from gpt4v_jax.objectives import mixture


def _config(vq_workdir, caption_weight=1.0, vqa_weight=1.0, t2i_weight=1.0):
  c = shapes_multitask.get_config("tiny")
  c.objective.mixture.caption.weight = caption_weight
  c.objective.mixture.vqa.weight = vqa_weight
  c.objective.mixture.text_to_image.weight = t2i_weight
  c.objective.mixture.text_to_image.image_tokenizer = vq_workdir
  return c


def _objective(vq_workdir, **weights):
  return train.make_objective(_config(vq_workdir, **weights))


def _train_iter(source, objective):
  return iter(pipeline.train_dataset(
      source, mixture.train_components(objective), seed=0, local_batch_size=16,
      process_index=0, process_count=1, num_threads=2))


def test_multitask_config_builds_parts_with_one_row_length(vq_workdir):
  objective = _objective(vq_workdir)
  assert objective.weights == dict(caption=1.0, vqa=1.0, text_to_image=1.0)
  assert {name: part.max_text_len for name, part in objective.parts.items()} == dict(
      caption=91, vqa=91, text_to_image=91)
  short_vqa = train.make_objective(shapes_vqa.get_config("tiny"))
  with pytest.raises(ValueError, match="share max_text_len"):
    mixture.MixtureObjective(dict(caption=objective.parts["caption"], vqa=short_vqa),
                             dict(caption=1.0, vqa=1.0))


def test_rows_come_in_the_configured_proportions(tiny_sources, vq_workdir):
  it = _train_iter(tiny_sources["train"],
                   _objective(vq_workdir, caption_weight=1.0, vqa_weight=3.0, t2i_weight=4.0))
  batches = [next(it) for _ in range(125)]  # 2,000 rows.
  tasks = np.concatenate([b["text"][:, 1] for b in batches])
  code_start = np.concatenate([b["code_start"] for b in batches])
  assert set(tasks) == {TASK_IDS["caption"], TASK_IDS["vqa"], TASK_IDS["text_to_image"]}
  n = len(tasks)
  for task, p in (("caption", 1 / 8), ("vqa", 3 / 8), ("text_to_image", 4 / 8)):
    assert abs((tasks == TASK_IDS[task]).sum() - n * p) < 4 * np.sqrt(n * p * (1 - p)), task
  # Only text-to-image rows have codes to fill in.
  np.testing.assert_array_equal(code_start >= 0, tasks == TASK_IDS["text_to_image"])


def test_mixture_iterator_resumes_to_the_identical_next_batch(tiny_sources, vq_workdir):
  it = _train_iter(tiny_sources["train"], _objective(vq_workdir))
  for _ in range(3):
    next(it)
  state = json.loads(json.dumps(it.get_state()))  # As the checkpoint stores it.
  want = [next(it) for _ in range(2)]
  resumed = _train_iter(tiny_sources["train"], _objective(vq_workdir))
  resumed.set_state(state)
  for w in want:
    jax.tree.map(np.testing.assert_array_equal, next(resumed), w)


def test_each_part_is_evaluated_and_its_metrics_prefixed(tiny_sources, tmp_path,
                                                         monkeypatch, vq_workdir):
  """A stand-in decoder answers "yes" to everything: the VQA accuracy is then exactly the
  share of questions whose answer is "yes"."""

  def always_yes(model, params, images, prompt, prompt_mask, max_new_tokens, eos_id, pad_id):
    tokens = np.full((images.shape[0], max_new_tokens), pad_id, np.int32)
    yes = get_tokenizer("words:shapes").encode("yes")
    tokens[:, :len(yes) + 1] = yes + [eos_id]
    return tokens

  monkeypatch.setattr(decode, "greedy_decode", always_yes)
  source = tiny_sources["validation"]
  c = _config(vq_workdir)
  del c.objective.mixture["text_to_image"]  # Its evaluation draws images: tested on its own.
  metrics, records = evaluator.evaluate_split(
      objective=train.make_objective(c), model=None, params=None, model_state=None, source=source,
      split="validation",
      num_examples=4, batch_size=8, mesh=sharding.make_mesh(dict(data=-1, fsdp=1, tensor=1)),
      out_dir=str(tmp_path), step=0)
  answers = [a for i in range(4) for a in source[i]["answers"]]
  assert metrics["caption/num_examples"] == metrics["vqa/num_examples"] == 4
  assert metrics["vqa/num_questions"] == len(answers)
  assert metrics["vqa/accuracy"] == pytest.approx(answers.count(b"yes") / len(answers))
  assert {"caption/object_f1", "caption/cider_d", "vqa/accuracy_existence", "seconds"} <= set(
      metrics)
  assert [r["task"] for r in records] == ["caption"] * 4 + ["vqa"] * len(answers)
  assert json.loads((tmp_path / "eval_validation_step0.json").read_text())["metrics"] == metrics


@pytest.mark.parametrize("change, message", [
    (dict(kind="ocr"), "config.objective.kind='ocr'"),
    (dict(mixture=dict(text_to_image=dict(weight=1.0, image_tokenizer="/no/such/run"))),
     "config.objective.mixture.text_to_image.image_tokenizer='/no/such/run' holds no VQ-VAE"),
    (dict(mixture=dict(ocr=dict(weight=1.0))), "config.objective.mixture.ocr: not an objective"),
    (dict(mixture=dict(vqa=dict(weight=0.0, max_new_tokens=9))),
     r"config.objective.mixture.vqa.weight=0.0 must be positive"),
])
def test_bad_objectives_fail_the_config_checks(tmp_path, change, message):
  c = shapes_multitask.get_config("tiny")
  c.objective.update(change)
  with pytest.raises(ValueError, match=message):
    config_checks.check(c, str(tmp_path / "run"))
