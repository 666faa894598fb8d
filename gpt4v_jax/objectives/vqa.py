"""Visual question answering: the VQA task token and a question after the image, target = its
answer.

  [image tokens][BOS][vqa][question tokens...] [answer tokens...][EOS]
  prefix: full attention                       causal; the loss is on answer and EOS only

Training samples one of an example's (6-8) questions per example and epoch, or with
`questions_per_row` > 1 a dialogue of several (later questions and answers are causal, every
answer carries loss: `prefix_lm.make_dialogue_row`). Evaluation asks every question of each
image alone (one eval item per question), decodes greedily, and scores VQA accuracy
(`vqa_metrics`) overall and per question type; a `shapes` question has one certain answer, so
that is normalised exact match.
"""
import numpy as np

from gpt4v_jax.data import shapes
from gpt4v_jax.data.pipeline import BadExample, decode_image, decode_text, image_to_float
from gpt4v_jax.data.tokenizer import TASK_IDS, Tokenizer
from gpt4v_jax.evals import vqa_metrics
from gpt4v_jax.objectives import prefix_lm


class VQAObjective(prefix_lm.PrefixLMObjective):
  """How a shapes example becomes a question-answering training row, one decoding prompt per
  question, and a score."""
  name = "vqa"

  def __init__(self, tokenizer: Tokenizer, *, max_text_len: int, max_question_len: int,
               max_new_tokens: int, questions_per_row: int):
    self.tokenizer = tokenizer
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

  def _qa_triples(self, example: dict) -> list[tuple[str, str, str]]:
    """(question, answer, question type) of every question of a data-source example.

    Raises BadExample if there are none, the three lists differ in length, a text is empty or
    not UTF-8, or a type is not one of shapes.QUESTION_TYPES.
    """
    questions, answers = example["questions"], example["answers"]
    qtypes = example["question_types"]
    if len(questions) == 0 or not len(questions) == len(answers) == len(qtypes):
      raise BadExample(f"{len(questions)} questions, {len(answers)} answers and "
                       f"{len(qtypes)} question types")
    triples = []
    for q, a, t in zip(questions, answers, qtypes):
      qtype = decode_text(t, "question type")
      if qtype not in shapes.QUESTION_TYPES:
        raise BadExample(f"question type {qtype!r} is not one of {shapes.QUESTION_TYPES}")
      triples.append((decode_text(q, "question"), decode_text(a, "answer"), qtype))
    return triples

  def _prompt_ids(self, question: str) -> list[int]:
    """`[vqa] question` ids (BOS is added by prefix_lm); BadExample if the question is longer
    than max_question_len tokens."""
    question_ids = self.tokenizer.encode(question)
    if len(question_ids) > self.max_question_len:
      raise BadExample(f"question of {len(question_ids)} tokens is longer than "
                       f"max_question_len={self.max_question_len}")
    return [TASK_IDS["vqa"]] + question_ids

  def train_example(self, example: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Data-source example -> {image [H, W, 3] float32, text/ar_mask/... [max_text_len],
    truncated [] int32 (1 if the answer was cut to fit)}, for one rng-chosen question, or a
    dialogue of `questions_per_row` of them in rng order (fewer if the image has fewer or
    they do not fit).

    Raises BadExample for an image that does not decode or has the wrong size, and for
    questions that `_qa_triples` or `_prompt_ids` reject.
    """
    image = decode_image(example["image"], shapes.IMAGE_SIZE)
    triples = self._qa_triples(example)
    if self.questions_per_row == 1:
      chosen = [triples[rng.integers(len(triples))]]
    else:
      chosen = [triples[i] for i in rng.permutation(len(triples))[:self.questions_per_row]]
    t = self.tokenizer
    turns = [(self._prompt_ids(q), t.encode(a)) for q, a, _ in chosen]
    row, truncated = prefix_lm.make_dialogue_row(turns, bos_id=t.bos_id, eos_id=t.eos_id,
                                                 pad_id=t.pad_id, max_len=self.max_text_len)
    return dict(image=image_to_float(image), truncated=np.int32(truncated), **row)

  def eval_items(self, example: dict) -> list[tuple[dict[str, np.ndarray], dict]]:
    """Data-source example -> one item per question: ({image, prompt [prompt_len],
    prompt_mask [prompt_len]}, {id, question, qtype, answer})."""
    t = self.tokenizer
    image = image_to_float(decode_image(example["image"], shapes.IMAGE_SIZE))
    return [(dict(image=image, **prefix_lm.make_prompt(self._prompt_ids(q), bos_id=t.bos_id,
                                                       pad_id=t.pad_id,
                                                       max_len=self.prompt_len)),
             dict(id=str(example["id"]), question=q, qtype=qtype, answer=a))
            for q, a, qtype in self._qa_triples(example)]

  def score(self, items: list[dict], predictions: list[str]) -> tuple[dict, list[dict]]:
    """VQA accuracy overall and per question type (`accuracy`, `accuracy_color`, ...) of the
    decoded answers, and one JSON-ready record per question."""
    metrics = vqa_metrics.vqa_scores(
        (p, [item["answer"]], item["qtype"]) for item, p in zip(items, predictions))
    metrics["num_questions"] = len(items)
    records = [dict(id=item["id"], question=item["question"], qtype=item["qtype"],
                    prediction=p, answer=item["answer"])
               for item, p in zip(items, predictions)]
    return metrics, records
