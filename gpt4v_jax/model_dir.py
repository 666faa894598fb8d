"""A self-contained model directory: what `export.export` writes from a run and
`Model.from_pretrained` reads, independent of the training workdir and its optimizer state.

  DIR/
    model_info.json    format version, params format, the run it came from (workdir, step)
    config.json        the run's config; its paths (tokenizer, image tokenizer) point into DIR
    preprocess.json    how an image becomes the model's input (`images.Preprocess` fields)
    tokenizer/         the tokenizer's file (a word list, SentencePiece model or tokenizer.json)
    variables/         the model's variables {"params": ..., other collections}: Orbax (OCDBT)
    variables.safetensors   ... or one safetensors file ("params/decoder/embedding" keys)
    image_tokenizer/   text-to-image only: its VQ-VAE, as a model directory of its own

Paths inside config.json are relative to DIR (`read_config` makes them absolute), so the
directory can be copied or moved anywhere.
"""
import dataclasses
import json
import os
import shutil
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import safetensors.numpy

from gpt4v_jax.data import images

FORMAT_VERSION = 1
PARAMS_FORMATS = ("orbax", "safetensors")
_INFO = "model_info.json"


# config.model keys naming Hugging Face checkpoints; a model directory holds their config.json
# under the key's name (the weights are in variables/).
CHECKPOINT_KEYS = ("vision_checkpoint", "language_checkpoint")


def is_model_dir(path: str) -> bool:
  return os.path.isfile(os.path.join(path, _INFO))


def write(out_dir: str, config: ml_collections.ConfigDict, variables: dict, *,
          preprocess: images.Preprocess, info: dict, params_format: str = "orbax",
          files: dict[str, str] | None = None) -> None:
  """Writes a model directory (replacing `out_dir` only once it is complete).

  config: the run's config with paths already relative to `out_dir`; variables: {collection:
  tree of arrays}; info: what to record about the source run; files: {relative path in
  out_dir: file to copy there} (the tokenizer's)."""
  if params_format not in PARAMS_FORMATS:
    raise ValueError(f"params_format={params_format!r}: expected one of {PARAMS_FORMATS}.")
  out_dir = os.path.abspath(out_dir)
  tmp = out_dir + ".tmp"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  for rel, source in (files or {}).items():
    os.makedirs(os.path.dirname(os.path.join(tmp, rel)), exist_ok=True)
    shutil.copyfile(source, os.path.join(tmp, rel))
  with open(os.path.join(tmp, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=1))
  with open(os.path.join(tmp, "preprocess.json"), "w") as f:
    json.dump(dataclasses.asdict(preprocess), f, indent=1)
  variables = jax.device_get(variables)
  if params_format == "orbax":
    with ocp.StandardCheckpointer() as ckpt:
      ckpt.save(os.path.join(tmp, "variables"), variables)
  else:
    safetensors.numpy.save_file(_flatten(variables), os.path.join(tmp, "variables.safetensors"))
  with open(os.path.join(tmp, _INFO), "w") as f:
    json.dump(dict(format_version=FORMAT_VERSION, params_format=params_format, **info), f,
              indent=1)
  if os.path.exists(out_dir):
    shutil.rmtree(out_dir)
  os.replace(tmp, out_dir)


def read_config(path: str) -> tuple[ml_collections.ConfigDict, dict]:
  """(config with its paths made absolute, model_info) of the model directory `path`."""
  path = os.path.abspath(path)
  if not is_model_dir(path):
    raise FileNotFoundError(f"{path} is not a model directory (it has no {_INFO}); write one "
                            "with `python -m gpt4v_jax.export --workdir=RUN --out=DIR`.")
  with open(os.path.join(path, _INFO)) as f:
    info = json.load(f)
  if info.get("format_version") != FORMAT_VERSION:
    raise ValueError(f"{path}: model directory format {info.get('format_version')}, this "
                     f"code reads format {FORMAT_VERSION}.")
  with open(os.path.join(path, "config.json")) as f:
    config = ml_collections.ConfigDict(json.load(f))
  kind, sep, rel = config.get("tokenizer", "").partition(":")
  if sep and not os.path.isabs(rel):  # A file exported into DIR.
    config.tokenizer = f"{kind}:{os.path.join(path, rel)}"
  for key in CHECKPOINT_KEYS:  # Their config.json, exported into DIR: the architecture.
    if config.model.get(key) and not os.path.isabs(config.model[key]):
      config.model[key] = os.path.join(path, config.model[key])
  for keys in _parts(config.objective):
    if keys.get("image_tokenizer") and not os.path.isabs(keys.image_tokenizer):
      keys.image_tokenizer = os.path.join(path, keys.image_tokenizer)
  return config, info


