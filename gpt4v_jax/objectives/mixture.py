"""Several objectives trained together as one model, in one loop.

Every part makes rows of the same layout and length (`max_text_len`; the task token after BOS
tells the model which task a row is), so one batch can hold rows of every part. A
text-to-image part adds `code_start` to its rows (other parts' rows get -1: no codes) and
brings the frozen image tokenizer; its loss then serves every row. Rows are interleaved thus:
`pipeline.train_dataset` walks one shuffled example stream per part and interleaves them in
proportion to the weights. Evaluation runs each part's own evaluation on the split, its
metrics prefixed with the part's name ("caption/object_f1", "vqa/accuracy").
"""
from typing import Any, Callable

import numpy as np

from gpt4v_jax.objectives.prefix_lm import PrefixLMObjective
from gpt4v_jax.objectives.text_to_image import TextToImageObjective


class MixtureObjective(PrefixLMObjective):
  """Named prefix-LM objectives and their mixing weights. Model, batch layout and loss are
  the parts' common ones; the evaluator evaluates each part on its own."""
  name = "mixture"

  def __init__(self, parts: dict[str, Any], weights: dict[str, float]):
    lengths = {part.max_text_len for part in parts.values()}
    if len(lengths) != 1:
      raise ValueError("Mixed objectives must share max_text_len, got "
                       f"{ {name: part.max_text_len for name, part in parts.items()} }.")
    (self.max_text_len,) = lengths
    self.tokenizer = next(iter(parts.values())).tokenizer
    self.parts = parts
    self.weights = weights
    t2i = [part for part in parts.values() if isinstance(part, TextToImageObjective)]
    # The part whose rows, variables and loss are a superset of the others'.
    self._widest = t2i[0] if t2i else next(iter(parts.values()))

  def build_model(self, model_config):
    return self._widest.build_model(model_config)

  def batch_spec(self, batch_size: int):
    return self._widest.batch_spec(batch_size)

  def init_variables(self, model, rng):
    return self._widest.init_variables(model, rng)

  def train_flops_per_example(self, model, frozen=()):
    return self._widest.train_flops_per_example(model, frozen)

  def loss(self, model, params, model_state, batch, rng, deterministic):
    return self._widest.loss(model, params, model_state, batch, rng, deterministic)


def train_components(objective: Any) -> list[tuple[Callable, float]]:
  """(train_example, weight) per objective, as `pipeline.train_dataset` takes them: a
  mixture's parts, or a single objective on its own."""
  if isinstance(objective, MixtureObjective):
    with_codes = any(isinstance(p, TextToImageObjective) for p in objective.parts.values())
    return [(_with_code_start(part.train_example) if with_codes
             and not isinstance(part, TextToImageObjective) else part.train_example,
             objective.weights[name]) for name, part in objective.parts.items()]
  return [(objective.train_example, 1.0)]


def _with_code_start(train_example: Callable) -> Callable:
  """A text task's rows beside text-to-image rows: code_start -1 (no codes, image shown)."""

  def fn(example, rng):
    return dict(train_example(example, rng), code_start=np.int32(-1))

  return fn
