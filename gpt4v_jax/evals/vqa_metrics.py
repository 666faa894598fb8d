"""VQA accuracy, question by question as the official VQA evaluation computes it.

The official script is GT-Vision-Lab/VQA, `PythonEvaluationTools/vqaEvaluation/vqaEval.py`
(`VQAEval.evaluate`). Written from its rules, so that our numbers mean what published VQA
accuracies mean, and tested against a port of it (tests/test_vqa_metrics.py). Per question:

1. Every human answer and the prediction lose newlines and tabs (each becomes a space) and
   their leading and trailing whitespace.
2. Only when the human answers disagree (more than one distinct string after step 1) are the
   answers AND the prediction normalised (`normalize_answer`): the punctuation step, then the
   word step. When they agree the raw strings are compared: "two" scores 1 against ten "two"
   answers, "Two" and "2" score 0.
3. With n answers, each is left out once and the prediction scores
   min(#remaining answers equal to it / 3, 1): three agreeing humans make an answer fully
   right. The accuracy is the mean of the n scores; for m matching answers out of 10 that is
   0, 0.3, 0.6, 0.9 for m = 0..3 and 1 from m = 4.

One answer is the exception: leaving it out would leave nothing to match, so the official rule
scores every prediction 0. A single answer is taken as certain instead (the embedded `shapes`
dataset has exactly one per question): the prediction and the answer are both normalised and
score 1 if equal, else 0.

The punctuation step (`_strip_punctuation`), with the official quirks kept:
- Each character of `_PUNCTUATION` is deleted if it stands next to a space anywhere in the text
  ("yes , no" -> "yes  no"), or if the text holds a digit-comma-digit ("1,000" -> "1000": then
  every punctuation character is deleted); otherwise it becomes a space ("black/white" ->
  "black white"). The test looks at the original text for every character. The apostrophe
  and the colon are not punctuation.
- A period not followed by a digit is deleted ("yes." -> "yes", "a.m." -> "am"; "3.5" and ".5"
  keep theirs). The official pattern begins with `(?!<=\\d)`, a lookahead that was meant as a
  lookbehind on a digit; at a period it can never match, so it has no effect ("3." -> "3").
- The official code passes `re.UNICODE` (== 32) where `re.sub` takes its count, so at most 32
  such periods are deleted from one text; the rest stay.

The word step (`_fix_words`): lower-case, split on whitespace, number words "none", "zero" ..
"ten" become digits, the articles "a", "an", "the" are dropped, and words found in the official
contraction table are replaced, once, by its value. Most values there use the typographic
apostrophe U+2019: "dont" becomes "don’t", which does not equal a human "don't" (ASCII). We
keep the table as it is (`_CONTRACTIONS`).

We follow the script as it runs under Python 3, as evaluation code runs it today (it was written
for Python 2, where `\\d` matched ASCII digits only and the table's non-ASCII entries were byte
strings). Accuracies are fractions in [0, 1], not the official rounded percentages.
"""
from __future__ import annotations

import collections
import re
from typing import Iterable, Sequence

# ---------------------------------------------------------------------------
# Normalisation
# ---------------------------------------------------------------------------

# Deleted or replaced by a space wherever they occur (see the module docstring).
_PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<",
                "@", "`", ",", "?", "!")
# Anywhere in a text, switches every punctuation character to deletion.
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
# A period not followed by a digit; the official `(?!<=\d)` prefix is left out (no effect).
_PERIOD = re.compile(r"\.(?!\d)")
# The official code passes re.UNICODE as re.sub's count.
_MAX_PERIODS = int(re.UNICODE)

_NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
                 "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = frozenset(("a", "an", "the"))

