"""Hugging Face vision towers -> our `ViT`: ViT, CLIP and SigLIP (see families.py).

  family          config.json model_type                  our ViT switches
  VIT             vit (ViTModel)                          class_token, activation="gelu",
                                                          norm_eps=1e-12
  CLIP            clip_vision_model (CLIPVisionModel),    class_token, patch_bias=False,
                  clip (CLIPModel: its vision tower)      pre_norm, final_norm=False,
                                                          activation="quick_gelu", norm_eps=1e-5
  SIGLIP          siglip_vision_model (SiglipVisionModel), our defaults; head="map" keeps the
                  siglip (SiglipModel: its vision tower)  attention-pooling head

`module(cfg).apply({"params": params}, x)` with x the processor's pixel_values laid out
[batch, H, W, 3] returns transformers' `last_hidden_state` [batch, tokens, width] (CLIP's
without its post-layernorm, as transformers'; its class token first). SIGLIP's
`module(cfg, head="map")` with `sources(cfg, head="map")` returns `pooler_output` [batch, width]
instead. `preprocess_from(dir)` gives the checkpoint's own image preprocessing.

Checkpoint layouts: a torch Linear weight is [out, in] (ours [in, out]; attention kernels
[embed, heads, head_dim] and [heads, head_dim, embed]); the patch embedding is a Conv2d weight
[width, 3, p, p] (ours a Dense over each patch flattened row-major as (p, p, 3)).
"""
import json
import os
from typing import Any

import numpy as np

from gpt4v_jax.data import images
from gpt4v_jax.models import activations
from gpt4v_jax.models.vit import ViT
from gpt4v_jax.pretrained.families import ParamPath, Source, UnsupportedCheckpoint, same

# Our settings that do not change what the checkpoint computes (families.py).
OVERRIDES = ("dtype", "remat", "scan_layers", "dropout")

_ACTIVATIONS = activations.HF_NAMES  # transformers' hidden_act -> ours.


# ----------------------------------------------------------------------------
# Tensor layouts: each pair is (to_ours, to_hf), exact inverses of each other.
# ----------------------------------------------------------------------------


