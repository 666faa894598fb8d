"""Several objectives trained together as one model, in one loop.

Every part makes rows of the same layout and length (`max_text_len`; the task token after BOS
tells the model which task a row is), so one batch can hold rows of every part:
`pipeline.train_dataset` walks one shuffled example stream per part and interleaves them in
proportion to the weights. Evaluation runs each part's own evaluation on the split, its
metrics prefixed with the part's name ("caption/object_f1", "vqa/accuracy").
"""
from typing import Any, Callable

from gpt4v_jax.objectives.prefix_lm import PrefixLMObjective


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


def train_components(objective: Any) -> list[tuple[Callable, float]]:
  """(train_example, weight) per objective, as `pipeline.train_dataset` takes them: a
  mixture's parts, or a single objective on its own."""
  if isinstance(objective, MixtureObjective):
    return [(part.train_example, objective.weights[name])
            for name, part in objective.parts.items()]
  return [(objective.train_example, 1.0)]