# The official contraction table, values and keys as given there: most use the typographic
# apostrophe ’ (U+2019), some the ASCII one. Left out: its four capitalised keys ("Im", "Ive",
# "Id’ve", "I’dve"), which never match a lower-cased word.
_CONTRACTIONS = {
    # Values with the ASCII apostrophe.
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
    "couldnt": "couldn't", "weve": "we've", "wheres": "where's", "whove": "who've",
    # Values with the typographic apostrophe, keys without an apostrophe.
    "didnt": "didn’t", "doesnt": "doesn’t", "dont": "don’t", "hadnt": "hadn’t",
    "hasnt": "hasn’t", "havent": "haven’t", "hed": "he’d", "hes": "he’s", "howd": "how’d",
    "howll": "how’ll", "hows": "how’s", "isnt": "isn’t", "itd": "it’d", "itll": "it’ll",
    "maam": "ma’am", "mightnt": "mightn’t", "mightve": "might’ve", "mustnt": "mustn’t",
    "mustve": "must’ve", "neednt": "needn’t", "notve": "not’ve", "oclock": "o’clock",
    "oughtnt": "oughtn’t", "shant": "shan’t", "shouldve": "should’ve", "shouldnt": "shouldn’t",
    "somebodyll": "somebody’ll", "somebodys": "somebody’s", "someoned": "someone’d",
    "someonell": "someone’ll", "someones": "someone’s", "somethingd": "something’d",
    "somethingll": "something’ll", "thats": "that’s", "thered": "there’d",
    "therere": "there’re", "theres": "there’s", "theyd": "they’d", "theyll": "they’ll",
    "theyre": "they’re", "theyve": "they’ve", "twas": "’twas", "wasnt": "wasn’t",
    "werent": "weren’t", "whatll": "what’ll", "whatre": "what’re", "whats": "what’s",
    "whatve": "what’ve", "whens": "when’s", "whered": "where’d", "whereve": "where’ve",
    "whod": "who’d", "wholl": "who’ll", "whos": "who’s", "whyll": "why’ll", "whyre": "why’re",
    "whys": "why’s", "wont": "won’t", "wouldve": "would’ve", "wouldnt": "wouldn’t",
    "yall": "y’all", "youd": "you’d", "youll": "you’ll", "youre": "you’re", "youve": "you’ve",
    # Keys with an ASCII apostrophe.
    "couldn'tve": "couldn’t’ve", "hadn'tve": "hadn’t’ve",
    # Keys with a typographic apostrophe: they fire only on text that has one.
    "couldnt’ve": "couldn’t’ve", "hadnt’ve": "hadn’t’ve", "hed’ve": "he’d’ve",
    "he’dve": "he’d’ve", "itd’ve": "it’d’ve", "it’dve": "it’d’ve", "let’s": "let’s",
    "mightnt’ve": "mightn’t’ve", "mightn’tve": "mightn’t’ve", "ow’s’at": "’ow’s’at",
    "’ows’at": "’ow’s’at", "’ow’sat": "’ow’s’at", "shed’ve": "she’d’ve", "she’dve": "she’d’ve",
    "she’s": "she’s", "shouldnt’ve": "shouldn’t’ve", "shouldn’tve": "shouldn’t’ve",
    "somebody’d": "somebodyd", "somebodyd’ve": "somebody’d’ve",
    "somebody’dve": "somebody’d’ve", "someoned’ve": "someone’d’ve",
    "someone’dve": "someone’d’ve", "somethingd’ve": "something’d’ve",
    "something’dve": "something’d’ve", "thered’ve": "there’d’ve", "there’dve": "there’d’ve",
    "theyd’ve": "they’d’ve", "they’dve": "they’d’ve", "wed’ve": "we’d’ve", "we’dve": "we’d’ve",
    "whod’ve": "who’d’ve", "who’dve": "who’d’ve", "wouldnt’ve": "wouldn’t’ve",
    "wouldn’tve": "wouldn’t’ve", "yall’ll": "y’all’ll", "y’allll": "y’all’ll",
    "yall’d’ve": "y’all’d’ve", "y’alld’ve": "y’all’d’ve", "y’all’dve": "y’all’d’ve",
    "youd’ve": "you’d’ve", "you’dve": "you’d’ve",
}

# Human answers needed for full credit.
_AGREEMENT = 3


def _clean(text: str) -> str:
  """Newlines and tabs to spaces, ends stripped: done to every answer before anything else."""
  return text.replace("\n", " ").replace("\t", " ").strip()


def _strip_punctuation(text: str) -> str:
  """The official punctuation step (module docstring); case and words are left alone."""
  delete_all = _DIGIT_COMMA_DIGIT.search(text) is not None
  out = text
  for p in _PUNCTUATION:
    beside_space = p + " " in text or " " + p in text
    out = out.replace(p, "" if beside_space or delete_all else " ")
  return _PERIOD.sub("", out, count=_MAX_PERIODS)


def _fix_words(text: str) -> str:
  """Lower-cased; number words to digits; no articles; contractions per the official table."""
  words = [_NUMBER_WORDS.get(w, w) for w in text.lower().split()]
  return " ".join(_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES)


