"""A PaliGemma/LLaVA-style model from a pretrained vision tower and a pretrained decoder.

config.model.vision_checkpoint and config.model.language_checkpoint name local Hugging Face
directories (see `gpt4v_jax.pretrained`). The architecture comes from each one's config.json
alone (`vision_tower`, `language_decoder`: an exported model or a resumed run rebuilds the
same modules without reading weights); the weights go into a fresh run's params once
(`load_pretrained`), and the projector between them starts fresh. Our special, task and image
ids follow the checkpoint's vocabulary (`HFTokenizer`), so the decoder has more embedding rows
than the checkpoint: each new row starts at the mean of the checkpoint's rows (an embedding
the model has seen the like of, unlike a random one; Hewitt 2021).
"""
import dataclasses
import json
import os
from typing import Any

import jax
import numpy as np

from gpt4v_jax.metric_writer import log
from gpt4v_jax.models.decoder import Decoder
from gpt4v_jax.models.vit import ViT
from gpt4v_jax.pretrained import HFDir, family_of, load_params
from gpt4v_jax.pretrained.families import ParamPath, Source
from gpt4v_jax.pretrained.hf_dir import CheckpointError

# Decoder params a checkpoint does not have: they keep this run's fresh init.
_FRESH = ("code_position_embedding",)


def read_config(path: str, key: str) -> dict[str, Any]:
  """config.json of the Hugging Face directory that config key `key` names."""
  file = os.path.join(path, "config.json")
  try:
    with open(file) as f:
      return json.load(f)
  except OSError as e:
    raise CheckpointError(f"{key}={path!r}: cannot read {file} ({e.strerror}); give a local "
                          "Hugging Face model directory (README, 'Pretrained models').") from None


def _part(path: str, key: str, kind: str):
  """(the family that builds the part, config.json) of config key `key`; a whole
  vision-language checkpoint gives its vision tower or its decoder."""
  config = read_config(path, f"config.model.{key}")
  family = family_of(config, f"config.model.{key}={path!r}")
  if family.kind not in ("vlm", kind):
    raise CheckpointError(f"config.model.{key}={path!r} is a {config.get('model_type')} "
                          f"{family.kind} model, not a {kind} model.")
  return family, config


def vision_tower(path: str, **overrides) -> ViT:
  """The `ViT` a vision checkpoint's config.json describes (or a whole vision-language
  checkpoint's tower); overrides: our settings (dtype, remat, scan_layers, dropout)."""
  family, config = _part(path, "vision_checkpoint", "vision")
  if family.kind == "vlm":
    return family.vision_module(config, **overrides)
  return family.module(config, **overrides)


def as_decoder(lm) -> Decoder:
  """A language family's module (which takes token ids) as the plain `Decoder` with the same
  settings and params, which the composed model feeds embeddings."""
  names = [f.name for f in dataclasses.fields(Decoder) if f.name not in ("parent", "name")]
  return Decoder(**{n: getattr(lm, n) for n in names})


def language_decoder(path: str, **overrides) -> Decoder:
  """The `Decoder` a language checkpoint's config.json describes (or a whole vision-language
  checkpoint's), with the vocabulary and other settings in overrides: vocab_size, code ids,
  dtype, remat, ..."""
  family, config = _part(path, "language_checkpoint", "language")
  if family.kind == "vlm":
    return as_decoder(family.language_module(config, **overrides))
  return as_decoder(family.module(config, **overrides))


def gpt4v_settings(model_config) -> dict[str, Any]:
  """GPT4V settings a whole vision-language checkpoint fixes (its projector, its attention
  over the prefix) when config.model takes both parts from it; {} otherwise."""
  path = model_config.get("vision_checkpoint", "")
  if not path or path != model_config.get("language_checkpoint", ""):
    return {}
  family, config = _part(path, "vision_checkpoint", "vision")
  return family.gpt4v_settings(config) if family.kind == "vlm" else {}


def checkpoint_vocab(path: str) -> int:
  """The embedding rows of a language checkpoint (its config's vocab_size)."""
  config = read_config(path, "config.model.language_checkpoint")
  text = config.get("text_config", config)
  return int(text["vocab_size"])


def _grown(source: Source, axis: int, size: int) -> Source:
  """`source` with its vocabulary `axis` grown to `size` rows, the new ones the mean of the
  checkpoint's."""
  def to_ours(*tensors):
    x = np.asarray(source.to_ours(*tensors), np.float32)
    if x.shape[axis] > size:
      raise CheckpointError(f"{source.keys[0]}: {x.shape[axis]} vocabulary rows, more than "
                            f"config.model.vocab_size={size}.")
    mean = x.mean(axis=axis, keepdims=True)
    extra = list(x.shape)
    extra[axis] = size - x.shape[axis]
    return np.concatenate([x, np.broadcast_to(mean, extra)], axis=axis)
  return dataclasses.replace(source, to_ours=to_ours)


def load_pretrained(model_config, params: dict, skip: tuple[str, ...] = ()) -> dict:
  """`params` (a fresh init, sharded) with "vit" and/or "decoder" read from the checkpoints
  config.model names (and "projector" too when both name one vision-language checkpoint),
  laid out as the arrays they replace; trees in `skip` (those a workdir initialises next)
  are left alone."""
  params = dict(params)
  vision, language = (model_config.get(k, "") for k in ("vision_checkpoint",
                                                         "language_checkpoint"))
  wanted = [("vit", "vision_checkpoint", vision), ("decoder", "language_checkpoint", language)]
  if vision and vision == language and gpt4v_settings(model_config):
    wanted.append(("projector", "vision_checkpoint", vision))
  for tree, key, path in wanted:
    if not path or tree in skip:
      continue
    ckpt = HFDir(path)
    family = family_of(ckpt.config, f"config.model.{key}={path!r}")
    if family.kind == "vlm":
      sources = dict(family.tree_sources(ckpt.config, tree))
      # Only this tree's tensors are read here: the others' are left for their own trees.
      prefix = {"vit": "vision_tower.", "decoder": "language_model.",
                "projector": "multi_modal_projector."}[tree]
    else:
      sources, prefix = dict(family.sources(ckpt.config)), ""
    ignored = lambda k, c=ckpt.config, p=prefix, f=family: (
        not k.startswith(p) or f.ignored(k, c))
    target = params[tree]
    fresh = []
    if tree == "decoder":
      vocab = int(target["embedding"].shape[0])
      sources[("embedding",)] = _grown(sources[("embedding",)], 0, vocab)
      if ("unembedding",) in sources:
        sources[("unembedding",)] = _grown(sources[("unembedding",)], 1, vocab)
      # Params the checkpoint lacks (a text-to-image decoder's code positions, Flamingo-style
      # cross-attention blocks) keep their fresh values.
      for path_, _ in jax.tree_util.tree_leaves_with_path(target):
        names: ParamPath = tuple(str(getattr(k, "key", k)) for k in path_)
        if names[-1] in _FRESH or names[0].startswith("xattn_"):
          fresh.append(names)
    params[tree] = load_params(ckpt, sources, target, ignored=ignored, keep=fresh)
    log(f"Initialised {tree} from {path} ({ckpt.config.get('model_type')})"
        + (f"; {len(fresh)} params it lacks as initialised here" if fresh else "") + ".")
  return params
