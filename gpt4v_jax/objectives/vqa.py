"""Visual question answering: the VQA task token and a question after the image, target = its
answer.

  [image tokens][BOS][vqa][question tokens...] [answer tokens...][EOS]
  prefix: full attention                       causal; the loss is on answer and EOS only

Training samples one of an example's questions per example and epoch, or with
`questions_per_row` > 1 a dialogue of several (later questions and answers are causal, every
answer carries loss: `prefix_lm.make_dialogue_row`); a question's training answer is the most
frequent of its human answers (VQAv2 has 10; the earliest of tied ones). Evaluation asks every
question of each image alone (one eval item per question), decodes greedily, and scores VQA
accuracy against all its answers (`vqa_metrics`, the official evaluation's rules) overall,
per question type and per answer type; a `shapes` question has one certain answer, so that is
normalised exact match.

`relations_as="left_of"` asks every `shapes` relation question in its "left of" form
(`shapes.converse_relation`), in training and evaluation: the first stage of the default
VQA recipe's curriculum (configs/shapes_vqa.py).
"""
import collections

import numpy as np

from gpt4v_jax.data import datasets, images, shapes
from gpt4v_jax.data.pipeline import BadExample, decode_text
from gpt4v_jax.data.tokenizer import Tokenizer
from gpt4v_jax.evals import vqa_metrics
from gpt4v_jax.objectives import prefix_lm


def _label(value, what: str) -> str:
  """A question or answer type as str; "" (unknown) is allowed, non-UTF-8 is a BadExample."""
  return decode_text(value, what) if len(value) else ""


# "asked": questions as the data asks them; "left_of": shapes' "right of" relation questions as
# their "left of" converse.
RELATIONS_AS = ("asked", "left_of")


