"""Our params back as a Hugging Face-format directory that transformers loads.

  save_hf(params, hf_config, out_dir)

`hf_config` is the config.json the params were loaded from (or built to match); each family's
`Source.to_hf` turns our leaves back into the checkpoint's tensors, so loading the result with
`load_hf` gives the same params bitwise. A decoder whose vocabulary grew (our special and image
ids after the checkpoint's) is saved with all its rows and the config's vocab_size raised to
match, so transformers runs it with the same logits.
"""
import json
import os
import shutil
from typing import Any

import jax
import numpy as np

from gpt4v_jax.pretrained import family_of
from gpt4v_jax.pretrained import families
from gpt4v_jax.pretrained.families import ParamPath
from gpt4v_jax.pretrained.hf_dir import INDEX, SINGLE, HFDir, write_safetensors

# transformers' own default shard size for save_pretrained.
MAX_SHARD_BYTES = 5 * 1024**3


def _leaf(params: dict, path: ParamPath) -> np.ndarray:
  """Our leaf at the unscanned `path`; a `block_{i}` path reads layer i of a scanned
  `blocks` stack."""
  node = params
  if path[0].startswith("block_") and path[0] not in params and "blocks" in params:
    layer = int(path[0].split("_")[1])
    node = params["blocks"]
    for name in path[1:]:
      node = node[name]
    return np.asarray(jax.device_get(node))[layer]
  for name in path:
    node = node[name]
  return np.asarray(jax.device_get(node))


def hf_tensors(params: dict, hf_config: dict[str, Any]) -> dict[str, np.ndarray]:
  """{checkpoint tensor name: array} for our `params` of the model `hf_config` describes."""
  sources = family_of(hf_config).sources(hf_config)
  return {k: np.asarray(x) for k, x in
          families.hf_tensors(sources, lambda path: _leaf(params, path)).items()}


def _is_tied_copy(key: str, config: dict) -> bool:
  """A stored copy of a tied embedding (lm_head.weight with tie_word_embeddings): transformers
  ties it on load, and our export of the embedding is the one to keep."""
  text = config.get("text_config", config)
  return key.endswith("lm_head.weight") and text.get("tie_word_embeddings", False)


def save_hf(params: dict, hf_config: dict[str, Any], out_dir: str, *,
            copy_from: str | None = None, max_shard_bytes: int = MAX_SHARD_BYTES) -> str:
  """Writes config.json and model.safetensors (shards and model.safetensors.index.json past
  max_shard_bytes) to `out_dir`; copies tokenizer and processor files from `copy_from` (the
  directory the model was loaded from). Returns out_dir."""
  config = json.loads(json.dumps(hf_config))
  family = family_of(config)
  if family.kind == "language":
    config["vocab_size"] = int(params["embedding"].shape[0])
  elif family.kind == "vlm":
    config["text_config"]["vocab_size"] = int(params["decoder"]["embedding"].shape[0])
  tensors = hf_tensors(params, config)
  if copy_from:
    # What our model does not use (CLIP's final norm under LLaVA, a full CLIP's text tower,
    # a pooler) goes back as it was, so the directory is the whole checkpoint.
    source = HFDir(copy_from)
    for key in source.keys():
      if (key not in tensors and family.ignored(key, config)
          and not _is_tied_copy(key, config)):
        tensors[key] = np.array(source.read(key))
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "config.json"), "w") as f:
    json.dump(config, f, indent=2, sort_keys=True)
  shards, size = [{}], 0
  for key, x in tensors.items():
    if shards[-1] and size + x.nbytes > max_shard_bytes:
      shards.append({})
      size = 0
    shards[-1][key] = x
    size += x.nbytes
  if len(shards) == 1:
    write_safetensors(os.path.join(out_dir, SINGLE), shards[0])
  else:
    weight_map = {}
    for i, shard in enumerate(shards):
      name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
      write_safetensors(os.path.join(out_dir, name), shard)
      weight_map.update({key: name for key in shard})
    with open(os.path.join(out_dir, INDEX), "w") as f:
      json.dump(dict(metadata=dict(total_size=sum(x.nbytes for x in tensors.values())),
                     weight_map=weight_map), f, indent=2)
  if copy_from:
    for name in sorted(os.listdir(copy_from)):
      if name.startswith(("tokenizer", "special_tokens_map", "vocab.", "merges.",
                          "preprocessor_config", "generation_config")):
        shutil.copy(os.path.join(copy_from, name), os.path.join(out_dir, name))
  return out_dir
