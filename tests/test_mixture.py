"""Objective mixtures: rows in the configured proportions, exact resume, evals per part, and
the config checks."""
import json

import flax.linen as nn
import jax
import numpy as np
import pytest

from configs import shapes_multitask
from gpt4v_jax import config_checks, decode, main, runs, sharding
from gpt4v_jax.data.tokenizer import TASK_IDS, get_tokenizer
from gpt4v_jax.evals import evaluator
from gpt4v_jax.objectives import mixture, prefix_lm


def _config(vq_workdir, caption_weight=1.0, vqa_weight=1.0, t2i_weight=1.0):
  c = shapes_multitask.get_config("tiny")
  c.objective.mixture.caption.weight = caption_weight
  c.objective.mixture.vqa.weight = vqa_weight
  c.objective.mixture.text_to_image.weight = t2i_weight
  c.objective.mixture.text_to_image.image_tokenizer = vq_workdir
  return c


def _objective(vq_workdir, **weights):
  return runs.make_objective(_config(vq_workdir, **weights))


def _train_iter(source, objective, batch_size=16):
  return iter(objective.train_dataset(source, seed=0, global_batch_size=batch_size, process_index=0,
      process_count=1, num_threads=2))


def test_weights_give_whole_rows_of_every_batch():
  assert mixture.rows_per_part(dict(caption=2, vqa=2, text_to_image=1.5), 16) == dict(
      caption=6, vqa=6, text_to_image=4)
  assert mixture.rows_per_part(dict(a=1, b=1, c=1), 16) == dict(a=6, b=5, c=5)
  assert mixture.rows_per_part(dict(a=1, b=3, c=4), 16) == dict(a=2, b=6, c=8)
  with pytest.raises(ValueError, match=r"mixture.b.weight=0.05 gives it none of the 8 rows"):
    mixture.rows_per_part(dict(a=1, b=0.05), 8)  # 7.6 and 0.4 rows.


def test_multitask_config_builds_parts_with_their_own_row_lengths(vq_workdir):
  objective = _objective(vq_workdir)
  assert objective.weights == dict(caption=1.0, vqa=1.0, text_to_image=1.0)
  assert {name: part.max_text_len for name, part in objective.parts.items()} == dict(
      caption=26, vqa=91, text_to_image=91)
  spec = objective.batch_spec(16)
  assert {name: spec[name]["text"].shape for name in spec} == dict(
      caption=(6, 26), text_to_image=(5, 91), vqa=(5, 91))


def test_every_batch_holds_each_parts_rows(tiny_sources, vq_workdir):
  it = _train_iter(tiny_sources["train"],
                   _objective(vq_workdir, caption_weight=1.0, vqa_weight=3.0, t2i_weight=4.0))
  want = dict(caption=(2, 26), vqa=(6, 91), text_to_image=(8, 91))
  for _ in range(3):
    batch = next(it)
    assert {name: rows["text"].shape for name, rows in batch.items()} == want
    for name, rows in batch.items():
      assert (rows["text"][:, 1] == TASK_IDS[name]).all(), name
      assert rows["image"].shape == (want[name][0], 64, 64, 3)
    assert (batch["text_to_image"]["code_start"] > 0).all()  # Where its codes go.


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


def test_loss_equals_one_padded_batch_of_the_text_rows_and_the_image_rows(tiny_sources,
                                                                        vq_workdir):
  """The mixture's loss against the layout it replaced for the text tasks: caption rows
  padded to the VQA rows' 91 slots and stacked with them into one batch, its mean next-token
  loss combined with text-to-image's by target tokens. Sub-batches, their row lengths and the
  weighting change nothing."""
  objective = _objective(vq_workdir)
  model = objective.build_model(_config(vq_workdir).model)
  variables = nn.unbox(jax.jit(objective.init_variables, static_argnums=0)(
      model, jax.random.PRNGKey(0)))
  params, model_state = variables.pop("params"), variables
  batch = next(_train_iter(tiny_sources["train"], objective))
  caption, vqa = batch["caption"], batch["vqa"]
  pad = vqa["text"].shape[1] - caption["text"].shape[1]
  assert pad > 0
  padded = {k: np.pad(v, [(0, 0), (0, pad)]) if v.ndim == 2 else v
            for k, v in caption.items()}  # Text fields: pad_id, masks and targets are 0.
  text_rows = {k: np.concatenate([padded[k], vqa[k]]) for k in ("image", "text", "ar_mask",
                                                                "input_mask", "targets",
                                                                "loss_mask")}

  @jax.jit
  def losses(batch, text_rows):
    loss, aux, _ = objective.loss(model, params, model_state, batch, jax.random.PRNGKey(0),
                                  True)
    t2i = objective.parts["text_to_image"]
    t2i_loss, t2i_aux, _ = t2i.loss(model, params, model_state, batch["text_to_image"],
                                    jax.random.PRNGKey(0), True)
    logits = model.apply({"params": params}, text_rows["image"], text_rows["text"],
                         text_rows["ar_mask"], text_rows["input_mask"])
    text_loss, text_aux = prefix_lm.next_token_loss(logits, text_rows["targets"],
                                                   text_rows["loss_mask"])
    n_text, n_t2i = text_aux["target_tokens"], t2i_aux["target_tokens"]
    want = (text_loss * n_text + t2i_loss * n_t2i) / (n_text + n_t2i)
    return loss, aux, want, n_text + n_t2i

  loss, aux, want, tokens = losses(batch, text_rows)
  np.testing.assert_allclose(float(loss), float(want), rtol=1e-5)
  assert float(aux["target_tokens"]) == float(tokens)
  assert {"caption/loss", "vqa/loss", "text_to_image/loss"} <= set(aux)


def test_part_rows_that_do_not_divide_the_mesh_fail_before_compiling(tiny_sources, vq_workdir,
                                                                    tiny_data_dir, tmp_path):
  c = _config(vq_workdir)  # 1:1:1 of 16 rows: 6, 5 and 5, over 8 data devices.
  c.data.data_dir = tiny_data_dir
  with pytest.raises(ValueError, match=r"config.objective.mixture.caption's rows per batch .*"
                     r"=6 is not divisible by the mesh's data\*fsdp = 8"):
    main.train(c, str(tmp_path / "run"))


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
      objective=runs.make_objective(c), model=None, params=None, model_state=None, source=source,
      split="validation",
      num_examples=4, batch_size=8, mesh=sharding.make_mesh(dict(data=-1, fsdp=1, tensor=1)),
      out_dir=str(tmp_path), step=0)
  answers = [a for i in range(4) for (a,) in source[i]["answers"]]
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
    (dict(mixture=dict(caption=dict(weight=1.0, prompt="", max_text_len=0))),
     r"config.objective.mixture.caption.max_text_len=0 must be positive"),
])
def test_bad_objectives_fail_the_config_checks(tmp_path, change, message):
  c = shapes_multitask.get_config("tiny")
  c.objective.update(change)
  with pytest.raises(ValueError, match=message):
    config_checks.check(c, str(tmp_path / "run"))
