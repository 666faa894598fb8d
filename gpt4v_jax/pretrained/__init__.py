"""Pretrained Hugging Face checkpoints as this codebase's own Linen modules.

  module, params = load_hf(path)                  # a local HF directory, nothing downloaded
  module.apply({"params": params}, x)

A vision tower (ViT, CLIP, SigLIP) takes the processor's pixel_values laid out
[batch, H, W, 3] and returns last_hidden_state [batch, tokens, width]; a language model
(GPT-2, Llama/Mistral/Qwen2/SmolLM2, Gemma) takes token ids [batch, length] and returns
logits [batch, length, vocab]. `families.py` says how a family maps onto our modules,
`hf_dir.py` reads the directory; this module checks the two against each other and streams
the tensors, one at a time, into arrays sharded over a mesh.
"""
import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gpt4v_jax import sharding
from gpt4v_jax.pretrained.families import Family, ParamPath, Source, UnsupportedCheckpoint
from gpt4v_jax.pretrained.hf_dir import CheckpointError, HFDir

__all__ = ["load_hf", "family_of", "load_params", "target_params", "CheckpointError",
           "UnsupportedCheckpoint"]


def _families() -> tuple[Family, ...]:
  # pylint: disable-next=import-outside-toplevel
  from gpt4v_jax.pretrained import language, vision, vlm
  return tuple(vision.FAMILIES) + tuple(language.FAMILIES) + tuple(vlm.FAMILIES)


def family_of(hf_config: dict[str, Any], path: str = "") -> Family:
  """The family that reads a config.json's "model_type"."""
  model_type = hf_config.get("model_type")
  for family in _families():
    if model_type in family.model_types:
      return family
  known = sorted(t for f in _families() for t in f.model_types)
  raise UnsupportedCheckpoint(f"{path or 'config.json'}: model_type {model_type!r} is not "
                              f"supported; supported: {', '.join(known)}.")


def load_hf(path: str, *, mesh: jax.sharding.Mesh | None = None, rules=None,
            dtype: str | None = None, **overrides) -> tuple[nn.Module, dict]:
  """Loads a local Hugging Face model directory into our module.

  Args:
    path: a directory with config.json and model.safetensors (or the shards of
      model.safetensors.index.json).
    mesh: where the params go, sharded by their logical axis names under `rules` (default
      `sharding.DEFAULT_RULES`); default: the first device, unsharded.
    dtype: params and compute dtype ("bfloat16", ...); default float32 params computing in
      float32.
    overrides: module settings that do not change the result (remat, scan_layers); a
      SigLIP tower's head="map" ends it in its attention-pooling head (pooler_output).

  Returns:
    (unbound module, params): `module.apply({"params": params}, x)`, see the module
    docstring.

  Raises:
    UnsupportedCheckpoint for a model_type or option our modules cannot represent exactly;
    CheckpointError for a missing, unexpected, misshapen or non-float tensor, naming it and
    its file. Both before any tensor's data is read where the headers tell.
  """
  ckpt = HFDir(path)
  family = family_of(ckpt.config, f"{ckpt.path}/config.json")
  if dtype is not None:
    overrides["dtype"] = jnp.dtype(dtype)
  module = family.module(ckpt.config, **overrides)
  target = target_params(_abstract_params(module), mesh, rules, dtype)
  # SigLIP's pooling head is read only when the module has it.
  options = {"head": overrides["head"]} if overrides.get("head") else {}
  params = load_params(ckpt, family.sources(ckpt.config, **options), target,
                       ignored=lambda key: family.ignored(key, ckpt.config))
  return module, params


def _abstract_params(module: nn.Module) -> dict:
  """The module's params as boxed ShapeDtypeStructs (logical names kept), without computing
  anything: a vision tower is traced on one image, a language model on one token."""
  # pylint: disable-next=import-outside-toplevel
  from gpt4v_jax.models import gpt4v, vit
  if isinstance(module, gpt4v.GPT4V):
    size = module.vit.image_size
    x = (jnp.zeros((1, size, size, 3), jnp.float32), jnp.zeros((1, 1), jnp.int32),
         jnp.zeros((1, 1), jnp.int32), jnp.ones((1, 1), bool))
  elif isinstance(module, vit.ViT):
    x = (jnp.zeros((1, module.image_size, module.image_size, 3), jnp.float32),)
  else:
    x = (jnp.zeros((1, 1), jnp.int32),)
  return jax.eval_shape(module.init, jax.random.PRNGKey(0), *x)["params"]


def _path_names(path) -> ParamPath:
  return tuple(str(getattr(k, "key", k)) for k in path)


def target_params(abstract: dict, mesh: jax.sharding.Mesh | None = None, rules=None,
                  dtype=None) -> dict:
  """ShapeDtypeStructs with shardings for `load_params`, from boxed abstract params (logical
  names kept, as `jax.eval_shape(module.init, ...)` gives): sharded over `mesh` by `rules`
  (default `sharding.DEFAULT_RULES`), or on the first device without a mesh."""
  if mesh is None:
    device = jax.local_devices()[0]
    shardings = jax.tree.map(lambda _: jax.sharding.SingleDeviceSharding(device),
                             nn.unbox(abstract))
  else:
    shardings = sharding.logical_to_shardings(
        abstract, mesh, sharding.DEFAULT_RULES if rules is None else rules)
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, jnp.dtype(dtype or x.dtype), sharding=s),
      nn.unbox(abstract), shardings)


