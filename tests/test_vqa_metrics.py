"""VQA accuracy: hand-worked cases, and agreement with a port of the official vqaEval.py."""
import random
import re

import pytest

from gpt4v_jax.data import shapes
from gpt4v_jax.evals import vqa_metrics as V

# ---------------------------------------------------------------------------
# The oracle: a port to Python 3 of the per-question computation of GT-Vision-Lab/VQA,
# PythonEvaluationTools/vqaEvaluation/vqaEval.py (VQAEval.evaluate, processPunctuation,
# processDigitArticle), kept as close to the original as Python 3 allows. Its tables are the
# script's, verbatim.
# ---------------------------------------------------------------------------

OFFICIAL_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
    "couldnt": "couldn't", "couldn'tve": "couldn’t’ve", "couldnt’ve": "couldn’t’ve",
    "didnt": "didn’t", "doesnt": "doesn’t", "dont": "don’t", "hadnt": "hadn’t",
    "hadnt’ve": "hadn’t’ve", "hadn'tve": "hadn’t’ve", "hasnt": "hasn’t", "havent": "haven’t",
    "hed": "he’d", "hed’ve": "he’d’ve", "he’dve": "he’d’ve", "hes": "he’s", "howd": "how’d",
    "howll": "how’ll", "hows": "how’s", "Id’ve": "I’d’ve", "I’dve": "I’d’ve", "Im": "I’m",
    "Ive": "I’ve", "isnt": "isn’t", "itd": "it’d", "itd’ve": "it’d’ve", "it’dve": "it’d’ve",
    "itll": "it’ll", "let’s": "let’s", "maam": "ma’am", "mightnt": "mightn’t",
    "mightnt’ve": "mightn’t’ve", "mightn’tve": "mightn’t’ve", "mightve": "might’ve",
    "mustnt": "mustn’t", "mustve": "must’ve", "neednt": "needn’t", "notve": "not’ve",
    "oclock": "o’clock", "oughtnt": "oughtn’t", "ow’s’at": "’ow’s’at", "’ows’at": "’ow’s’at",
    "’ow’sat": "’ow’s’at", "shant": "shan’t", "shed’ve": "she’d’ve", "she’dve": "she’d’ve",
    "she’s": "she’s", "shouldve": "should’ve", "shouldnt": "shouldn’t",
    "shouldnt’ve": "shouldn’t’ve", "shouldn’tve": "shouldn’t’ve", "somebody’d": "somebodyd",
    "somebodyd’ve": "somebody’d’ve", "somebody’dve": "somebody’d’ve", "somebodyll": "somebody’ll",
    "somebodys": "somebody’s", "someoned": "someone’d", "someoned’ve": "someone’d’ve",
    "someone’dve": "someone’d’ve", "someonell": "someone’ll", "someones": "someone’s",
    "somethingd": "something’d", "somethingd’ve": "something’d’ve",
    "something’dve": "something’d’ve", "somethingll": "something’ll", "thats": "that’s",
    "thered": "there’d", "thered’ve": "there’d’ve", "there’dve": "there’d’ve",
    "therere": "there’re", "theres": "there’s", "theyd": "they’d", "theyd’ve": "they’d’ve",
    "they’dve": "they’d’ve", "theyll": "they’ll", "theyre": "they’re", "theyve": "they’ve",
    "twas": "’twas", "wasnt": "wasn’t", "wed’ve": "we’d’ve", "we’dve": "we’d’ve", "weve": "we've",
    "werent": "weren’t", "whatll": "what’ll", "whatre": "what’re", "whats": "what’s",
    "whatve": "what’ve", "whens": "when’s", "whered": "where’d", "wheres": "where's",
    "whereve": "where’ve", "whod": "who’d", "whod’ve": "who’d’ve", "who’dve": "who’d’ve",
    "wholl": "who’ll", "whos": "who’s", "whove": "who've", "whyll": "why’ll", "whyre": "why’re",
    "whys": "why’s", "wont": "won’t", "wouldve": "would’ve", "wouldnt": "wouldn’t",
    "wouldnt’ve": "wouldn’t’ve", "wouldn’tve": "wouldn’t’ve", "yall": "y’all",
    "yall’ll": "y’all’ll", "y’allll": "y’all’ll", "yall’d’ve": "y’all’d’ve",
    "y’alld’ve": "y’all’d’ve", "y’all’dve": "y’all’d’ve", "youd": "you’d", "youd’ve": "you’d’ve",
    "you’dve": "you’d’ve", "youll": "you’ll", "youre": "you’re", "youve": "you’ve",
}
OFFICIAL_MANUAL_MAP = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3",
                       "four": "4", "five": "5", "six": "6", "seven": "7", "eight": "8",
                       "nine": "9", "ten": "10"}