def read_preprocess(path: str) -> images.Preprocess:
  """The `images.Preprocess` of the model directory `path`."""
  with open(os.path.join(path, "preprocess.json")) as f:
    fields = json.load(f)
  for name in ("pad_fill", "random_resized_crop", "crop_aspect"):
    if isinstance(fields.get(name), list):
      fields[name] = tuple(fields[name])
  return images.Preprocess(**fields)


def read_variables(path: str, target: Any | None = None) -> dict:
  """The variables of the model directory `path`: laid out as `target` says (a tree of
  jax.ShapeDtypeStruct with shardings: each device reads its own shards) or, without one,
  as numpy arrays on the host. Raises ValueError naming leaves that do not match."""
  info_format = _params_format(path)
  if info_format == "orbax":
    with ocp.StandardCheckpointer() as ckpt:
      if target is None:
        return jax.device_get(ckpt.restore(os.path.join(path, "variables")))
      _check_tree(path, ckpt.metadata(os.path.join(path, "variables")).item_metadata, target)
      return ckpt.restore(os.path.join(path, "variables"), target)
  flat = safetensors.numpy.load_file(os.path.join(path, "variables.safetensors"))
  tree = _unflatten(flat)
  if target is None:
    return tree
  _check_tree(path, tree, target)
  return jax.tree.map(lambda x, t: jax.device_put(x.astype(t.dtype), t.sharding), tree, target)


def read(path: str) -> tuple[ml_collections.ConfigDict, dict]:
  """(config, variables as numpy arrays) of the model directory `path`."""
  config, _ = read_config(path)
  return config, read_variables(path)


def _params_format(path: str) -> str:
  with open(os.path.join(path, _INFO)) as f:
    return json.load(f)["params_format"]


def _check_tree(path: str, stored: Any, target: Any) -> None:
  """Raises ValueError naming each leaf whose presence or shape differs."""
  shapes = lambda tree: {jax.tree_util.keystr(p): tuple(x.shape) for p, x in
                         jax.tree_util.tree_leaves_with_path(tree)}
  have, want = shapes(stored), shapes(target)
  bad = sorted(k for k in have.keys() | want.keys() if have.get(k) != want.get(k))
  if bad:
    raise ValueError(f"{path}: the stored variables do not fit the model its config builds: "
                     + "; ".join(f"{k}: stored {have.get(k, 'absent')}, model "
                                 f"{want.get(k, 'absent')}" for k in bad[:8])
                     + (f" (and {len(bad) - 8} more)" if len(bad) > 8 else "") + ".")


def _parts(objective: ml_collections.ConfigDict) -> list[ml_collections.ConfigDict]:
  return list(objective.mixture.values()) if objective.kind == "mixture" else [objective]


def _flatten(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
  """{"params": {"decoder": {"w": x}}} -> {"params/decoder/w": x}."""
  flat = {}
  for key, value in tree.items():
    if "/" in key:
      raise ValueError(f"variable name {key!r} contains '/', which safetensors keys use.")
    if isinstance(value, dict):
      flat.update(_flatten(value, f"{prefix}{key}/"))
    else:
      flat[prefix + key] = np.asarray(value)
  return flat


def _unflatten(flat: dict[str, np.ndarray]) -> dict:
  tree: dict = {}
  for key, value in flat.items():
    *parents, leaf = key.split("/")
    node = tree
    for name in parents:
      node = node.setdefault(name, {})
    node[leaf] = value
  return tree
