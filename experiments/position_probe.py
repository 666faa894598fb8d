"""Why VQA's relation answers are at chance: can the decoder's image tokens tell where objects are?

  python -m experiments.position_probe --workdir=workdirs/shapes_vqa [--train_images=3000]
      [--test_images=1000]

For a run on the shapes data: the image tokens as the decoder receives them (the encoder's
output after the projector, `Model.embed(pool=False)`), and for each object the token of the
patch holding its centre. Linear (ridge) probes fitted on the train split's objects and
scored on the test split's read the object's x and y (R^2, mean error in pixels) and its
column and row of the patch grid (accuracy, beside the most frequent class's). If the tokens
carried where they are, these would be near perfect; a decoder that sees positions only
through 1D RoPE over the raster order (which shapes attention, not the values it reads)
cannot compare two objects' x otherwise.

A VQA run's final test eval also gives how its relation answers depend on the truth: the rate
of "yes" when the answer is yes, and when it is no (equal rates: the answer ignores the scene).

Prints a table and writes experiments/results/position_probe_<run>.json.
"""
import collections
import json
import os

import numpy as np
from absl import app, flags

from experiments import provenance
from experiments.tables import final_eval, markdown_table

_FLAGS = {}  # Defined when run as a command: the tests import this module beside others
# that define --workdir.


def _define_flags() -> None:
  _FLAGS.update(
      workdir=flags.DEFINE_string("workdir", None, "A finished run on the shapes data.",
                                  required=True),
      train=flags.DEFINE_integer("train_images", 3000, "Train-split images the probes fit on."),
      test=flags.DEFINE_integer("test_images", 1000, "Test-split images they are scored on."),
      out=flags.DEFINE_string("out_dir", os.path.join(os.path.dirname(__file__), "results"),
                              "Where position_probe_<run>.json goes."))


def ridge_fit(x: np.ndarray, y: np.ndarray, l2: float = 1.0) -> np.ndarray:
  """Weights [features + 1, outputs] of ridge regression of y [n, outputs] on x [n, features]
  (the last row is the bias, not penalised)."""
  xb = np.c_[x, np.ones(len(x))]
  penalty = l2 * np.eye(xb.shape[1])
  penalty[-1, -1] = 0.0
  return np.linalg.solve(xb.T @ xb + penalty, xb.T @ y)


def ridge_predict(weights: np.ndarray, x: np.ndarray) -> np.ndarray:
  return np.c_[x, np.ones(len(x))] @ weights


def r_squared(predicted: np.ndarray, truth: np.ndarray) -> float:
  return float(1.0 - ((predicted - truth) ** 2).sum() / ((truth - truth.mean()) ** 2).sum())


def object_tokens(model, source, count: int):
  """(tokens [objects, width], x [objects], y [objects], grid side, patch pixels) of the first
  `count` images of a shapes split: each object's centre patch token."""
  examples = [source[i] for i in range(min(count, len(source)))]
  tokens = model.embed([e["image"] for e in examples], pool=False)  # [n, grid^2, width]
  grid = int(round(np.sqrt(tokens.shape[1])))
  if grid * grid != tokens.shape[1]:
    raise ValueError(f"{tokens.shape[1]} image tokens are not a square grid (a resampler?): "
                     "no token is at an object's place.")
  patch = model.config.data.image_size / grid
  rows, xs, ys = [], [], []
  for example, image_tokens in zip(examples, tokens):
    for obj in example["scene"]:
      col = min(int(obj["x"] // patch), grid - 1)
      row = min(int(obj["y"] // patch), grid - 1)
      rows.append(image_tokens[row * grid + col])
      xs.append(obj["x"])
      ys.append(obj["y"])
  return np.array(rows), np.array(xs), np.array(ys), grid, patch


def probe(model, sources, train_images: int, test_images: int) -> dict:
  """The probes' scores (see the module docstring)."""
  x_train, px_train, py_train, grid, patch = object_tokens(model, sources["train"], train_images)
  x_test, px_test, py_test, _, _ = object_tokens(model, sources["test"], test_images)
  out = dict(grid=grid, train_objects=len(x_train), test_objects=len(x_test))
  for axis, train, test in (("x", px_train, px_test), ("y", py_train, py_test)):
    predicted = ridge_predict(ridge_fit(x_train, train[:, None]), x_test)[:, 0]
    out[f"{axis}_r2"] = r_squared(predicted, test)
    out[f"{axis}_mean_error_px"] = float(np.abs(predicted - test).mean())
    cells_train = np.minimum((train // patch).astype(int), grid - 1)
    cells_test = np.minimum((test // patch).astype(int), grid - 1)
    scores = ridge_predict(ridge_fit(x_train, np.eye(grid)[cells_train]), x_test)
    name = "column" if axis == "x" else "row"
    out[f"{name}_accuracy"] = float((scores.argmax(1) == cells_test).mean())
    out[f"{name}_majority"] = float(np.bincount(cells_test, minlength=grid).max() / len(test))
  return out


def relation_answers(records: list[dict]) -> dict:
  """How a VQA run's relation answers depend on the truth (empty without such questions)."""
  relation = [r for r in records if r.get("qtype") == "relation"]
  if not relation:
    return {}
  pairs = collections.Counter((r["answer"], r["prediction"]) for r in relation)
  yes = lambda truth: pairs[(truth, "yes")] / max(1, pairs[(truth, "yes")] + pairs[(truth, "no")])
  return dict(relation_questions=len(relation),
              relation_accuracy=(pairs[("yes", "yes")] + pairs[("no", "no")]) / len(relation),
              yes_rate_when_yes=yes("yes"), yes_rate_when_no=yes("no"))


def main(argv):
  del argv
  from gpt4v_jax.data import datasets
  from gpt4v_jax.model import Model
  workdir, train, test, out_dir = (_FLAGS[k].value for k in ("workdir", "train", "test", "out"))
  model = Model.from_pretrained(workdir)
  result = probe(model, datasets.open_splits(model.config.data), train, test)
  try:
    result.update(relation_answers(final_eval(workdir, "test")["predictions"]))
  except FileNotFoundError:
    pass  # A run without a final test eval: the probes alone.
  run = os.path.basename(os.path.abspath(workdir))
  print(markdown_table([dict(measure=k, value=v) for k, v in result.items()]))
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, f"position_probe_{run}.json"), "w") as f:
    json.dump(dict(workdir=workdir, commit=provenance.commit(), train_images=train,
                   test_images=test, **result), f, indent=1)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
