"""Runs an objective's evaluation on one split: batch its eval items, predict (decode text,
reconstruct or generate images), score, write JSON (and a PNG grid of image predictions)."""
import functools
import json
import os
import time
from typing import Any

import jax
import numpy as np
import PIL.Image
from jax.experimental import multihost_utils

from gpt4v_jax import sharding
from gpt4v_jax.data import pipeline


def evaluate_split(*, objective: Any, model: Any, params: Any, model_state: Any, source: Any,
                   split: str, num_examples: int, batch_size: int, mesh: jax.sharding.Mesh,
                   out_dir: str | None = None, step: int | None = None,
                   on_bad_example: str = "skip") -> tuple[dict, list]:
  """Predicts the eval items of the first `num_examples` of `source` and scores them.

  `objective.eval_items(example)` gives each example's items (one per caption example, one
  per question for VQA), `objective.predict(model, params, model_state, inputs)` a batch of
  outputs, `objective.to_predictions(outputs)` one prediction per item (a text, an image),
  `objective.score(infos, predictions)` the metrics and records. An objective with a
  `sample_grid(infos, predictions)` (images) gets it saved as
  `{out_dir}/samples_{split}_step{step}.png`. `objective.evaluate(run)` decides what is run:
  a single objective itself, a mixture each of its parts (metrics prefixed with the part's
  name, "caption/object_f1", records tagged with it), the contrastive objective its image
  and text embeddings (`run(view, examples=None)`: a view is predicted and scored like an
  objective, on the split or on a list of examples).
  Bad examples are skipped (counted in `skipped_examples`) or raise, as `on_bad_example` says.
  Returns (metrics, per-item records); writes `{out_dir}/eval_{split}_step{step}.json`.
  """
  start = time.perf_counter()
  predict_and_score = functools.partial(
      _predict_and_score, model=model, params=params, model_state=model_state,
      batch_size=batch_size, mesh=mesh, on_bad_example=on_bad_example)

  def evaluate(single_objective, examples=None):
    """Predicts and scores one single objective on the split, or on `examples` (a list of
    standard examples, e.g. an objective's own prompts)."""
    if examples is None:
      return predict_and_score(single_objective, source=source, num_examples=num_examples)
    return predict_and_score(single_objective, source=examples, num_examples=len(examples))

  metrics, records, grid = objective.evaluate(evaluate)
  if grid is not None and out_dir is not None and jax.process_index() == 0:
    path = os.path.join(out_dir, f"samples_{split}_step{step}.png")
    PIL.Image.fromarray(grid).save(path + ".tmp.png")
    os.replace(path + ".tmp.png", path)
  metrics["seconds"] = time.perf_counter() - start
  if out_dir is not None and jax.process_index() == 0:
    path = os.path.join(out_dir, f"eval_{split}_step{step}.json")
    with open(path + ".tmp", "w") as f:
      json.dump(dict(split=split, step=step, metrics=metrics, predictions=records), f, indent=1)
    os.replace(path + ".tmp", path)  # Readers never see a half-written file.
  return metrics, records


def _predict_and_score(objective: Any, *, model: Any, params: Any, model_state: Any,
                       source: Any, num_examples: int, batch_size: int,
                       mesh: jax.sharding.Mesh, on_bad_example: str
                       ) -> tuple[dict, list, np.ndarray | None]:
  """evaluate_split's work for one single objective, without timing or writing: (metrics,
  records, sample grid or None).

  Every process walks the same batches and feeds its own slice of each to the global array,
  so prediction is sharded like training; outputs are gathered back to every host.
  """
  batch_sharding = sharding.batch_sharding(mesh)
  pid, nproc = jax.process_index(), jax.process_count()
  infos, predictions, kept = [], [], set()
  for batch, items in pipeline.eval_batches(source, objective.eval_items,
                                            num_examples=num_examples, batch_size=batch_size,
                                            on_bad_example=on_bad_example):
    local = jax.tree.map(lambda x: np.array_split(x, nproc)[pid], batch)
    inputs = sharding.to_global(local, batch_sharding)
    outputs = objective.predict(model, params, model_state, inputs)
    outputs = jax.tree.map(np.asarray, multihost_utils.process_allgather(outputs, tiled=True))
    predictions += objective.to_predictions(jax.tree.map(lambda x: x[:len(items)], outputs))
    infos += [info for _, info in items]
    kept.update(i for i, _ in items)
  metrics, records = objective.score(infos, predictions)
  metrics = {k: float(v) for k, v in metrics.items()}
  metrics["num_examples"] = len(kept)
  metrics["skipped_examples"] = min(num_examples, len(source)) - len(kept)
  grid = (objective.sample_grid(infos, predictions) if hasattr(objective, "sample_grid")
          else None)
  return metrics, records, grid
