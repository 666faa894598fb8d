"""VQA accuracy, as the official VQA v2 evaluation (``vqaEval.py``) computes it.

Written from the official evaluation's rules, so that our numbers mean what
published VQA accuracies mean:

1. The prediction is normalised (`normalize_answer`): newlines and tabs become
   spaces, the ends are stripped, punctuation is removed or turned into spaces
   (`_strip_punctuation`), then the text is lower-cased and split on
   whitespace, number words "none"/"zero".."ten" become digits, the articles
   "a", "an", "the" are dropped and contractions missing their apostrophe are
   repaired ("dont" -> "don't"; `_CONTRACTIONS` is a subset of the official
   table, see there), and the words are joined by single spaces.
2. References are taken as given, except that when they disagree (more than
   one distinct string) each goes through the punctuation step only. This is
   what the official code does: VQA's human answers were already normalised
   when the dataset was built. Pass references in that form (lower case,
   digits, no articles), as `shapes` answers are.
3. With one reference the prediction scores normalised exact match, 1 or 0:
   a single answer is taken as certain (the `shapes` questions have exactly
   one). With several, it scores min(#references equal to it / 3, 1), the
   official rule: three agreeing humans make an answer fully right. With 10
   or more references, as in VQA v2, the official code averages this over
   the leave-one-out subsets (each reference left out once, the rest
   compared); with 2-9 references we use the formula on all of them, without
   averaging.

Accuracies are fractions in [0, 1], not the official rounded percentages.
"""
from __future__ import annotations

import collections
import re
from typing import Iterable, Sequence

from gpt4v_jax.data import shapes

# ---------------------------------------------------------------------------
# Normalisation
# ---------------------------------------------------------------------------

# Removed (or replaced by a space) wherever they occur. "." is handled apart,
# and "'" and ":" are kept: the apostrophe belongs to contractions.
_PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\",
                "_", "-", ">", "<", "@", "`", ",", "?", "!")
# A comma between digits ("1,000"): its presence anywhere switches every
# punctuation character to removal, so the number is not split in two.
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
# A period not followed by a digit ("yes." or "a.m."), but not a decimal point
# ("3.5", ".5"). The official pattern also carries a lookahead meant as a
# lookbehind on a digit, `(?!<=\d)`, which never matches at a period and so
# has no effect; we leave it out.
_PERIOD = re.compile(r"\.(?!\d)")
# The official code passes re.UNICODE (== 32) where `count` goes, so at most
# 32 such periods are removed; we keep that for exact agreement.
_MAX_PERIODS = 32

_NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2",
                 "three": "3", "four": "4", "five": "5", "six": "6",
                 "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = frozenset(("a", "an", "the"))
# The entries of the official table that can fire. Left out: its capitalised
# keys ("Im", "Ive", "Id've"), which never match lower-cased words, and its
# rare forms ("hadn'tve", "y'all'd've", "'ow's'at", ...). The official values
# mostly use a typographic apostrophe (U+2019), so that "dont" never matches
# a reference "don't"; we use the ASCII apostrophe, which the references use.
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldnt": "couldn't",
    "couldve": "could've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hes": "he's", "howd": "how'd", "howll": "how'll",
    "hows": "how's", "isnt": "isn't", "itd": "it'd", "itll": "it'll",
    "maam": "ma'am", "mightnt": "mightn't", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't",
    "oclock": "o'clock", "shant": "shan't", "shouldnt": "shouldn't",
    "shouldve": "should've", "thats": "that's", "theres": "there's",
    "theyd": "they'd", "theyll": "they'll", "theyre": "they're",
    "theyve": "they've", "wasnt": "wasn't", "werent": "weren't",
    "weve": "we've", "whats": "what's", "whered": "where'd",
    "wheres": "where's", "whod": "who'd", "wholl": "who'll", "whos": "who's",
    "wont": "won't", "wouldnt": "wouldn't", "wouldve": "would've",
    "yall": "y'all", "youd": "you'd", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}

# Ten answers per question: the official leave-one-out averaging applies.
_VQA_NUM_REFERENCES = 10
# Human answers needed for full credit.
_AGREEMENT = 3


