"""Checks a config before anything is built or compiled; each error names the setting."""
import os

import jax
import ml_collections

from gpt4v_jax import sharding
from gpt4v_jax.data import pipeline
from gpt4v_jax.data.tokenizer import get_tokenizer


def check(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Raises ValueError naming the offending key and the fix."""
  parent = os.path.dirname(os.path.abspath(workdir))
  if not os.path.isdir(parent):
    raise ValueError(f"--workdir={workdir}: its parent directory {parent} does not exist; "
                     "create it first (the workdir itself is created for you).")
  sharding.mesh_shape(config.mesh, jax.device_count())  # Raises if the mesh does not fit.
  for key in ("train.steps", "train.log_every", "train.checkpoint_every",
              "data.global_batch_size", "evals.batch_size", "objective.max_text_len"):
    section, name = key.split(".")
    if config[section][name] <= 0:
      raise ValueError(f"config.{key}={config[section][name]} must be positive.")
  vocab = get_tokenizer(config.tokenizer).vocab_size
  if config.model.vocab_size < vocab:
    raise ValueError(f"config.model.vocab_size={config.model.vocab_size} is smaller than the "
                     f"tokenizer's {vocab} ids.")
  if config.model.num_heads % config.model.num_kv_heads:
    raise ValueError(f"config.model.num_kv_heads={config.model.num_kv_heads} must divide "
                     f"config.model.num_heads={config.model.num_heads}.")
  unknown = set(config.evals.final_splits) | set(config.evals.during_splits)
  unknown -= {"train", "validation", "test", "compositional"}
  if unknown:
    raise ValueError(f"config.evals splits {sorted(unknown)} are not splits of shapes.")
  if config.data.on_bad_example not in pipeline.ON_BAD_EXAMPLE:
    raise ValueError(f"config.data.on_bad_example={config.data.on_bad_example!r}: expected one "
                     f"of {pipeline.ON_BAD_EXAMPLE}.")
