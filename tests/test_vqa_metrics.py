"""VQA accuracy: hand-worked cases of the official vqaEval.py rules."""
import pytest

from gpt4v_jax.data import shapes
from gpt4v_jax.evals import vqa_metrics as V


@pytest.mark.parametrize("raw, normalized", [
    ("Two", "2"),                  # Number words become digits, after lower().
    ("none", "0"),
    ("yes.", "yes"),               # A period not before a digit goes.
    ("3.5", "3.5"),                # A decimal point stays.
    ("1,000", "1000"),             # Digit,digit: punctuation deleted.
    ("red,blue", "red blue"),      # Otherwise a lone comma becomes a space,
    ("red, blue", "red blue"),     # and one beside a space is deleted.
    ("black/white", "black white"),
    ("A Red Circle", "red circle"),  # Articles dropped.
    ("the an apple", "apple"),
    ("dont", "don't"),             # Contraction repaired.
    ("don't", "don't"),            # The apostrophe is not punctuation.
    ("  red \n circle\t", "red circle"),
    ("yes!!", "yes"),
    ("(3)", "3"),
])
def test_normalize_answer(raw, normalized):
  assert V.normalize_answer(raw) == normalized


@pytest.mark.parametrize("prediction, references, expected", [
    ("Two", ["2"] * 10, 1.0),
    ("yes.", ["yes"] * 10, 1.0),
    ("The circle", ["circle"] * 10, 1.0),
    ("1,000", ["1000"] * 10, 1.0),
    ("no", ["yes"] * 10, 0.0),
    # m of 10 references match. Leaving out one of the m matching ones leaves
    # m - 1 matches, leaving out any of the 10 - m others leaves m; each
    # subset scores min(matches / 3, 1) and the 10 subsets are averaged:
    # m = 1: (1 * 0/3 + 9 * 1/3) / 10 = 0.3
    ("red", ["red"] + ["blue"] * 9, 0.3),
    # m = 2: (2 * 1/3 + 8 * 2/3) / 10 = (2/3 + 16/3) / 10 = 0.6
    ("red", ["red"] * 2 + ["blue"] * 8, 0.6),
    # m = 3: (3 * 2/3 + 7 * 1) / 10 = 0.9
    ("red", ["red"] * 3 + ["blue"] * 7, 0.9),
    # m = 4: every subset keeps >= 3 matches.
    ("red", ["red"] * 4 + ["blue"] * 6, 1.0),
    # One reference is certain: normalised exact match, 1 or 0.
    ("2", ["2"], 1.0),
    ("The Two.", ["2"], 1.0),
    ("3", ["2"], 0.0),
    ("red", ["red circle"], 0.0),
    # 2-9 references: min(m / 3, 1), no averaging.
    ("two", ["2", "2"], 2 / 3),
    ("2", ["2", "3"], 1 / 3),
    ("2", ["2", "2", "2", "3"], 1.0),
    # References are stripped of punctuation only when they disagree...
    ("yes", ["yes."] * 5 + ["no"] * 5, 1.0),
    # ... and otherwise taken as given, as in the official code.
    ("yes", ["yes."] * 10, 0.0),
    # References never get the word step: "two" stays "two".
    ("2", ["two"] * 10, 0.0),
    # Bytes, as the data source returns them.
    ("yes", [b"yes"] * 10, 1.0),
])
def test_vqa_accuracy(prediction, references, expected):
  assert V.vqa_accuracy(prediction, references) == pytest.approx(expected)


def test_vqa_accuracy_needs_references():
  with pytest.raises(ValueError):
    V.vqa_accuracy("yes", [])


def test_vqa_scores_overall_and_per_type():
  items = [
      ("Red", [b"red"] * 10, b"color"),        # 1
      ("blue", ["red"] * 10, "color"),         # 0
      ("three", ["3"] * 10, "count"),          # 1
      ("yes", ["yes"] * 2 + ["no"] * 8, "existence"),  # 0.6
      ("no", ["yes"], "existence"),            # 0
  ]
  scores = V.vqa_scores(items)
  assert scores == pytest.approx({
      "accuracy": (1 + 0 + 1 + 0.6 + 0) / 5,
      "accuracy_color": 0.5,
      "accuracy_count": 1.0,
      "accuracy_existence": 0.3,
  })
  # Types come in QUESTION_TYPES order; absent types are left out.
  order = [k[len("accuracy_"):] for k in scores if k != "accuracy"]
  assert order == [t for t in shapes.QUESTION_TYPES if t in order]


def test_vqa_scores_rejects_bad_input():
  with pytest.raises(ValueError):
    V.vqa_scores([])
  with pytest.raises(ValueError):
    V.vqa_scores([("yes", ["yes"], "colour")])


def test_shapes_answers_score_one_against_themselves():
  """Every shapes answer, as the single reference, scores 1 against itself."""
  for index in range(20):
    example = shapes.make_example(0, "validation", index)
    for answer in example["answers"]:
      assert V.vqa_accuracy(answer, [answer]) == 1.0
      assert V.normalize_answer(answer) == answer