def _strip_punctuation(text: str) -> str:
  """The official punctuation step; case and whitespace are left alone.

  A punctuation character next to a space ("yes , no") is deleted, as is
  every one when the text holds a digit-comma-digit ("1,000" -> "1000");
  otherwise it becomes a space ("black/white" -> "black white"). The test
  looks at the original text for every character, as the official code does.
  """
  delete_all = _DIGIT_COMMA_DIGIT.search(text) is not None
  out = text
  for p in _PUNCTUATION:
    spaced = p + " " in text or " " + p in text
    out = out.replace(p, "" if spaced or delete_all else " ")
  return _PERIOD.sub("", out, count=_MAX_PERIODS)


def _fix_words(text: str) -> str:
  """Lower-cases; number words to digits; no articles; contractions fixed."""
  words = [_NUMBER_WORDS.get(w, w) for w in text.lower().split()]
  return " ".join(_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES)


def normalize_answer(text: str) -> str:
  """A predicted answer as the official evaluation compares it.

  "The Two." -> "2", "1,000" -> "1000", "yes." -> "yes", "dont" -> "don't".
  """
  text = text.replace("\n", " ").replace("\t", " ").strip()
  return _fix_words(_strip_punctuation(text))


# ---------------------------------------------------------------------------
# Accuracy
# ---------------------------------------------------------------------------


def _as_text(value) -> str:
  """str, or utf-8 bytes as read from a TFDS data source, as str."""
  if isinstance(value, (bytes, bytearray)):
    return bytes(value).decode("utf-8")
  return str(value)


def _agreement_score(matches: int) -> float:
  return min(matches / _AGREEMENT, 1.0)


def vqa_accuracy(prediction: str, references: Sequence[str]) -> float:
  """VQA accuracy of one predicted answer (see the module docstring).

  Args:
    prediction: raw predicted answer; normalised here.
    references: the human answers (str or utf-8 bytes), already normalised;
      only punctuation is stripped, and only when they disagree.

  Returns:
    With one reference, 1.0 if it equals the normalised prediction, else 0.0.
    With n >= 10 references, the mean over the n leave-one-out subsets of
    min(#matches in the subset / 3, 1): for m matching references out of 10
    that is 0, 0.3, 0.6, 0.9 for m = 0..3 and 1 from m = 4. With 2-9
    references, min(m / 3, 1).
  """
  refs = [_as_text(r) for r in references]
  if not refs:
    raise ValueError("vqa_accuracy needs at least one reference answer.")
  refs = [r.replace("\n", " ").replace("\t", " ").strip() for r in refs]
  if len(set(refs)) > 1:
    refs = [_strip_punctuation(r) for r in refs]
  answer = normalize_answer(_as_text(prediction))
  matches = sum(r == answer for r in refs)
  if len(refs) == 1:
    return float(matches)
  if len(refs) < _VQA_NUM_REFERENCES:
    return _agreement_score(matches)
  # Leaving out a matching reference leaves matches - 1, any other matches.
  left_out_match = matches * _agreement_score(matches - 1)
  left_out_other = (len(refs) - matches) * _agreement_score(matches)
  return (left_out_match + left_out_other) / len(refs)


def vqa_scores(items: Iterable[tuple[str, Sequence[str], str]]
               ) -> dict[str, float]:
  """Mean VQA accuracy overall and per question type.

  Args:
    items: (prediction, references, question type) per question; the type is
      one of `shapes.QUESTION_TYPES` (str or utf-8 bytes).

  Returns:
    {"accuracy": mean over all questions,
     "accuracy_<type>": mean over the questions of that type, for each type
     present, in QUESTION_TYPES order}.
  """
  per_type = collections.defaultdict(list)
  for prediction, references, qtype in items:
    qtype = _as_text(qtype)
    if qtype not in shapes.QUESTION_TYPES:
      raise ValueError(f"Unknown question type {qtype!r}; expected one of "
                       f"{shapes.QUESTION_TYPES}.")
    per_type[qtype].append(vqa_accuracy(prediction, references))
  if not per_type:
    raise ValueError("Cannot score an empty set of questions.")
  everything = [a for scores in per_type.values() for a in scores]
  out = {"accuracy": sum(everything) / len(everything)}
  for qtype in shapes.QUESTION_TYPES:
    if qtype in per_type:
      out[f"accuracy_{qtype}"] = sum(per_type[qtype]) / len(per_type[qtype])
  return out