class VQAObjective(prefix_lm.PrefixLMObjective):
  """How an example becomes a question-answering training row, one decoding prompt per
  question, and a score."""
  name = "vqa"

  def __init__(self, tokenizer: Tokenizer, *, max_text_len: int, max_question_len: int,
               max_new_tokens: int, questions_per_row: int, preprocess: images.Preprocess,
               relations_as: str = "asked"):
    self.tokenizer = tokenizer
    if relations_as not in RELATIONS_AS:
      raise ValueError(f"config.objective.relations_as={relations_as!r}: expected one of "
                       f"{RELATIONS_AS}.")
    self.relations_as = relations_as
    self.preprocess = preprocess
    self.max_text_len = max_text_len
    self.max_new_tokens = max_new_tokens
    # > 1: a training row is a dialogue of up to this many of the image's questions
    # (`prefix_lm.make_dialogue_row`), so one pass of the image encoder serves several answers.
    if questions_per_row < 1:
      raise ValueError(f"config.objective.questions_per_row={questions_per_row}: must be >= 1.")
    self.questions_per_row = questions_per_row
    # `[BOS][vqa] question`: the decoding prompt, padded to the longest question allowed (not
    # to the row, which may hold a whole dialogue), so evaluation decodes no idle slots.
    self.max_question_len = max_question_len
    self.prompt_len = 2 + max_question_len
    if max_text_len < self.prompt_len + 2:  # + at least one answer token and EOS.
      raise ValueError(f"config.objective.max_text_len={max_text_len} cannot hold a question "
                       f"of max_question_len={max_question_len} tokens after BOS and the "
                       f"task token, and an answer and EOS: it must be >= "
                       f"{self.prompt_len + 2}.")

  def _questions(self, example: dict) -> list[dict]:
    """{question, answers, answer (the most frequent of them), qtype, atype} of every
    question of a standard example ("" for an unknown type).

    Raises BadExample if there are none, the lists differ in length, a question has no
    answer, a question or answer is empty, or a text is not UTF-8 (a type may be "").
    """
    questions, answers = example["questions"], example["answers"]
    qtypes, atypes = example["question_types"], example["answer_types"]
    if (len(questions) == 0 or len(questions) != len(answers)
        or len(qtypes) not in (0, len(questions)) or len(atypes) not in (0, len(questions))):
      raise BadExample(f"{len(questions)} questions, {len(answers)} answer lists, "
                       f"{len(qtypes)} question types and {len(atypes)} answer types")
    out = []
    for i, (q, refs) in enumerate(zip(questions, answers)):
      if len(refs) == 0:
        raise BadExample(f"question {i} has no answer")
      refs = [decode_text(a, "answer") for a in refs]
      question = decode_text(q, "question")
      if self.relations_as == "left_of":
        question = shapes.converse_relation(question) or question
      out.append(dict(question=question, answers=refs,
                      answer=collections.Counter(refs).most_common(1)[0][0],
                      qtype=_label(qtypes[i], "question type") if len(qtypes) else "",
                      atype=_label(atypes[i], "answer type") if len(atypes) else ""))
    return out

  def prompt_ids(self, question: str) -> list[int]:
    """`[vqa] question` ids (BOS is added by prefix_lm); BadExample if the question is longer
    than max_question_len tokens."""
    question_ids = self.tokenizer.encode(question)
    if len(question_ids) > self.max_question_len:
      raise BadExample(f"question of {len(question_ids)} tokens is longer than "
                       f"max_question_len={self.max_question_len}")
    return [self.tokenizer.task_ids["vqa"]] + question_ids

  def train_example(self, example: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Standard example -> {image [S, S, 3] float32, text/ar_mask/... [max_text_len],
    truncated [] int32 (1 if the answer was cut to fit)}, for one rng-chosen question, or a
    dialogue of `questions_per_row` of them in rng order (fewer if the image has fewer or
    they do not fit).

    Raises BadExample for a missing image or one that does not decode, and for questions
    that `_questions` or `prompt_ids` reject.
    """
    image = datasets.example_image(example, self.preprocess, rng)
    qas = self._questions(example)
    if self.questions_per_row == 1:
      chosen = [qas[rng.integers(len(qas))]]
    else:
      chosen = [qas[i] for i in rng.permutation(len(qas))[:self.questions_per_row]]
    t = self.tokenizer
    turns = [(self.prompt_ids(qa["question"]), t.encode(qa["answer"])) for qa in chosen]
    row, truncated = prefix_lm.make_dialogue_row(turns, bos_id=t.bos_id, eos_id=t.eos_id,
                                                 pad_id=t.pad_id, max_len=self.max_text_len)
    return dict(image=image, truncated=np.int32(truncated), **row)

  def eval_items(self, example: dict) -> list[tuple[dict[str, np.ndarray], dict]]:
    """Standard example -> one item per question: ({image, prompt [prompt_len], prompt_mask
    [prompt_len]}, {id, question, answers, answer, qtype, atype})."""
    t = self.tokenizer
    image = datasets.example_image(example, self.preprocess)
    return [(dict(image=image, **prefix_lm.make_prompt(self.prompt_ids(qa["question"]),
                                                       bos_id=t.bos_id, pad_id=t.pad_id,
                                                       max_len=self.prompt_len)),
             dict(id=str(example["id"]), **qa))
            for qa in self._questions(example)]

  def score(self, items: list[dict], predictions: list[str]) -> tuple[dict, list[dict]]:
    """VQA accuracy overall, per question type (`accuracy_<type>`) and per answer type
    (`accuracy_answer_<type>`) of the decoded answers, and one JSON-ready record per
    question (with every human answer where there are several)."""
    metrics = vqa_metrics.vqa_scores(
        (p, item["answers"], item["qtype"], item["atype"]) for item, p in zip(items, predictions))
    metrics["num_questions"] = len(items)
    records = [dict(id=item["id"], question=item["question"], qtype=item["qtype"],
                    prediction=p, answer=item["answer"],
                    **(dict(answers=item["answers"]) if len(item["answers"]) > 1 else {}))
               for item, p in zip(items, predictions)]
    return metrics, records
