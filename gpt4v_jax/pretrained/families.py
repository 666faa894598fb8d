"""How a Hugging Face checkpoint family maps onto this codebase's own Linen modules.

A family (one per `config.json` "model_type" group: vit, clip, siglip, gpt2, llama, gemma, ...)
says two things, both from the checkpoint's config.json alone (nothing is read or built):

  module(hf_config, **overrides) -> an unbound Linen module of ours (`ViT`, or a `Decoder`
      subclass that takes token ids) with the architecture switches the config asks for;
      overrides are our own settings that do not change the numbers (dtype, remat,
      scan_layers) and go through to the module.
  sources(hf_config) -> {our param path: Source}: for every leaf of the module's params
      (unscanned layout: `block_{i}`), which checkpoint tensors it is made of and how.

Both raise `UnsupportedCheckpoint` naming the config key for anything they cannot represent
exactly (an unknown activation, a rope_scaling type, ...), before anything is read.

The loader (`gpt4v_jax.pretrained.load_hf`) reads only the tensors `sources` names, one at a
time, checks every shape against the module's, and refuses a checkpoint with tensors that no
source uses unless the family declares them `ignored` (e.g. a text tower next to the vision
tower in a full CLIP checkpoint).
"""
import dataclasses
from typing import Any, Callable, Protocol

import numpy as np

ParamPath = tuple[str, ...]


class UnsupportedCheckpoint(ValueError):
  """A checkpoint or option this codebase cannot represent exactly."""


@dataclasses.dataclass(frozen=True)
class Source:
  """One of our param leaves, made of checkpoint tensors.

  keys: the checkpoint tensor names, as a standalone model of the family saves them with
    `save_pretrained` (e.g. "model.layers.0.self_attn.q_proj.weight").
  to_ours: (*tensors in keys' order, as numpy arrays) -> our array (numpy), e.g. a transpose
    and reshape of a torch Linear's [out, in] weight into our [in, heads, head_dim] kernel.
  to_hf: the inverse: our array -> a tuple of the checkpoint tensors, in keys' order
    (Hugging Face export; `to_hf(to_ours(*ts))` equals `ts` exactly).
  """
  keys: tuple[str, ...]
  to_ours: Callable[..., np.ndarray]
  to_hf: Callable[[np.ndarray], tuple[np.ndarray, ...]]


@dataclasses.dataclass(frozen=True)
class Part(Source):
  """A Source that is one slice of a fused checkpoint tensor (GPT-2's c_attn holds query, key
  and value side by side). `to_ours` takes the whole tensor; `to_hf` gives this part's slice
  only: the checkpoint tensor is the concatenation along `axis` of its `count` parts in
  `index` order (`hf_tensors` joins them)."""
  index: int = 0
  count: int = 1
  axis: int = -1


def hf_tensors(sources: dict[ParamPath, Source], leaf) -> dict[str, np.ndarray]:
  """{checkpoint tensor name: array}: every Source's `to_hf` of `leaf(path)` (our array at
  that param path), the slices of `Part`s concatenated into their fused tensor. The exact
  inverse of reading the sources (`params_from`)."""
  tensors: dict[str, np.ndarray] = {}
  parts: dict[str, dict[int, tuple[Part, np.ndarray]]] = {}
  for path, source in sources.items():
    pieces = source.to_hf(np.asarray(leaf(path)))
    for key, x in zip(source.keys, pieces):
      if isinstance(source, Part):
        parts.setdefault(key, {})[source.index] = (source, x)
      else:
        tensors[key] = x
  for key, by_index in parts.items():
    part = next(iter(by_index.values()))[0]
    if sorted(by_index) != list(range(part.count)):
      raise ValueError(f"{key}: parts {sorted(by_index)} of {part.count} are mapped; a fused "
                       "tensor needs all of them.")
    tensors[key] = np.concatenate([by_index[i][1] for i in range(part.count)], axis=part.axis)
  return tensors


def same(key: str) -> Source:
  """A tensor used as it is (norm scales, biases, embedding tables)."""
  return Source((key,), lambda t: t, lambda x: (x,))


class Family(Protocol):
  """See the module docstring."""
  kind: str  # "vision", "language" or "vlm" (a whole vision-language checkpoint).
  model_types: tuple[str, ...]  # config.json "model_type" values this family reads.

  def module(self, hf_config: dict[str, Any], **overrides) -> Any:
    ...

  def sources(self, hf_config: dict[str, Any]) -> dict[ParamPath, Source]:
    ...

  def ignored(self, key: str, hf_config: dict[str, Any]) -> bool:
    """Whether a checkpoint tensor that no source reads may be left unread, for the
    checkpoint whose config.json is `hf_config` (some families' answer depends on it)."""
    ...


def params_from(sources: dict[ParamPath, Source], read: Callable[[str], np.ndarray]) -> dict:
  """Our nested params dict (numpy leaves, unscanned layout) from `sources`, reading each
  checkpoint tensor with `read(key)`. The loader's unsharded core; handy in tests."""
  params: dict = {}
  for path, source in sources.items():
    node = params
    for name in path[:-1]:
      node = node.setdefault(name, {})
    node[path[-1]] = source.to_ours(*(read(key) for key in source.keys))
  return params
