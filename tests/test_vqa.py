"""VQA objective: row layout, one eval item per question, scoring, and a tiny run of main."""
import json

import numpy as np
import pytest

from configs import shapes_vqa
from gpt4v_jax import runs
from gpt4v_jax.data import shapes
from gpt4v_jax.data.pipeline import BadExample
from gpt4v_jax.objectives import prefix_lm
from gpt4v_jax.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, TASK_IDS


@pytest.fixture(scope="module")
def obj():
  return runs.make_objective(shapes_vqa.get_config())


@pytest.fixture(scope="module")
def one_question_obj():
  config = shapes_vqa.get_config()
  config.objective.update(questions_per_row=1, max_text_len=16)
  return runs.make_objective(config)


def _example(**overrides) -> dict:
  example = dict(id=7, image=np.zeros((64, 64, 3), np.uint8),
                 questions=[b"is there a red square?", b"how many circles are there?"],
                 answers=[[b"no"], [b"2"]], question_types=[b"existence", b"count"],
                 answer_types=[])
  return {**example, **overrides}


def test_row_is_question_prefix_then_causal_answer_with_loss_on_answer_and_eos(obj):
  row = obj.train_example(_example(questions=[b"what color is the circle?"], answers=[[b"red"]],
                                   question_types=[b"color"]), np.random.default_rng(0))
  prefix = [BOS_ID, TASK_IDS["vqa"]] + obj.tokenizer.encode("what color is the circle?")
  answer = obj.tokenizer.encode("red") + [EOS_ID]
  n = len(prefix) + len(answer)
  assert row["text"].shape == (obj.max_text_len,) and row["truncated"] == 0
  np.testing.assert_array_equal(row["text"][:n], prefix + answer)
  assert (row["text"][n:] == PAD_ID).all()
  # Prefix (BOS, task, question) attends fully; answer and EOS are causal; padding is neither.
  position = np.arange(obj.max_text_len)
  np.testing.assert_array_equal(row["ar_mask"], (position >= len(prefix)) & (position < n))
  np.testing.assert_array_equal(row["input_mask"], position < n)
  # Position i predicts text[i + 1]; only answer tokens and EOS are predicted with loss.
  np.testing.assert_array_equal(row["targets"][:n - 1], row["text"][1:n])
  predicted = np.flatnonzero(row["loss_mask"]) + 1
  np.testing.assert_array_equal(predicted, np.arange(len(prefix), n))


def test_training_samples_one_question_per_example_from_the_rng(one_question_obj):
  obj = one_question_obj
  rows = [obj.train_example(_example(), np.random.default_rng(s)) for s in range(20)]
  texts = {obj.tokenizer.decode(row["text"]) for row in rows}  # Question, then answer.
  assert texts == {"is there a red square? no", "how many circles are there? 2"}


@pytest.mark.parametrize("overrides, message", [
    (dict(answers=[[b"no"]]), "2 questions, 1 answer lists"),
    (dict(questions=[], answers=[], question_types=[]), "0 questions"),
    (dict(answers=[[b"no"], [b""]]), "empty answer"),
    (dict(answers=[[b"no"], []]), "question 1 has no answer"),
    (dict(questions=[b"\xff?", b"how?"]), "question is not UTF-8"),
    (dict(question_types=[b"existence"]), "2 questions, 2 answer lists, 1 question types"),
    (dict(questions=[b"is there " * 6 + b"?"] * 2),
     "question of 13 tokens is longer than max_question_len=12"),
])
def test_bad_questions_are_bad_examples(obj, overrides, message):
  with pytest.raises(BadExample, match=message):
    obj.train_example(_example(**overrides), np.random.default_rng(0))
  with pytest.raises(BadExample, match=message):
    obj.eval_items(_example(**overrides))