OFFICIAL_ARTICLES = ["a", "an", "the"]
OFFICIAL_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
OFFICIAL_COMMA_STRIP = re.compile(r"(\d)(\,)(\d)")
OFFICIAL_PUNCT = [";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">",
                  "<", "@", "`", ",", "?", "!"]


def official_process_punctuation(in_text):
  out_text = in_text
  for p in OFFICIAL_PUNCT:
    if (p + " " in in_text or " " + p in in_text) or (
        re.search(OFFICIAL_COMMA_STRIP, in_text) is not None):
      out_text = out_text.replace(p, "")
    else:
      out_text = out_text.replace(p, " ")
  # The script passes re.UNICODE positionally, i.e. as the count (Python 3.13 wants a keyword).
  return OFFICIAL_PERIOD_STRIP.sub("", out_text, count=re.UNICODE)


def official_process_digit_article(in_text):
  manual_map = dict(OFFICIAL_MANUAL_MAP)  # The script's setdefault grows its own copy.
  out_text = []
  for word in in_text.lower().split():
    word = manual_map.setdefault(word, word)
    if word not in OFFICIAL_ARTICLES:
      out_text.append(word)
  for word_id, word in enumerate(out_text):
    if word in OFFICIAL_CONTRACTIONS:
      out_text[word_id] = OFFICIAL_CONTRACTIONS[word]
  return " ".join(out_text)


def official_accuracy(prediction, answers):
  """The body of VQAEval.evaluate's loop for one question: the answers as annotation dicts,
  distinct by answer_id, so that `item != gtAnsDatum` leaves exactly one out."""
  gt_answers_dicts = [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
                      for i, a in enumerate(answers)]
  for ans_dic in gt_answers_dicts:
    ans_dic["answer"] = ans_dic["answer"].replace("\n", " ")
    ans_dic["answer"] = ans_dic["answer"].replace("\t", " ")
    ans_dic["answer"] = ans_dic["answer"].strip()
  res_ans = prediction
  res_ans = res_ans.replace("\n", " ")
  res_ans = res_ans.replace("\t", " ")
  res_ans = res_ans.strip()
  gt_acc = []
  gt_answers = [ans["answer"] for ans in gt_answers_dicts]
  if len(set(gt_answers)) > 1:
    for ans_dic in gt_answers_dicts:
      ans_dic["answer"] = official_process_punctuation(ans_dic["answer"])
      ans_dic["answer"] = official_process_digit_article(ans_dic["answer"])
    res_ans = official_process_punctuation(res_ans)
    res_ans = official_process_digit_article(res_ans)
  for gt_ans_datum in gt_answers_dicts:
    other_gt_ans = [item for item in gt_answers_dicts if item != gt_ans_datum]
    matching_ans = [item for item in other_gt_ans if item["answer"] == res_ans]
    acc = min(1, float(len(matching_ans)) / 3)
    gt_acc.append(acc)
  return float(sum(gt_acc)) / len(gt_acc)


def official_normalize(text):
  text = text.replace("\n", " ").replace("\t", " ").strip()
  return official_process_digit_article(official_process_punctuation(text))


# Messy answers: case, punctuation, number words, articles, digits with commas, contractions
# (ASCII, typographic and missing apostrophes), periods, whitespace.
MESSY = [
    "two", "Two", "2", "two.", "the two", "Two ", "\ttwo\n", "2.", "two!", "2 ",
    "1,000", "1000", "1 000", "1,000.", "one thousand", "10,000", "10000",
    "yes", "Yes", "yes.", "YES!", "yes !", "no", "No.", "no,", "yes , no", "yes,no", "yes\tno",
    "yes no", "yes\n\nno",
    "red", "Red", "a red", "the red one", "red one", "red/white", "red / white", "red white",
    "red-white", "red, white", "red,white", "(red)", '"red"',
    "dont", "don't", "don’t", "Dont", "do not", "isnt", "isn't", "isn’t", "somebody’d",
    "somebodyd", "it's", "its", "Im", "im",
    "3.5", "3.", ".5", "3", "three", "3.0", "a.m.", "am", "A.M.", "pm",
    "none", "zero", "0", "ten", "10", "one", "1", "an apple", "apple", "Apple.", "(3)", "[3]",
]

