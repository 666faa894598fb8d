"""Why VQA's relation answers stay at chance with image positions: trained on relation questions
alone, in the question forms of each variant.

  python -m experiments.relation_diagnostic [--steps=3000] [--variants=asked,left_only,...]

Every variant starts from the default caption run (workdirs/shapes_caption, as the VQA default
does) and trains `configs/shapes_vqa.py` on the relation questions only ("is the A left/right of
the B?", one per image that has one; images without are skipped), then answers the test split's
relation questions:

  asked      the questions as the dataset asks them, half "left of", half "right of"
  left_only  every "right of" question as its converse ("is the B left of the A?", the same
             answer), in training and evaluation: one relation word
  converse   as asked, and each "right of" training question also as its converse (2/3 of the
             training questions say "left"); evaluation as asked
  then_asked as asked, starting from the left_only run's checkpoint (a curriculum)

The question templates are balanced, so the answer is an XOR of the relation word and which of
the two named objects is further left: either alone says nothing about the answer. Prints a
table and writes experiments/results/relation_diagnostic.json.
"""
import collections
import contextlib
import json
import os
from unittest import mock

from absl import app, flags

from experiments import provenance
from experiments.tables import final_eval, markdown_table
from gpt4v_jax.data import shapes

VARIANTS = ("asked", "left_only", "converse", "then_asked")
_FLAGS = {}  # Defined when run as a command (the tests import experiment modules together).


def relation_questions(questions: list[dict], variant: str, training: bool) -> list[dict]:
  """The relation questions of one example (`VQAObjective._questions` records) in a
  variant's forms."""
  out = []
  for q in questions:
    if q["qtype"] != "relation":
      continue
    other = shapes.converse_relation(q["question"])
    if other and variant == "left_only":
      q = dict(q, question=other)
    out.append(q)
    if other and variant == "converse" and training:
      out.append(dict(q, question=other))
  return out


@contextlib.contextmanager
def relation_only(variant: str):
  """VQAObjective trains and evaluates on `relation_questions` of `variant`."""
  from gpt4v_jax.data.pipeline import BadExample
  from gpt4v_jax.objectives import vqa
  questions, train_example = vqa.VQAObjective._questions, vqa.VQAObjective.train_example
  training = []

  def patched_questions(self, example):
    out = relation_questions(questions(self, example), variant, bool(training))
    if not out:
      raise BadExample("no relation question")
    return out

  def patched_train_example(self, example, rng):
    training.append(True)
    try:
      return train_example(self, example, rng)
    finally:
      training.pop()

  with mock.patch.object(vqa.VQAObjective, "_questions", patched_questions), \
      mock.patch.object(vqa.VQAObjective, "train_example", patched_train_example):
    yield


def run_variant(variant: str, steps: int, root: str) -> dict:
  """Trains one variant into root/variant (reused when finished); its test relation metrics."""
  from configs import shapes_vqa
  from gpt4v_jax import main
  config = shapes_vqa.get_config()
  # One relation question per image (two with its converse): short rows.
  config.objective.update(max_text_len=30 if variant == "converse" else 16,
                          questions_per_row=2)
  config.train.update(steps=steps, checkpoint_every=steps)
  config.evals.update(every=steps, final_splits=("test",))
  config.init.workdir = (os.path.join(root, "left_only") if variant == "then_asked"
                        else "workdirs/shapes_caption")
  workdir = os.path.join(root, variant)
  os.makedirs(root, exist_ok=True)
  with relation_only("asked" if variant == "then_asked" else variant):
    main.train(config, workdir)
  predictions = final_eval(workdir, "test")["predictions"]
  by_word = collections.defaultdict(list)
  for p in predictions:
    word = "left" if " left of " in p["question"] else "right"
    by_word[word].append(p["prediction"] == p["answer"])
  accuracy = lambda xs: sum(xs) / len(xs) if xs else None
  yes = [p["prediction"] == "yes" for p in predictions]
  return dict(variant=variant, accuracy=accuracy(sum(by_word.values(), [])),
              left_questions=accuracy(by_word["left"]),
              right_questions=accuracy(by_word["right"]), says_yes=accuracy(yes),
              questions=len(predictions))


def _define_flags() -> None:
  _FLAGS.update(
      steps=flags.DEFINE_integer("steps", 3000, "Training steps per variant."),
      variants=flags.DEFINE_list("variants", list(VARIANTS), "Which variants, in order."),
      root=flags.DEFINE_string("workdir", "workdirs/relation_diagnostic", "Run dirs."),
      out=flags.DEFINE_string("out", os.path.join(os.path.dirname(__file__), "results",
                                                  "relation_diagnostic.json"), "Results."))


def main(argv):
  del argv
  rows = [run_variant(v, _FLAGS["steps"].value, _FLAGS["root"].value)
          for v in _FLAGS["variants"].value]
  print(markdown_table(rows))
  with open(_FLAGS["out"].value, "w") as f:
    json.dump(dict(commit=provenance.commit(), steps=_FLAGS["steps"].value, rows=rows), f,
              indent=1)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