def normalize_answer(text: str) -> str:
  """An answer as the official evaluation compares it when the human answers disagree.

  "The Two." -> "2", "1,000" -> "1000", "yes." -> "yes", "dont" -> "don’t" (U+2019).
  """
  return _fix_words(_strip_punctuation(_clean(text)))


# ---------------------------------------------------------------------------
# Accuracy
# ---------------------------------------------------------------------------


def _as_text(value) -> str:
  """str, or utf-8 bytes as read from a TFDS data source, as str."""
  if isinstance(value, (bytes, bytearray)):
    return bytes(value).decode("utf-8")
  return str(value)


def vqa_accuracy(prediction: str, references: Sequence[str]) -> float:
  """VQA accuracy of one predicted answer (see the module docstring).

  Args:
    prediction: the raw predicted answer (str or utf-8 bytes).
    references: the raw human answers (str or utf-8 bytes), n >= 1 of them; VQA v2 has 10.

  Returns:
    With n == 1, 1.0 if the normalised prediction equals the normalised answer, else 0.0.
    With n >= 2, the official score: the mean over the n answers, each left out once, of
    min(#other answers equal to the prediction / 3, 1), comparing normalised strings only
    when the answers disagree.
  """
  if isinstance(references, (str, bytes, bytearray)):
    raise TypeError(f"vqa_accuracy takes a list of reference answers, got the single text "
                    f"{references!r}; wrap it in a list.")
  refs = [_clean(_as_text(r)) for r in references]
  if not refs:
    raise ValueError("vqa_accuracy needs at least one reference answer.")
  answer = _clean(_as_text(prediction))
  if len(refs) == 1:
    return float(normalize_answer(answer) == normalize_answer(refs[0]))
  if len(set(refs)) > 1:
    refs = [normalize_answer(r) for r in refs]
    answer = normalize_answer(answer)
  matches = sum(r == answer for r in refs)
  # Leaving out a matching answer leaves matches - 1 to agree with the prediction. Summed in
  # answer order, as the official loop does, so that the result is bitwise the same.
  scores = [min(1, (matches - (r == answer)) / _AGREEMENT) for r in refs]
  return sum(scores) / len(scores)


def _answer_type_key(answer_type: str) -> str:
  """"yes/no" -> "accuracy_answer_yes_no": a metric name without "/" or spaces."""
  return "accuracy_answer_" + answer_type.replace("/", "_").replace(" ", "_")


def _mean(values: list[float]) -> float:
  return sum(values) / len(values)


def vqa_scores(items: Iterable[Sequence]) -> dict[str, float]:
  """Mean VQA accuracy overall, per question type and per answer type.

  Args:
    items: (prediction, references, question_type, answer_type) per question, as
      `vqa_accuracy` takes the first two; the types are str or utf-8 bytes, "" when unknown.
      answer_type may be left off: (prediction, references, question_type).

  Returns:
    {"accuracy": mean over all questions,
     "accuracy_<question_type>": mean over the questions of that type, for each type present,
       sorted by type (the type as given, e.g. "accuracy_what color is the"),
     "accuracy_answer_<answer_type>": likewise per answer type, "/" and spaces in the type
       replaced by "_" (e.g. "accuracy_answer_yes_no")}.
    Questions of unknown ("") type count in "accuracy" only.
  """
  overall = []
  per_question_type = collections.defaultdict(list)
  per_answer_type = collections.defaultdict(list)
  for i, item in enumerate(items):
    if len(item) not in (3, 4):
      raise ValueError(f"vqa_scores item {i} has {len(item)} fields; expected (prediction, "
                       f"references, question_type[, answer_type]).")
    prediction, references, question_type = item[:3]
    answer_type = _as_text(item[3]) if len(item) == 4 else ""
    question_type = _as_text(question_type)
    accuracy = vqa_accuracy(prediction, references)
    overall.append(accuracy)
    if question_type:
      per_question_type[question_type].append(accuracy)
    if answer_type:
      per_answer_type[answer_type].append(accuracy)
  if not overall:
    raise ValueError("Cannot score an empty set of questions.")
  out = {"accuracy": _mean(overall)}
  for question_type in sorted(per_question_type):
    out[f"accuracy_{question_type}"] = _mean(per_question_type[question_type])
  for answer_type in sorted(per_answer_type):
    key = _answer_type_key(answer_type)
    if key in out:
      raise ValueError(f"Answer type {answer_type!r} would be reported as {key!r}, a name "
                       f"another question or answer type already has; rename one of them.")
    out[key] = _mean(per_answer_type[answer_type])
  return out