# ---------------------------------------------------------------------------
# Normalisation
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("raw, normalized", [
    ("Two", "2"),                  # Number words become digits, after lower().
    ("none", "0"),
    ("yes.", "yes"),               # A period not before a digit goes.
    ("3.5", "3.5"),                # A decimal point stays.
    ("3.", "3"),                   # The pattern's "(?!<=\d)" does not keep this one.
    ("1,000", "1000"),             # Digit,digit: punctuation deleted.
    ("red,blue", "red blue"),      # Otherwise a lone comma becomes a space,
    ("red, blue", "red blue"),     # and one beside a space is deleted.
    ("black/white", "black white"),
    ("red-blue / green", "red blue green"),
    ("A Red Circle", "red circle"),  # Articles dropped.
    ("the an apple", "apple"),
    ("dont", "don’t"),             # The official table's value has U+2019, not "'".
    ("don't", "don't"),            # The apostrophe is not punctuation.
    ("somebody’d", "somebodyd"),   # A typographic key fires on typographic input.
    ("Im", "im"),                  # Capitalised keys never fire: words are lower-cased first.
    ("  red \n circle\t", "red circle"),
    ("yes!!", "yes"),
    ("(3)", "3"),
    ("yes" + "." * 40, "yes" + "." * 8),  # At most 32 periods are deleted (count=re.UNICODE).
])
def test_normalize_answer(raw, normalized):
  assert V.normalize_answer(raw) == normalized
  assert official_normalize(raw) == normalized


def test_normalize_answer_matches_official_on_messy_answers():
  for text in MESSY:
    assert V.normalize_answer(text) == official_normalize(text), text


def test_contraction_table_is_the_official_one():
  """Ours is the official table less the keys that cannot fire (capitalised)."""
  firing = {k: v for k, v in OFFICIAL_CONTRACTIONS.items() if k == k.lower()}
  assert V._CONTRACTIONS == firing
  assert set(OFFICIAL_CONTRACTIONS) - set(firing) == {"I’dve", "Id’ve", "Im", "Ive"}


# ---------------------------------------------------------------------------
# Accuracy, n >= 2 answers: the official rule
# ---------------------------------------------------------------------------

# (prediction, human answers, accuracy worked by hand).
OFFICIAL_CASES = [
    # Agreeing answers are compared raw (stripped only), disagreeing ones normalised.
    ("two", ["two"] * 10, 1.0),
    ("Two", ["two"] * 10, 0.0),
    ("2", ["two"] * 10, 0.0),
    ("Two.", ["2"] * 10, 0.0),
    ("yes.", ["yes"] * 10, 0.0),
    ("yes", ["yes."] * 10, 0.0),
    ("yes.", ["yes"] * 9 + ["no"], 1.0),
    ("yes", ["yes."] * 5 + ["no"] * 5, 1.0),
    ("Two.", ["2"] * 3 + ["3"] * 7, 0.9),
    # "two" and "1,000" answers disagree, so "two" -> "2" and "1,000" -> "1000".
    ("2", ["two"] * 4 + ["1,000"] * 6, 1.0),
    ("2", ["two"] * 2 + ["2"] + ["1,000"] * 7, 0.9),
    ("1,000", ["two"] * 4 + ["1,000"] * 6, 1.0),
    ("1000", ["two"] * 4 + ["1,000"] * 6, 1.0),
    # Articles.
    ("The circle", ["circle"] * 9 + ["a circle"], 1.0),
    ("an apple", ["apple"] * 2 + ["pear"] * 8, 0.6),
    # Contractions: "dont" becomes "don’t" (U+2019), which a human "don't" never equals.
    ("dont", ["don't"] * 5 + ["no"] * 5, 0.0),
    ("don't", ["don't"] * 5 + ["no"] * 5, 1.0),
    ("dont", ["dont"] * 5 + ["no"] * 5, 1.0),
    ("don’t", ["dont"] * 5 + ["no"] * 5, 1.0),
    # Newlines and tabs become spaces, ends stripped; inner spaces collapse only when
    # normalised.
    ("\tyes\n", ["yes"] * 10, 1.0),
    ("yes\tno", ["yes no"] * 10, 1.0),
    ("yes\n\nno", ["yes no"] * 10, 0.0),
    ("yes\n\nno", ["yes no"] * 9 + ["no"], 1.0),
    # Punctuation beside a space is deleted, elsewhere it becomes a space.
    ("black / white", ["black white"] * 3 + ["gray"] * 7, 0.9),
    ("black/white", ["black white"] * 3 + ["gray"] * 7, 0.9),
    ("yes , no", ["yes no"] * 3 + ["no"] * 7, 0.9),
    ("red-blue / green", ["red blue green"] * 4 + ["red"] * 6, 1.0),
    # Periods.
    ("3.5", ["3.5"] * 3 + ["3"] * 7, 0.9),
    ("3.", ["3"] * 3 + ["4"] * 7, 0.9),
    ("a.m.", ["am"] * 4 + ["pm"] * 6, 1.0),
    ("yes" + "." * 32, ["yes"] * 5 + ["no"] * 5, 1.0),
    ("yes" + "." * 40, ["yes"] * 5 + ["no"] * 5, 0.0),
    # m of 10 answers match. Leaving out one of the m matching ones leaves m - 1 matches,
    # leaving out any of the 10 - m others leaves m; each scores min(matches / 3, 1):
    ("no", ["yes"] * 10, 0.0),
    ("red", ["red"] + ["blue"] * 9, 0.3),       # (1 * 0/3 + 9 * 1/3) / 10
    ("red", ["red"] * 2 + ["blue"] * 8, 0.6),   # (2 * 1/3 + 8 * 2/3) / 10
    ("red", ["red"] * 3 + ["blue"] * 7, 0.9),   # (3 * 2/3 + 7 * 1) / 10
    ("red", ["red"] * 4 + ["blue"] * 6, 1.0),   # every subset keeps >= 3 matches
    # 2-9 answers: the same leave-one-out mean (this module once skipped the averaging there).
    ("2", ["2", "3"], 1 / 6),                   # (0 + 1/3) / 2
    ("2", ["2"] * 3 + ["3"], 0.75),             # (3 * 2/3 + 1) / 4
    ("two", ["2", "2"], 0.0),                   # agreeing answers: raw "two" != "2"
    # Bytes, as the data source returns them.
    ("yes", [b"yes"] * 10, 1.0),
    (b"yes", ["yes"] * 9 + ["no"], 1.0),
]


