"""Scores a run on the shapes splits exported to an image folder against the embedded run.

  python -m gpt4v_jax.data.export_shapes --data_dir=data_dir --out=shapes_folder
  python -m gpt4v_jax.main --config=configs/folder_caption.py --workdir=workdirs/folder_caption \\
      --config.data.path=shapes_folder --config.tokenizer=words:shapes \\
      --config.model.vocab_size=128 --config.objective.max_text_len=26 \\
      --config.data.resize=squash --config.evals.final_splits="('test','compositional')"
  python -m experiments.folder_vs_embedded --folder=workdirs/folder_caption \\
      --embedded=workdirs/shapes_caption [--split=test]

An image folder has no scenes, so the folder run's results hold no object F1; but a shapes
caption names every object exactly (`shapes.parse_caption` of any reference is the scene), so
both runs' eval predictions are scored here the same way, against the parsed references:
object F1 for captions, VQA accuracy for questions. Prints a table; writes nothing.
"""
from absl import app, flags

from experiments.tables import final_eval
from gpt4v_jax.data import shapes
from gpt4v_jax.evals import caption_metrics, vqa_metrics

_FOLDER = flags.DEFINE_string("folder", None, "Workdir of the run on the exported folder.",
                              required=True)
_EMBEDDED = flags.DEFINE_string("embedded", None, "Workdir of the run on embedded shapes.",
                                required=True)
_SPLIT = flags.DEFINE_string("split", "test", "Split whose final eval JSON is compared.")


def score(records: list[dict]) -> dict[str, float]:
  """Object F1 of caption records (predicted objects against the first reference's), or VQA
  accuracy of question records."""
  if "references" in records[0]:
    predicted = [shapes.parse_caption(r["prediction"]) for r in records]
    truth = [shapes.parse_caption(r["references"][0]) for r in records]
    return dict(object_f1=caption_metrics.object_prf(predicted, truth)["f1"])
  return dict(vqa_accuracy=vqa_metrics.vqa_scores(
      (r["prediction"], [r["answer"]], r["qtype"]) for r in records)["accuracy"])


def main(argv):
  del argv
  rows = {name: final_eval(workdir, _SPLIT.value) for name, workdir in
          (("folder", _FOLDER.value), ("embedded", _EMBEDDED.value))}
  scores = {name: score(e["predictions"]) for name, e in rows.items()}
  # Ids differ (a folder's are file names); what each run predicted is compared in order.
  predicted = {name: [r["prediction"] for r in e["predictions"]] for name, e in rows.items()}
  same = predicted["folder"] == predicted["embedded"]
  print(f"| run | step | examples | {' | '.join(scores['folder'])} |")
  print("|---|---|---|" + "---|" * len(scores["folder"]))
  for name, e in rows.items():
    print(f"| {name} | {e['step']} | {e['metrics']['num_examples']:.0f} | "
          + " | ".join(f"{v:.4f}" for v in scores[name].values()) + " |")
  print(f"Identical predictions: {same}.")


if __name__ == "__main__":
  app.run(main)
