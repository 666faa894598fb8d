"""Whether the front door predicts what the train loop's final evaluation predicted.

  python -m experiments.predict_parity --workdir=workdirs/shapes_caption [--split=test]
  python -m experiments.predict_parity --workdir=workdirs/shapes_vqa

Exports the run (`export.export`) to a temporary model directory, loads it with
`Model.from_pretrained`, and feeds the split's images as the image files a user would pass
(the stored PNG bytes) through `pipeline("image-to-text")` (a caption run) or
`pipeline("visual-question-answering")` (each question of each image, in eval order); then
compares every prediction with the run's `eval_{split}_step{N}.json`. Prints a table and
writes experiments/results/predict_parity_{run}.json.
"""
import json
import os
import tempfile
import time

from absl import app, flags

from experiments import provenance
from experiments.tables import final_eval, markdown_table

_WORKDIR = flags.DEFINE_string("workdir", None, "A finished caption or VQA run.", required=True)
_SPLIT = flags.DEFINE_string("split", "test", "The split whose final eval is compared.")


def main(argv):
  del argv
  from gpt4v_jax import export, pipeline
  from gpt4v_jax.data import datasets
  evaluated = final_eval(_WORKDIR.value, _SPLIT.value)
  records = evaluated["predictions"]
  with tempfile.TemporaryDirectory() as tmp:
    model_path = export.export(_WORKDIR.value, os.path.join(tmp, "model"))
    start = time.perf_counter()
    kind = "vqa" if "question" in records[0] else "caption"
    task = "visual-question-answering" if kind == "vqa" else "image-to-text"
    pipe = pipeline(task, model=model_path)
    source = datasets.open_splits(pipe.model.config.data)[_SPLIT.value]
    if kind == "caption":
      images = [source[i]["image"] for i in range(len(records))]
      predicted = [out[0]["generated_text"] for out in pipe(images)]
    else:
      images, questions, i = [], [], 0
      while len(questions) < len(records):
        example = source[i]
        for q in example["questions"]:
          images.append(example["image"])
          questions.append(q.decode() if isinstance(q, bytes) else q)
        i += 1
      questions = questions[:len(records)]
      assert questions == [r["question"] for r in records], "eval order differs"
      predicted = [out[0]["answer"] for out in pipe(images[:len(records)], questions)]
    seconds = time.perf_counter() - start
  equal = sum(p == r["prediction"] for p, r in zip(predicted, records))
  row = dict(run=os.path.basename(os.path.normpath(_WORKDIR.value)), split=_SPLIT.value,
             task=task, step=evaluated["step"], items=len(records), equal=equal,
             agreement=equal / len(records), seconds=round(seconds, 1),
             commit=provenance.commit())
  print(markdown_table([row]))
  os.makedirs("experiments/results", exist_ok=True)
  with open(f"experiments/results/predict_parity_{row['run']}.json", "w") as f:
    json.dump(dict(row, mismatches=[dict(prediction=p, evaluator=r["prediction"])
                                    for p, r in zip(predicted, records)
                                    if p != r["prediction"]][:20]), f, indent=1)


if __name__ == "__main__":
  app.run(main)