@pytest.mark.parametrize("prediction, answers, expected", OFFICIAL_CASES)
def test_vqa_accuracy_hand_cases(prediction, answers, expected):
  assert V.vqa_accuracy(prediction, answers) == pytest.approx(expected)
  as_str = lambda t: t.decode() if isinstance(t, bytes) else t  # noqa: E731
  assert official_accuracy(as_str(prediction), [as_str(a) for a in answers]) == pytest.approx(
      expected)


def _random_answers(rng, n):
  """n answers drawn from 1-4 messy candidates (one candidate: they all agree)."""
  candidates = rng.sample(MESSY, rng.choice([1, 1, 2, 2, 3, 4]))
  weights = [rng.random() + 0.1 for _ in candidates]
  return rng.choices(candidates, weights, k=n), candidates


def test_vqa_accuracy_matches_official_on_random_questions():
  rng = random.Random(0)
  agreeing = scored = 0
  for _ in range(3000):
    answers, candidates = _random_answers(rng, 10)
    prediction = rng.choice(candidates if rng.random() < 0.6 else MESSY)
    expected = official_accuracy(prediction, answers)
    assert V.vqa_accuracy(prediction, answers) == expected, (prediction, answers)
    agreeing += len(set(answers)) == 1
    scored += expected > 0
  # Both branches, and many non-zero scores, were exercised.
  assert 500 < agreeing < 2500 and scored > 500


def test_vqa_accuracy_matches_official_for_2_to_12_answers():
  rng = random.Random(1)
  for _ in range(1000):
    answers, candidates = _random_answers(rng, rng.randint(2, 12))
    prediction = rng.choice(candidates if rng.random() < 0.6 else MESSY)
    assert V.vqa_accuracy(prediction, answers) == official_accuracy(prediction, answers), (
        prediction, answers)


# ---------------------------------------------------------------------------
# Accuracy, one answer: normalised exact match (the official rule would score 0)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("prediction, reference, expected", [
    ("2", "2", 1.0),
    ("The Two.", "2", 1.0),
    ("2", "two", 1.0),             # The reference is normalised too.
    ("Red.", b"red", 1.0),
    ("3", "2", 0.0),
    ("red", "red circle", 0.0),
])
def test_vqa_accuracy_single_reference(prediction, reference, expected):
  assert V.vqa_accuracy(prediction, [reference]) == expected


def test_vqa_accuracy_rejects_bad_references():
  with pytest.raises(ValueError):
    V.vqa_accuracy("yes", [])
  with pytest.raises(TypeError, match="list"):
    V.vqa_accuracy("yes", "yes")