def _c(x: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(x)


def _linear(key: str) -> Source:
  """torch Linear weight [out, in] -> our Dense kernel [in, out]."""
  return Source((key,), lambda w: _c(w.T), lambda x: (_c(x.T),))


def _qkv(key: str, heads: int) -> Source:
  """Linear weight [heads * head_dim, embed] -> [embed, heads, head_dim]."""
  return Source((key,), lambda w: _c(w.T.reshape(w.shape[1], heads, -1)),
                lambda x: (_c(x.reshape(x.shape[0], -1).T),))


def _qkv_bias(key: str, heads: int) -> Source:
  """Linear bias [heads * head_dim] -> [heads, head_dim]."""
  return Source((key,), lambda b: b.reshape(heads, -1), lambda x: (x.reshape(-1),))


def _attn_out(key: str, heads: int) -> Source:
  """Linear weight [embed, heads * head_dim] -> [heads, head_dim, embed]."""
  return Source((key,), lambda w: _c(w.T.reshape(heads, -1, w.shape[0])),
                lambda x: (_c(x.reshape(-1, x.shape[-1]).T),))


def _patch(key: str) -> Source:
  """Conv2d weight [width, 3, p, p] -> Dense kernel [p * p * 3, width] ((row, col, channel)
  flattening, as ViT.__call__ cuts patches)."""
  def to_ours(w):
    return _c(w.transpose(2, 3, 1, 0).reshape(-1, w.shape[0]))

  def to_hf(x):
    p = int(round((x.shape[0] // 3) ** 0.5))
    return (_c(x.reshape(p, p, 3, x.shape[1]).transpose(3, 2, 0, 1)),)
  return Source((key,), to_ours, to_hf)


def _squeeze(key: str, lead: int) -> Source:
  """Drops `lead` leading unit axes (ViT's cls_token [1, 1, w] -> [w], its position table
  [1, n, w] -> [n, w], SigLIP's probe [1, 1, w] -> [w]); to_hf puts them back."""
  return Source((key,), lambda t: t.reshape(t.shape[lead:]),
                lambda x: (x.reshape((1,) * lead + x.shape),))


def _fused_qkv(key: str, heads: int) -> Source:
  """torch MultiheadAttention in_proj_weight [3 * embed, embed] (q; k; v rows) -> our
  MAPHead qkv_kernel [embed, 3, heads, head_dim]."""
  return Source((key,), lambda w: _c(w.reshape(3, heads, -1, w.shape[1]).transpose(3, 0, 1, 2)),
                lambda x: (_c(x.transpose(1, 2, 3, 0).reshape(-1, x.shape[0])),))


def _fused_qkv_bias(key: str, heads: int) -> Source:
  """in_proj_bias [3 * embed] -> [3, heads, head_dim]."""
  return Source((key,), lambda b: b.reshape(3, heads, -1), lambda x: (x.reshape(-1),))


def _norm(path: ParamPath, key: str) -> dict[ParamPath, Source]:
  """A torch LayerNorm (weight, bias) -> our (scale, bias)."""
  return {path + ("scale",): same(key + ".weight"), path + ("bias",): same(key + ".bias")}


def _dense(path: ParamPath, key: str) -> dict[ParamPath, Source]:
  """A torch Linear (weight, bias) -> our Dense (kernel, bias)."""
  return {path + ("kernel",): _linear(key + ".weight"), path + ("bias",): same(key + ".bias")}


# ----------------------------------------------------------------------------
# Reading config.json.
# ----------------------------------------------------------------------------


def _square(name: str, value: Any) -> int:
  """An int, or an [n, n] pair, as transformers allows for image_size and patch_size."""
  if isinstance(value, (list, tuple)):
    if len(value) == 2 and value[0] == value[1]:
      value = value[0]
    else:
      raise UnsupportedCheckpoint(f"{name}={value!r}: only square sizes are supported.")
  if not isinstance(value, int) or value < 1:
    raise UnsupportedCheckpoint(f"{name}={value!r}: expected a positive int.")
  return value


class _Tower:
  """What the three families share: config reading, checks and the encoder blocks' keys.

  Subclasses set model_types, full_type (the whole-model model_type whose "vision_config"
  holds the tower), defaults (transformers' config defaults: config.json leaves out values
  equal to them), switches (our ViT attributes), and write `_embeddings` and `_layer`.
  """
  kind = "vision"
  model_types: tuple[str, ...] = ()
  full_type: str | None = None
  defaults: dict[str, Any] = {}
  switches: dict[str, Any] = {}
  ignored_prefixes: tuple[str, ...] = ()

  def settings(self, hf_config: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """(the tower's config with transformers' defaults filled in, the prefix error messages
    give its keys, e.g. "vision_config."). Raises UnsupportedCheckpoint."""
    model_type = hf_config.get("model_type")
    if model_type not in self.model_types:
      raise UnsupportedCheckpoint(
          f"model_type={model_type!r} is not a {type(self).__name__[1:]} checkpoint; this "
          f"family reads model_type in {self.model_types}.")
    where = ""
    if model_type == self.full_type:
      hf_config, where = hf_config.get("vision_config") or {}, "vision_config."
    cfg = {**self.defaults, **hf_config}

    def bad(key, fix):
      raise UnsupportedCheckpoint(f"config.json {where}{key}={cfg[key]!r}: {fix}.")

    if cfg["hidden_act"] not in _ACTIVATIONS:
      bad("hidden_act", f"supported activations are {sorted(_ACTIVATIONS)}")
    if cfg["num_channels"] != 3:
      bad("num_channels", "only RGB (3-channel) towers are supported")
    cfg["image_size"] = _square(where + "image_size", cfg["image_size"])
    cfg["patch_size"] = _square(where + "patch_size", cfg["patch_size"])
    if cfg["image_size"] % cfg["patch_size"]:
      bad("image_size", f"not a multiple of patch_size={cfg['patch_size']} (transformers "
          "drops the remainder; our ViT needs whole patches)")
    if cfg["hidden_size"] % cfg["num_attention_heads"]:
      bad("num_attention_heads", f"does not divide hidden_size={cfg['hidden_size']}")
    self._check(cfg, bad)
    return cfg, where

  def _check(self, cfg, bad):
    """Family-specific refusals."""

  def module(self, hf_config: dict[str, Any], **overrides) -> ViT:
    """Our unbound ViT for the checkpoint; see the module docstring and OVERRIDES."""
    cfg, _ = self.settings(hf_config)
    extra = self._module_options(cfg, overrides)
    unknown = sorted(set(overrides) - set(OVERRIDES))
    if unknown:
      raise ValueError(f"{type(self).__name__[1:]}.module: {unknown} would change what the "
                       f"checkpoint computes; only {OVERRIDES} may be overridden.")
    return ViT(width=cfg["hidden_size"], depth=cfg["num_hidden_layers"],
               mlp_dim=cfg["intermediate_size"], num_heads=cfg["num_attention_heads"],
               patch_size=cfg["patch_size"], image_size=cfg["image_size"],
               activation=_ACTIVATIONS[cfg["hidden_act"]], norm_eps=float(cfg["layer_norm_eps"]),
               **self.switches, **extra, **overrides)

  def _module_options(self, cfg, overrides) -> dict[str, Any]:
    """Pops family-specific options (SigLIP's head) from overrides into ViT attributes."""
    return {}

  def sources(self, hf_config: dict[str, Any]) -> dict[ParamPath, Source]:
    """{our param path: Source} for every leaf of `module(hf_config)`'s params."""
    cfg, _ = self.settings(hf_config)
    heads = cfg["num_attention_heads"]
    out = self._embeddings(cfg)
    for i in range(cfg["num_hidden_layers"]):
      out.update(self._layer(("block_" + str(i),), i, heads))
    return out

  def ignored(self, key: str, hf_config: dict[str, Any]) -> bool:
    """See families.Family; a tower's unread tensors do not depend on its config."""
    del hf_config
    return key.startswith(self.ignored_prefixes)

  def _embeddings(self, cfg) -> dict[ParamPath, Source]:
    raise NotImplementedError

  def _layer(self, path: ParamPath, i: int, heads: int) -> dict[ParamPath, Source]:
    raise NotImplementedError


def _clip_layer(prefix: str, path: ParamPath, heads: int) -> dict[ParamPath, Source]:
  """CLIP's and SigLIP's encoder layer (same names) -> our Block."""
  attn = path + ("attn",)
  out = {**_norm(path + ("ln_attn",), prefix + "layer_norm1"),
         **_norm(path + ("ln_mlp",), prefix + "layer_norm2"),
         **_dense(path + ("mlp_in",), prefix + "mlp.fc1"),
         **_dense(path + ("mlp_out",), prefix + "mlp.fc2"),
         attn + ("out_kernel",): _attn_out(prefix + "self_attn.out_proj.weight", heads),
         attn + ("out_bias",): same(prefix + "self_attn.out_proj.bias")}
  for ours, theirs in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
    out[attn + (ours + "_kernel",)] = _qkv(f"{prefix}self_attn.{theirs}.weight", heads)
    out[attn + (ours + "_bias",)] = _qkv_bias(f"{prefix}self_attn.{theirs}.bias", heads)
  return out


class _ViT(_Tower):
  """google/vit-* (ViTModel): class token, exact GELU, post-layernorm, LayerNorm eps 1e-12."""
  model_types = ("vit",)
  defaults = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                  intermediate_size=3072, hidden_act="gelu", layer_norm_eps=1e-12,
                  image_size=224, patch_size=16, num_channels=3, qkv_bias=True)
  switches = dict(class_token=True)
  # ViTModel's pooler (Linear + tanh on the class token) is not part of last_hidden_state.
  ignored_prefixes = ("pooler.",)

  def _check(self, cfg, bad):
    if not cfg["qkv_bias"]:
      bad("qkv_bias", "our attention always has q/k/v biases")

  def _embeddings(self, cfg):
    return {("embedding", "kernel"): _patch("embeddings.patch_embeddings.projection.weight"),
            ("embedding", "bias"): same("embeddings.patch_embeddings.projection.bias"),
            ("cls_token",): _squeeze("embeddings.cls_token", 2),
            ("pos_embedding",): _squeeze("embeddings.position_embeddings", 1),
            **_norm(("ln_final",), "layernorm")}

  def _layer(self, path, i, heads):
    prefix, attn = f"encoder.layer.{i}.", path + ("attn",)
    out = {**_norm(path + ("ln_attn",), prefix + "layernorm_before"),
           **_norm(path + ("ln_mlp",), prefix + "layernorm_after"),
           **_dense(path + ("mlp_in",), prefix + "intermediate.dense"),
           **_dense(path + ("mlp_out",), prefix + "output.dense"),
           attn + ("out_kernel",): _attn_out(prefix + "attention.output.dense.weight", heads),
           attn + ("out_bias",): same(prefix + "attention.output.dense.bias")}
    for name in ("query", "key", "value"):
      out[attn + (name + "_kernel",)] = _qkv(f"{prefix}attention.attention.{name}.weight", heads)
      out[attn + (name + "_bias",)] = _qkv_bias(f"{prefix}attention.attention.{name}.bias", heads)
    return out


class _CLIP(_Tower):
  """openai/clip-* vision tower: class token (a bare [width] vector), no patch bias,
  pre-layernorm, quick GELU; last_hidden_state has no post-layernorm (transformers applies it
  to the pooled class token only)."""
  model_types = ("clip_vision_model", "clip")
  full_type = "clip"
  defaults = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                  num_attention_heads=12, num_channels=3, image_size=224, patch_size=32,
                  hidden_act="quick_gelu", layer_norm_eps=1e-5)
  switches = dict(class_token=True, patch_bias=False, pre_norm=True, final_norm=False)
  ignored_prefixes = ("vision_model.post_layernorm.", "visual_projection.", "text_model.",
                      "text_projection.", "logit_scale")

  def _embeddings(self, cfg):
    return {("embedding", "kernel"): _patch("vision_model.embeddings.patch_embedding.weight"),
            ("cls_token",): same("vision_model.embeddings.class_embedding"),
            ("pos_embedding",): same("vision_model.embeddings.position_embedding.weight"),
            **_norm(("ln_pre",), "vision_model.pre_layrnorm")}  # (sic: transformers' name)

  def _layer(self, path, i, heads):
    return _clip_layer(f"vision_model.encoder.layers.{i}.", path, heads)


class _SigLIP(_Tower):
  """google/siglip-* vision tower: our ViT's defaults exactly (no class token, patch bias,
  tanh GELU, post-layernorm, eps 1e-6); the attention-pooling head is an option."""
  model_types = ("siglip_vision_model", "siglip")
  full_type = "siglip"
  defaults = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                  num_attention_heads=12, num_channels=3, image_size=224, patch_size=16,
                  hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, vision_use_head=True)
  switches = {}
  # The head is read only when asked for (head="map"); a text tower is never read.
  ignored_prefixes = ("vision_model.head.", "text_model.", "logit_scale", "logit_bias")

  def _head(self, cfg, head) -> str | None:
    if head not in (None, "map"):
      raise ValueError(f"SIGLIP head={head!r}: expected None (all tokens: last_hidden_state) "
                       "or 'map' (the attention-pooling head: pooler_output).")
    if head and not cfg["vision_use_head"]:
      raise UnsupportedCheckpoint("config.json vision_use_head=False: this checkpoint has no "
                                  "attention-pooling head to load; use head=None.")
    return head

  def _module_options(self, cfg, overrides):
    return dict(head=self._head(cfg, overrides.pop("head", None)))

  def module(self, hf_config: dict[str, Any], head: str | None = None, **overrides) -> ViT:
    """As _Tower.module; head="map" ends in the pooling head (pooler_output)."""
    return super().module(hf_config, head=head, **overrides)

  def sources(self, hf_config: dict[str, Any], head: str | None = None
              ) -> dict[ParamPath, Source]:
    """As _Tower.sources; head="map" adds the pooling head's leaves (pass the same head as
    to `module`)."""
    out = super().sources(hf_config)
    cfg, _ = self.settings(hf_config)
    if self._head(cfg, head):
      heads, prefix = cfg["num_attention_heads"], "vision_model.head."
      out.update({
          ("head", "probe"): _squeeze(prefix + "probe", 2),
          ("head", "qkv_kernel"): _fused_qkv(prefix + "attention.in_proj_weight", heads),
          ("head", "qkv_bias"): _fused_qkv_bias(prefix + "attention.in_proj_bias", heads),
          ("head", "out_kernel"): _attn_out(prefix + "attention.out_proj.weight", heads),
          ("head", "out_bias"): same(prefix + "attention.out_proj.bias"),
          **_norm(("head", "ln"), prefix + "layernorm"),
          **_dense(("head", "mlp_in"), prefix + "mlp.fc1"),
          **_dense(("head", "mlp_out"), prefix + "mlp.fc2")})
    return out

  def _embeddings(self, cfg):
    prefix = "vision_model.embeddings."
    return {("embedding", "kernel"): _patch(prefix + "patch_embedding.weight"),
            ("embedding", "bias"): same(prefix + "patch_embedding.bias"),
            ("pos_embedding",): same(prefix + "position_embedding.weight"),
            **_norm(("ln_final",), "vision_model.post_layernorm")}

  def _layer(self, path, i, heads):
    return _clip_layer(f"vision_model.encoder.layers.{i}.", path, heads)


VIT, CLIP, SIGLIP = _ViT(), _CLIP(), _SigLIP()
FAMILIES = (VIT, CLIP, SIGLIP)


# ----------------------------------------------------------------------------
# Image preprocessing (preprocessor_config.json).
# ----------------------------------------------------------------------------

# image_processor_type (or an older feature_extractor_type) -> (how `size` is resized,
# transformers' default resample, default normalisation). The fast (torchvision) variants
# save the same settings; parity is with the PIL ("slow") processors.
_PROCESSORS = {
    "ViTImageProcessor": ("square", 2, "minus_one_to_one"),
    "ViTFeatureExtractor": ("square", 2, "minus_one_to_one"),
    "SiglipImageProcessor": ("square", 3, "minus_one_to_one"),
    "CLIPImageProcessor": ("shortest_edge", 3, "clip"),
    "CLIPFeatureExtractor": ("shortest_edge", 3, "clip"),
}
# PIL's resample ids, as processors save them.
_RESAMPLES = {0: "nearest", 2: "bilinear", 3: "bicubic"}
_PIL_NAMES = {1: "LANCZOS", 4: "BOX", 5: "HAMMING"}


def preprocess_from(checkpoint_dir: str) -> images.Preprocess:
  """The checkpoint's preprocessor_config.json as our `images.Preprocess`: resolution,
  resize and crop, resample, mean/std, so `images.preprocess(file_bytes, p)` equals the
  transformers processor's pixel_values (transposed to [H, W, 3]).

  Raises FileNotFoundError without a preprocessor_config.json, UnsupportedCheckpoint
  (naming the key) for settings `Preprocess` cannot reproduce.
  """
  path = os.path.join(checkpoint_dir, "preprocessor_config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} does not exist: the checkpoint has no image processor "
                            "settings. Pass an images.Preprocess(size=..., resize=..., "
                            "normalize=...) of your own instead.")
  with open(path) as f:
    cfg = json.load(f)

  def bad(key, fix):
    raise UnsupportedCheckpoint(f"{path}: {key}={cfg.get(key)!r}: {fix}.")

  kind = cfg.get("image_processor_type") or cfg.get("feature_extractor_type") or ""
  kind = kind.removesuffix("Fast")
  if kind not in _PROCESSORS:
    bad("image_processor_type", f"supported processors are {sorted(_PROCESSORS)}")
  geometry, default_resample, default_norm = _PROCESSORS[kind]
  for key in ("do_resize", "do_rescale", "do_normalize"):
    if not cfg.get(key, True):
      bad(key, "our preprocessing always resizes, rescales by 1/255 and normalises")
  if abs(cfg.get("rescale_factor", 1 / 255) - 1 / 255) > 1e-12:
    bad("rescale_factor", "only 1/255 is supported")

  resample = cfg.get("resample", default_resample)
  if resample not in _RESAMPLES:
    bad("resample", f"PIL {_PIL_NAMES.get(resample, resample)} is not supported; "
        f"supported: {_RESAMPLES}")

  mean, std = images.NORMALIZATIONS[default_norm]
  mean, std = cfg.get("image_mean", mean), cfg.get("image_std", std)
  normalize = next((name for name, (m, s) in images.NORMALIZATIONS.items()
                    if np.allclose(m, mean, rtol=0, atol=1e-7)
                    and np.allclose(s, std, rtol=0, atol=1e-7)), None)
  if normalize is None:
    bad("image_mean", f"(with image_std={std}) is none of images.NORMALIZATIONS "
        f"{images.NORMALIZATIONS}")

  size = cfg.get("size", 224)
  if isinstance(size, int):  # Old processors: an int is square (ViT) or the shorter edge.
    size = {"height": size, "width": size} if geometry == "square" else {"shortest_edge": size}
  if "shortest_edge" in size:
    # CLIP: the shorter side to shortest_edge, then the centre crop_size x crop_size.
    side = size["shortest_edge"]
    if not cfg.get("do_center_crop", True):
      bad("do_center_crop", "without the centre crop the output is not square")
    crop = cfg.get("crop_size", {"height": 224, "width": 224})
    crop = {"height": crop, "width": crop} if isinstance(crop, int) else crop
    if (crop.get("height"), crop.get("width")) != (side, side):
      bad("crop_size", f"only a crop equal to size.shortest_edge={side} is supported")
    return images.Preprocess(size=side, resize="resize_crop", resample=_RESAMPLES[resample],
                             normalize=normalize, jpeg_draft=False)
  if size.get("height") != size.get("width") or not size.get("height"):
    bad("size", "only square {height, width} or {shortest_edge} sizes are supported")
  if kind.startswith("CLIP") and cfg.get("do_center_crop", True):
    crop = cfg.get("crop_size", {"height": 224, "width": 224})
    crop = {"height": crop, "width": crop} if isinstance(crop, int) else crop
    if (crop.get("height"), crop.get("width")) != (size["height"], size["width"]):
      bad("crop_size", f"a crop of a {size['height']}x{size['width']} resize is not supported")
  # The whole image squashed to size x size, aspect ignored, as these processors do.
  return images.Preprocess(size=size["height"], resize="squash", resample=_RESAMPLES[resample],
                           normalize=normalize, jpeg_draft=False)
