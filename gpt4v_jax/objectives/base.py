"""What the train loop and the evaluator call on an objective (`Objective`), and the defaults
every one-task objective shares (`SingleObjective`).

An objective supplies everything task-specific: the model it trains, its variables, how a
standard example becomes a training row (`train_example`) and eval items (`eval_items`), the
loss, the prediction and the score. `objectives/kinds.py` lists the kinds a config can name.
"""
from typing import Any, Protocol

import grain
import jax
import numpy as np

from gpt4v_jax.data import pipeline


class Objective(Protocol):
  """The interface of `train.train_and_evaluate` and `evals.evaluator` to an objective."""
  name: str
  log_keys: tuple[str, ...]  # Train metrics printed beside the loss.

  def build_model(self, model_config) -> Any:
    """The Linen module this objective trains, from config.model."""

  def init_variables(self, model, rng: jax.Array) -> dict:
    """The model's variables, boxed with logical axis names ("params" plus any state, e.g.
    a frozen image tokenizer's)."""

  def batch_spec(self, batch_size: int) -> dict:
    """Shapes of one training batch (jax.ShapeDtypeStruct leaves)."""

  def rows_per_sub_batch(self, global_batch_size: int) -> dict[str, int]:
    """{name: rows} of each sub-batch a batch is made of ({"": all rows} for one task); the
    loop checks each against the mesh and the micro-batches."""

  def train_dataset(self, source: Any, *, seed: int, global_batch_size: int,
                    process_index: int, process_count: int, num_threads: int,
                    on_bad_example: str) -> grain.IterDataset:
    """This process's training batches from `source`, shuffled with `seed` (resumable)."""

  def train_flops_per_example(self, model, frozen: tuple[str, ...] = ()) -> float:
    """Model FLOPs of one row's forward and backward pass, for MFU."""

  def loss(self, model, params, model_state: dict, batch: dict, rng: jax.Array,
           deterministic: bool) -> tuple[jax.Array, dict, dict]:
    """(scalar loss, metrics, updated model_state) of one batch, inside the jitted step."""

  def eval_items(self, example: dict) -> list[tuple[dict[str, np.ndarray], Any]]:
    """Standard example -> [(model inputs, info for `score`)]."""

  def predict(self, model, params, model_state: dict, inputs: dict) -> Any:
    """A batch of eval inputs -> outputs (device arrays)."""

  def to_predictions(self, outputs: Any) -> list:
    """`predict`'s outputs gathered to the host -> one prediction per item."""

  def score(self, infos: list, predictions: list) -> tuple[dict, list[dict]]:
    """(metrics, one JSON-ready record per item)."""

  def evaluate(self, run) -> tuple[dict, list[dict], np.ndarray | None]:
    """(metrics, records, image grid or None) of this objective's evaluation, where
    `run(objective)` predicts and scores one single-task objective on the split."""


class SingleObjective:
  """Defaults of the `Objective` methods for an objective that is one task."""
  log_keys: tuple[str, ...] = ()

  def rows_per_sub_batch(self, global_batch_size: int) -> dict[str, int]:
    return {"": global_batch_size}

  def train_dataset(self, source, *, seed, global_batch_size, process_index, process_count,
                    num_threads, on_bad_example="skip") -> grain.IterDataset:
    return pipeline.train_dataset(
        source, self.train_example, seed=seed,
        local_batch_size=global_batch_size // process_count, process_index=process_index,
        process_count=process_count, num_threads=num_threads, on_bad_example=on_bad_example)

  def evaluate(self, run):
    return run(self)