def test_unknown_question_and_answer_types_are_empty_not_bad(obj):
  """A folder row may give a question_type and no answer_type (a shapes export does)."""
  example = _example(question_types=[b"", b"count"], answer_types=[b"", b""])
  obj.train_example(example, np.random.default_rng(0))
  infos = [info for _, info in obj.eval_items(example)]
  assert [(i["qtype"], i["atype"]) for i in infos] == [("", ""), ("count", "")]
  with pytest.raises(BadExample, match="answer type is not UTF-8"):
    obj.eval_items(_example(answer_types=[b"\xff", b""]))


def test_every_generated_question_fits_the_default_row(obj):
  """max_text_len is the measured bound: no question of any split is cut or rejected."""
  for split in shapes.SPLITS:
    for index in range(50):
      ex = shapes.make_standard_example(0, split, index)
      for k in range(len(ex["questions"])):
        one = dict(ex, questions=ex["questions"][k:k + 1], answers=ex["answers"][k:k + 1],
                   question_types=ex["question_types"][k:k + 1])
        assert obj.train_example(one, np.random.default_rng(0))["truncated"] == 0


def test_eval_items_ask_every_question_of_the_image(obj):
  ex = shapes.make_example(0, "validation", 3)
  items = obj.eval_items(shapes.make_standard_example(0, "validation", 3))
  assert len(items) == len(ex["questions"]) >= 6
  for (inputs, info), q, a, t in zip(items, ex["questions"], ex["answers"],
                                      ex["question_types"]):
    assert info == dict(id="3", question=q, answers=[a], answer=a, qtype=t, atype="")
    assert inputs["prompt"].shape == inputs["prompt_mask"].shape == (obj.prompt_len,)
    n = inputs["prompt_mask"].sum()
    assert list(inputs["prompt"][:n]) == [BOS_ID, TASK_IDS["vqa"]] + obj.tokenizer.encode(q)
    assert (inputs["prompt"][n:] == PAD_ID).all()
    np.testing.assert_allclose(inputs["image"], ex["image"] / 127.5 - 1.0, atol=1e-6)


def test_relations_as_left_of_asks_right_of_questions_as_their_converse():
  assert (shapes.converse_relation("is the large red circle right of the blue object?")
          == "is the blue object left of the large red circle?")
  assert shapes.converse_relation("is the red circle left of the blue object?") is None
  left_of = runs.make_objective(shapes_vqa.get_config("left_of"))
  questions = [b"is the red circle right of the small square?", b"is the cyan object left of "
               b"the circle?", b"what color is the square?"]
  example = _example(questions=questions, answers=[[b"yes"], [b"no"], [b"red"]],
                     question_types=[b"relation", b"relation", b"color"])
  asked = [info["question"] for _, info in left_of.eval_items(example)]
  assert asked == ["is the small square left of the red circle?",
                   "is the cyan object left of the circle?", "what color is the square?"]
  assert [info["answer"] for _, info in left_of.eval_items(example)] == ["yes", "no", "red"]
  with pytest.raises(ValueError, match="relations_as='right_of'"):
    config = shapes_vqa.get_config()
    config.objective.relations_as = "right_of"
    runs.make_objective(config)


def test_score_is_exact_match_overall_and_per_type(obj):
  items = [dict(id="0", question="what color is the circle?", qtype="color", answer="red"),
           dict(id="0", question="how many squares are there?", qtype="count", answer="2"),
           dict(id="1", question="is there a blue diamond?", qtype="existence", answer="no"),
           dict(id="1", question="what shape is the red object?", qtype="shape",
                answer="circle")]
  items = [dict(item, answers=[item["answer"]], atype="") for item in items]
  metrics, records = obj.score(items, ["Red.", "two", "yes", "circles"])
  assert metrics == dict(accuracy=0.5, accuracy_color=1.0, accuracy_shape=0.0,
                         accuracy_count=1.0, accuracy_existence=0.0, num_questions=4)
  assert records[2] == dict(id="1", question="is there a blue diamond?", qtype="existence",
                            prediction="yes", answer="no")
  assert list(records[0]) == ["id", "question", "qtype", "prediction", "answer"]


