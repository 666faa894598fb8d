"""experiments/relation_diagnostic.py's question forms (the runs themselves are experiments)."""
from experiments import relation_diagnostic as rd


def _q(question, qtype="relation", answer="yes"):
  return dict(question=question, qtype=qtype, answer=answer, answers=[answer], atype="")


def test_each_variant_keeps_the_relation_questions_in_its_forms():
  qs = [_q("what shape is the red object?", "shape", "circle"),
        _q("is the red circle right of the blue square?"),
        _q("is the cyan object left of the small circle?", answer="no")]
  asked = rd.relation_questions(qs, "asked", training=True)
  assert [q["question"] for q in asked] == [qs[1]["question"], qs[2]["question"]]
  left = rd.relation_questions(qs, "left_only", training=False)
  assert [(q["question"], q["answer"]) for q in left] == [
      ("is the blue square left of the red circle?", "yes"),
      ("is the cyan object left of the small circle?", "no")]
  train = rd.relation_questions(qs, "converse", training=True)
  assert [q["question"] for q in train] == [
      qs[1]["question"], "is the blue square left of the red circle?", qs[2]["question"]]
  assert rd.relation_questions(qs, "converse", training=False) == asked