def load_params(ckpt: HFDir, sources: dict[ParamPath, Source], target: dict, *,
                ignored=lambda key: False, keep: Sequence[ParamPath] = ()) -> dict:
  """Params like `target` (a tree of ShapeDtypeStructs or arrays, each with a sharding),
  each leaf made by its Source from `ckpt`'s tensors, cast to the target's dtype and placed
  with its sharding.

  Sources are in the unscanned layout (`block_{i}`); a scanned leaf (`blocks`, a leading
  layers axis) is filled layer by layer from the block_{i} sources. A host holds one
  checkpoint tensor at a time beyond its devices' own shards. Leaves in `keep` (arrays) are
  returned as they are.
  """
  leaves, treedef = jax.tree_util.tree_flatten_with_path(target)
  keep = set(keep)
  plans = [("keep", []) if _path_names(path) in keep else
           _plan(_path_names(path), leaf, sources, ckpt) for path, leaf in leaves]

  used = {p for plan in plans for p in plan[1]}
  unused = sorted(set(sources) - used)
  if unused:
    raise CheckpointError(f"{ckpt.path}: our module has no param for "
                          f"{'/'.join(unused[0])}, which the "
                          f"{ckpt.config.get('model_type')} mapping fills.")
  needed = {key for p in used for key in sources[p].keys}
  missing = sorted(k for k in needed if k not in ckpt)
  if missing and all("." in k and k.split(".", 1)[1] in ckpt for k in missing):
    # Saved from the base model (GPT2Model, LlamaModel; the original GPT-2 release): the
    # same names without the LM head's wrapper prefix ("transformer.", "model.").
    strip = lambda k: k.split(".", 1)[1] if k in missing else k
    sources = {p: dataclasses.replace(s, keys=tuple(map(strip, s.keys)))
               for p, s in sources.items()}
    needed = {key for p in used for key in sources[p].keys}
    missing = []
  if missing:
    raise CheckpointError(f"{ckpt.path}: missing tensor {missing[0]}"
                          + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                          + f"; the {ckpt.config.get('model_type')} config.json asks for it.")
  unexpected = sorted(k for k in ckpt.keys() if k not in needed and not ignored(k))
  if unexpected:
    raise CheckpointError(f"{ckpt.file_of(unexpected[0])}: unexpected tensor {unexpected[0]}"
                          + (f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1
                             else "")
                          + f": nothing in the {ckpt.config.get('model_type')} model built "
                          "from config.json reads it (is config.json from this checkpoint?).")
  for key in sorted(needed):
    _, key_dtype = ckpt.info(key)
    if not jnp.issubdtype(key_dtype, jnp.floating):  # numpy alone knows no bfloat16.
      raise CheckpointError(f"{key} in {ckpt.file_of(key)} has dtype {key_dtype}; a weight "
                            "must be floating point.")
  arrays = [_place(plan, leaf, sources, ckpt) for plan, (_, leaf) in zip(plans, leaves)]
  return jax.tree.unflatten(treedef, arrays)


def _plan(path: ParamPath, leaf, sources, ckpt) -> tuple[str, list[ParamPath]]:
  """("one", [path]) for a leaf with its own Source; ("layers", [block_0 path, ...]) for a
  scanned leaf stacked from per-layer Sources."""
  if path in sources:
    return "one", [path]
  if path[0] == "blocks":
    layers = [(f"block_{i}",) + path[1:] for i in range(leaf.shape[0])]
    if all(p in sources for p in layers):
      return "layers", layers
  raise CheckpointError(f"{ckpt.path}: nothing in the {ckpt.config.get('model_type')} "
                        f"checkpoint mapping fills our param {'/'.join(path)}.")


def _make(source: Source, ckpt: HFDir, shape, param_path: ParamPath) -> np.ndarray:
  """One of our arrays from its checkpoint tensors; its shape checked against ours."""
  x = np.asarray(source.to_ours(*(ckpt.read(key) for key in source.keys)))
  if x.shape != tuple(shape):
    keys = ", ".join(f"{k} {list(ckpt.info(k)[0])}" for k in source.keys)
    raise CheckpointError(f"{ckpt.file_of(source.keys[0])}: {keys} makes our "
                          f"{'/'.join(param_path)} of shape {list(x.shape)}, but config.json "
                          f"asks for {list(shape)}.")
  return x


def _place(plan, leaf, sources, ckpt) -> jax.Array:
  """The leaf as a sharded jax.Array: each distinct device slice is filled on the host from
  one checkpoint tensor (or one layer's) at a time, then copied to its devices."""
  kind, paths = plan
  if kind == "keep":
    return leaf
  shard, dtype = leaf.sharding, np.dtype(leaf.dtype)
  # Devices that hold the same slice share one host buffer.
  by_slice: dict[tuple, list] = {}
  for device, index in shard.addressable_devices_indices_map(leaf.shape).items():
    key = tuple((s.start, s.stop, s.step) for s in index)
    by_slice.setdefault(key, [index, []])[1].append(device)
  buffers = {key: np.empty(tuple(len(range(*s.indices(n))) for s, n in zip(index, leaf.shape)),
                           dtype)
             for key, (index, _) in by_slice.items()}
  if kind == "one":
    x = _make(sources[paths[0]], ckpt, leaf.shape, paths[0])
    for key, (index, _) in by_slice.items():
      buffers[key][...] = x[index]
  else:
    for i, path in enumerate(paths):
      x = _make(sources[path], ckpt, leaf.shape[1:], path)
      for key, (index, _) in by_slice.items():
        layers = range(*index[0].indices(leaf.shape[0]))
        if i in layers:
          buffers[key][layers.index(i)] = x[index[1:]]
  arrays = [jax.device_put(buffers[key], device)
            for key, (_, devices) in by_slice.items() for device in devices]
  return jax.make_array_from_single_device_arrays(leaf.shape, shard, arrays)