def test_tiny_vqa_run_reports_accuracy_per_question_type(tiny_vqa_run):
  r, workdir = tiny_vqa_run
  assert r.returncode == 0, r.stderr[-3000:]
  results = json.loads((workdir / "results.json").read_text())["test"]
  assert {"accuracy", "num_questions"} | {f"accuracy_{t}" for t in shapes.QUESTION_TYPES
                                          } <= set(results)
  assert results["num_examples"] == 16 and results["num_questions"] >= 6 * 16
  records = json.loads((workdir / "eval_test_step6.json").read_text())["predictions"]
  assert len(records) == results["num_questions"]
  assert set(records[0]) == {"id", "question", "qtype", "prediction", "answer"}


def test_dialogue_rows_carry_loss_on_every_answer_and_drop_turns_that_do_not_fit():
  turns = [([4, 20, 21], [30]), ([4, 22], [31, 32]), ([4, 23, 24, 25], [33])]
  row, truncated = prefix_lm.make_dialogue_row(turns, bos_id=1, eos_id=2, pad_id=0, max_len=14)
  # The third turn (6 tokens) does not fit after the first two (5 + 5): it is left out whole.
  assert not truncated
  np.testing.assert_array_equal(row["text"], [1, 4, 20, 21, 30, 2, 4, 22, 31, 32, 2, 0, 0, 0])
  np.testing.assert_array_equal(row["ar_mask"], [0] * 4 + [1] * 7 + [0] * 3)
  np.testing.assert_array_equal(row["input_mask"], [1] * 11 + [0] * 3)
  # Targets: the answers and their EOS (positions 4, 5 and 8, 9, 10), predicted one earlier.
  assert np.flatnonzero(row["loss_mask"]).tolist() == [3, 4, 7, 8, 9]
  np.testing.assert_array_equal(row["targets"][:10], row["text"][1:11])
  # One turn is exactly make_row's row.
  one, _ = prefix_lm.make_dialogue_row(turns[:1], bos_id=1, eos_id=2, pad_id=0, max_len=14)
  ref, _ = prefix_lm.make_row(*turns[0], bos_id=1, eos_id=2, pad_id=0, max_len=14)
  for k in ref:
    np.testing.assert_array_equal(one[k], ref[k])


def test_vqa_dialogue_row_asks_distinct_questions_of_the_image():
  config = shapes_vqa.get_config()  # The default: all questions of the image, 114 slots.
  obj = runs.make_objective(config)
  ex = shapes.make_example(0, "train", 5)
  row = obj.train_example(shapes.make_standard_example(0, "train", 5), np.random.default_rng(0))
  t = obj.tokenizer
  pairs = {f"{q} {a}" for q, a in zip(ex["questions"], ex["answers"])}
  # Every question of the image appears once, each followed by its answer, and the loss
  # is on exactly one answer word and one EOS per question.
  turns = [t.decode(list(row["text"][s:e])) for s, e in _turn_spans(row["text"])]
  assert sorted(turns) == sorted(pairs)
  assert row["loss_mask"].sum() == 2 * len(ex["questions"])
  with pytest.raises(ValueError, match="questions_per_row"):
    config.objective.questions_per_row = 0
    runs.make_objective(config)


def test_a_row_too_short_for_the_longest_question_is_a_config_error():
  config = shapes_vqa.get_config()
  config.objective.update(questions_per_row=1, max_text_len=15)
  with pytest.raises(ValueError, match=r"max_text_len=15 cannot hold .* must be >= 16"):
    runs.make_objective(config)


def _turn_spans(text):
  """(start, end) of each `[vqa] question answer` turn, EOS excluded."""
  starts = [i + 1 for i, x in enumerate(text) if x == TASK_IDS["vqa"]]
  ends = [i for i, x in enumerate(text) if x == EOS_ID]
  return list(zip(starts, ends))
