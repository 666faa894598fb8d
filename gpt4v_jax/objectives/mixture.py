"""Several objectives trained together as one model, in one loop.

Every batch holds a fixed number of each part's rows (`part_rows`: the weights' shares of the
batch, rounded to whole rows), as one sub-batch per part, {name: that part's rows}, each at the
part's own row length: a caption row is 26 slots long, a text-to-image row 91, so no row is
padded to another task's length (the task token after BOS still tells the model which task a
row is). The loss runs the one model on each sub-batch (text-to-image's without images, the
others' with them) and averages the next-token loss over all target tokens of the batch, as
one padded batch of every row would; a contrastive part's loss is added to that mean.
`train_dataset` zips one shuffled example stream per part. Evaluation runs each part's own
evaluation on the split, its metrics prefixed with the part's name ("caption/object_f1",
"vqa/accuracy").
"""
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np

from gpt4v_jax.data import pipeline
from gpt4v_jax.objectives.prefix_lm import PrefixLMObjective
from gpt4v_jax.objectives.text_to_image import TextToImageObjective


def rows_per_part(weights: dict[str, float], batch_size: int) -> dict[str, int]:
  """The weights' shares of `batch_size` rows, rounded to whole rows by largest remainder
  (ties to the earlier part), e.g. weights 2:2:1.5 of 16 rows -> 6, 6, 4. Raises ValueError
  naming a part that would get no row."""
  total = sum(weights.values())
  exact = {name: batch_size * w / total for name, w in weights.items()}
  rows = {name: int(np.floor(x)) for name, x in exact.items()}
  by_remainder = sorted(weights, key=lambda n: -(exact[n] - rows[n]))  # Stable: ties in order.
  for name in by_remainder[:batch_size - sum(rows.values())]:
    rows[name] += 1
  for name, n in rows.items():
    if n == 0:
      raise ValueError(f"config.objective.mixture.{name}.weight={weights[name]} gives it none "
                       f"of the {batch_size} rows of a batch (config.data.global_batch_size); "
                       "raise its weight or the batch size.")
  return rows


class MixtureObjective(PrefixLMObjective):
  """Named prefix-LM objectives and the rows each gets per batch. Model and variables are the
  widest part's (text-to-image's, whose vocabulary and code positions serve every part); the
  evaluator evaluates each part on its own."""
  name = "mixture"

  def __init__(self, parts: dict[str, Any], weights: dict[str, float], batch_size: int):
    self.tokenizer = next(iter(parts.values())).tokenizer
    self.parts = parts
    self.weights = weights
    self.part_rows = rows_per_part(weights, batch_size)
    self.log_keys = ("token_accuracy",) + tuple(f"{name}/loss" for name in parts)
    t2i = [part for part in parts.values() if isinstance(part, TextToImageObjective)]
    text = [part for part in parts.values() if isinstance(part, PrefixLMObjective)]
    self._widest = (t2i or text or list(parts.values()))[0]

  def build_model(self, model_config):
    """The widest part's model, with the contrastive head if a part trains one."""
    model = self._widest.build_model(model_config)
    for part in self.parts.values():
      if hasattr(part, "attach_head") and model.contrastive is None:
        model = part.attach_head(model)
    return model

  def init_variables(self, model, rng):
    return self._widest.init_variables(model, rng)

  def batch_spec(self, batch_size: int) -> dict[str, dict[str, jax.ShapeDtypeStruct]]:
    """{part name: that part's batch_spec for its rows of `batch_size`}."""
    rows = rows_per_part(self.weights, batch_size)
    return {name: part.batch_spec(rows[name]) for name, part in self.parts.items()}

  def train_flops_per_example(self, model, frozen=()):
    """The parts' per-row FLOPs, averaged over the rows of a batch."""
    total = sum(self.part_rows[name] * part.train_flops_per_example(model, frozen)
                for name, part in self.parts.items())
    return total / sum(self.part_rows.values())

  def loss(self, model, params, model_state, batch, rng, deterministic):
    """Each part's loss on its sub-batch (`batch[name]`). The text parts' are weighted by
    their target tokens: the mean next-token loss over every target token of the batch; a
    contrastive part's loss (over its own rows' image-text pairs) is added to that. Metrics:
    token_accuracy and target_tokens over the text rows, each part's own loss as
    `{name}/loss`, a contrastive part's metrics as `{name}/batch_accuracy`, ..."""
    loss_sum = correct = tokens = other = 0.0
    per_part = {}
    for k, (name, part) in enumerate(self.parts.items()):
      loss, aux, model_state = part.loss(model, params, model_state, batch[name],
                                         jax.random.fold_in(rng, k), deterministic)
      per_part[f"{name}/loss"] = loss
      if "target_tokens" not in aux:  # Not a next-token loss: the contrastive one.
        other = other + loss
        per_part.update({f"{name}/{key}": v for key, v in aux.items()})
        continue
      n = aux["target_tokens"]
      loss_sum, correct, tokens = (loss_sum + loss * n, correct + aux["token_accuracy"] * n,
                                   tokens + n)
    n = jnp.maximum(tokens, 1.0)
    return loss_sum / n + other, dict(token_accuracy=correct / n, target_tokens=tokens,
                                      **per_part), model_state

  def rows_per_sub_batch(self, global_batch_size: int) -> dict[str, int]:
    """`part_rows`: each part's rows of a batch."""
    if sum(self.part_rows.values()) != global_batch_size:
      raise ValueError(f"The mixture was built for batches of {sum(self.part_rows.values())} "
                       f"rows ({self.part_rows}), not {global_batch_size}.")
    return dict(self.part_rows)

  def train_dataset(self, source: Any, *, seed: int, global_batch_size: int,
                    process_index: int, process_count: int, num_threads: int,
                    on_bad_example: str = "skip") -> grain.IterDataset:
    """{part name: its local rows} zipped, `part_rows` of each, part k walking its own
    shuffled pass over the source (seed + k: the parts see the images in different
    orders)."""
    rows = self.rows_per_sub_batch(global_batch_size)
    return pipeline.zip_datasets({
        name: part.train_dataset(source, seed=seed + k, global_batch_size=rows[name],
                                 process_index=process_index, process_count=process_count,
                                 num_threads=num_threads, on_bad_example=on_bad_example)
        for k, (name, part) in enumerate(self.parts.items())})

  def evaluate(self, run) -> tuple[dict, list[dict], None]:
    """Each part's own evaluation in turn: metrics prefixed with the part's name
    ("caption/object_f1"), records tagged with it (`task`); no image grid."""
    metrics, records = {}, []
    for name, part in self.parts.items():
      part_metrics, part_records, _ = part.evaluate(run)
      metrics.update({f"{name}/{k}": v for k, v in part_metrics.items()})
      records += [dict(task=name, **r) for r in part_records]
    return metrics, records, None