# ---------------------------------------------------------------------------
# Scores per question and answer type
# ---------------------------------------------------------------------------


def test_vqa_scores_overall_and_per_type():
  items = [
      ("red", [b"red"] * 10, b"what color is the", b"other"),        # 1
      ("blue", ["red"] * 10, "what color is the", "other"),          # 0
      ("2", ["two"] * 3 + ["2"] + ["3"] * 6, "how many", "number"),  # 4 of "2": 1
      ("yes", ["yes"] * 2 + ["no"] * 8, "is there a", "yes/no"),     # 0.6
      ("no", ["yes"], "is there a", "yes/no"),                       # 0
      ("no", ["no"] * 10, "", ""),                                   # 1, overall only
  ]
  scores = V.vqa_scores(items)
  assert scores == pytest.approx({
      "accuracy": (1 + 0 + 1 + 0.6 + 0 + 1) / 6,
      "accuracy_how many": 1.0,
      "accuracy_is there a": 0.3,
      "accuracy_what color is the": 0.5,
      "accuracy_answer_number": 1.0,
      "accuracy_answer_other": 0.5,
      "accuracy_answer_yes_no": 0.3,
  })
  # Overall first, then question types sorted, then answer types sorted.
  assert list(scores) == ["accuracy", "accuracy_how many", "accuracy_is there a",
                          "accuracy_what color is the", "accuracy_answer_number",
                          "accuracy_answer_other", "accuracy_answer_yes_no"]


def test_vqa_scores_means_of_official_accuracies():
  rng = random.Random(2)
  items, official = [], []
  for _ in range(300):
    answers, candidates = _random_answers(rng, 10)
    prediction = rng.choice(candidates if rng.random() < 0.6 else MESSY)
    qtype, atype = rng.choice(["what is", "how many", "is the"]), rng.choice(["yes/no", "other"])
    items.append((prediction, answers, qtype, atype))
    official.append((official_accuracy(prediction, answers), qtype, atype))
  mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
  expected = {"accuracy": mean([a for a, _, _ in official])}
  for qtype in ("how many", "is the", "what is"):
    expected[f"accuracy_{qtype}"] = mean([a for a, q, _ in official if q == qtype])
  for atype, key in (("other", "other"), ("yes/no", "yes_no")):
    expected[f"accuracy_answer_{key}"] = mean([a for a, _, t in official if t == atype])
  assert V.vqa_scores(items) == pytest.approx(expected, abs=1e-12)


def test_vqa_scores_takes_three_fields():
  """(prediction, [answer], question type), as the VQA objective passes them."""
  items = [("Red.", ["red"], "color"), ("two", ["2"], "count"), ("yes", ["no"], "count")]
  assert V.vqa_scores(items) == pytest.approx(
      {"accuracy": 2 / 3, "accuracy_color": 1.0, "accuracy_count": 0.5})
  assert V.vqa_scores(iter(items)) == V.vqa_scores(items)


def test_vqa_scores_rejects_bad_input():
  # Question types are no longer checked against the shapes types: VQA v2 has its own.
  with pytest.raises(ValueError, match="empty"):
    V.vqa_scores([])
  with pytest.raises(ValueError, match="fields"):
    V.vqa_scores([("yes", ["yes"])])
  with pytest.raises(ValueError, match="fields"):
    V.vqa_scores([("yes", ["yes"], "q", "a", "extra")])
  with pytest.raises(ValueError, match="accuracy_answer_yes_no"):
    V.vqa_scores([("yes", ["yes"], "q", "yes/no"), ("yes", ["yes"], "q", "yes no")])


# ---------------------------------------------------------------------------
# The shapes dataset: one lower-case answer per question
# ---------------------------------------------------------------------------


def test_shapes_answers_score_one_against_themselves():
  """Every shapes answer, as the single reference, scores 1 against itself."""
  for index in range(20):
    example = shapes.make_example(0, "validation", index)
    for answer in example["answers"]:
      assert V.vqa_accuracy(answer, [answer]) == 1.0
      assert V.normalize_answer(answer) == answer


def test_shapes_scores_are_normalised_prediction_against_the_answer():
  """The rule shapes scores have always followed: normalise the prediction, compare."""
  for index in range(20):
    example = shapes.make_example(0, "validation", index)
    answers = [a.decode() if isinstance(a, bytes) else a for a in example["answers"]]
    for answer in answers:
      for prediction in [answer, answer.upper() + ".", "the " + answer, "two", "2", "no"]:
        assert V.vqa_accuracy(prediction, [answer]) == float(
            V.normalize_answer(prediction) == answer)
