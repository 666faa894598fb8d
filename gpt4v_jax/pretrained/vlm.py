"""Whole vision-language checkpoints: LLaVA-1.5 (`LlavaForConditionalGeneration`) and
PaliGemma (`PaliGemmaForConditionalGeneration`) as our `GPT4V`.

Both are a vision tower, a projector and a decoder, which our model has: the tower and the
decoder are read by their own families under the checkpoint's prefixes, and what differs
between the two becomes GPT4V settings:

  LLaVA-1.5   the tower's hidden states of `vision_feature_layer` (-2: the penultimate
              layer, no final norm), its class token dropped ("default" feature selection);
              projector Linear-GELU(exact)-Linear with biases; every token causal
              (`causal_prefix`).
  PaliGemma   SigLIP's last_hidden_state; projector one Linear with bias; image and prefix
              tokens attend to each other, the suffix is causal (our prefix-LM). Its image
              features are divided by sqrt(d) and the decoder's input multiplied by it: the
              same tokens (up to rounding), as our decoder scales only text embeddings.

Image tokens lead the sequence (PaliGemma's own placement; LLaVA's template puts "USER: "
before the image, which a model finetuned here sees at the start instead).
"""
import dataclasses
from typing import Any

import numpy as np

from gpt4v_jax.models import activations
# The package imports this module only lazily (in family_of), so no cycle.
from gpt4v_jax.pretrained import family_of
from gpt4v_jax.pretrained.families import ParamPath, Source, UnsupportedCheckpoint


def _family(config: dict, kind: str, where: str):
  """The `kind` ("vision" / "language") family that reads sub-config `where` of a
  vision-language config.json (its "vision_config" / "text_config")."""
  try:
    family = family_of(config, f"config.json {where}")
  except UnsupportedCheckpoint:
    family = None
  if family is None or family.kind != kind:
    raise UnsupportedCheckpoint(f"config.json {where}.model_type={config.get('model_type')!r}: "
                                f"not a supported {kind} model.")
  return family


def _linear(weight: str, bias: str, tree: tuple[str, ...]) -> dict[ParamPath, Source]:
  """A torch Linear ([out, in] weight, bias) as our Dense (kernel [in, out], bias)."""
  return {tree + ("kernel",): Source((weight,), lambda w: np.ascontiguousarray(w.T),
                                     lambda k: (np.ascontiguousarray(k.T),)),
          tree + ("bias",): Source((bias,), lambda b: b, lambda b: (b,))}


class VisionLanguage:
  """The family of LLaVA and PaliGemma checkpoints (see the module docstring)."""
  kind = "vlm"
  model_types = ("llava", "paligemma")

  def _vision(self, hf_config: dict) -> tuple[Any, dict]:
    """(vision family, the tower's config as our module reads it)."""
    vc = dict(hf_config["vision_config"])
    family = _family(vc, "vision", "vision_config")
    if hf_config["model_type"] == "llava":
      layer = hf_config.get("vision_feature_layer", -2)
      if not isinstance(layer, int):
        raise UnsupportedCheckpoint("config.json vision_feature_layer: a list of layers is "
                                    "not supported; one layer index is.")
      depth = vc["num_hidden_layers"]
      vc["num_hidden_layers"] = depth + 1 + layer if layer < 0 else layer
      strategy = hf_config.get("vision_feature_select_strategy", "default")
      if strategy != "default":
        raise UnsupportedCheckpoint(f"config.json vision_feature_select_strategy={strategy!r}:"
                                    " only 'default' (patch tokens, class token dropped) is "
                                    "supported.")
      if vc.get("model_type") not in ("clip_vision_model",):
        raise UnsupportedCheckpoint(f"config.json vision_config.model_type="
                                    f"{vc.get('model_type')!r}: LLaVA checkpoints are read with "
                                    "CLIP towers (LLaVA-1.5's).")
    return family, vc

  def _language(self, hf_config: dict) -> tuple[Any, dict]:
    tc = dict(hf_config["text_config"])
    return _family(tc, "language", "text_config"), tc

  def vision_module(self, hf_config: dict, **overrides):
    family, vc = self._vision(hf_config)
    return family.module(vc, **overrides)

  def language_module(self, hf_config: dict, **overrides):
    family, tc = self._language(hf_config)
    return family.module(tc, **overrides)

  def gpt4v_settings(self, hf_config: dict) -> dict[str, Any]:
    """GPT4V's projector and attention settings for this checkpoint."""
    if hf_config["model_type"] == "llava":
      if not hf_config.get("multimodal_projector_bias", True):
        raise UnsupportedCheckpoint("config.json multimodal_projector_bias=false: our "
                                    "projector has biases.")
      act = hf_config.get("projector_hidden_act", "gelu")
      names = activations.HF_NAMES
      if act not in names:
        raise UnsupportedCheckpoint(f"config.json projector_hidden_act={act!r} is not "
                                    f"supported; supported: {sorted(names)}.")
      return dict(projector_kind="mlp", projector_activation=names[act], causal_prefix=True)
    text_width = hf_config["text_config"]["hidden_size"]
    if hf_config.get("projection_dim", text_width) != text_width:
      raise UnsupportedCheckpoint(f"config.json projection_dim={hf_config['projection_dim']} "
                                  f"differs from the decoder's hidden_size={text_width}.")
    return dict(projector_kind="linear", causal_prefix=False)

  def module(self, hf_config: dict, **overrides):
    from gpt4v_jax.models.gpt4v import GPT4V  # pylint: disable=import-outside-toplevel
    from gpt4v_jax.pretrained.compose import as_decoder  # pylint: disable=import-outside-toplevel
    return GPT4V(vit=self.vision_module(hf_config, **overrides),
                 decoder=as_decoder(self.language_module(hf_config, **overrides)),
                 **self.gpt4v_settings(hf_config))

  def tree_sources(self, hf_config: dict, tree: str) -> dict[ParamPath, Source]:
    """The Sources of one of our top-level trees ("vit", "projector", "decoder"), paths
    relative to it."""
    if tree == "vit":
      family, vc = self._vision(hf_config)
      return {p: dataclasses.replace(s, keys=tuple("vision_tower." + k for k in s.keys))
              for p, s in family.sources(vc).items()}
    if tree == "decoder":
      family, tc = self._language(hf_config)
      return {p: dataclasses.replace(s, keys=tuple("language_model." + k for k in s.keys))
              for p, s in family.sources(tc).items()}
    if hf_config["model_type"] == "llava":
      return {**_linear("multi_modal_projector.linear_1.weight",
                        "multi_modal_projector.linear_1.bias", ("fc1",)),
              **_linear("multi_modal_projector.linear_2.weight",
                        "multi_modal_projector.linear_2.bias", ("fc2",))}
    return _linear("multi_modal_projector.linear.weight", "multi_modal_projector.linear.bias",
                   ("linear",))

  def sources(self, hf_config: dict) -> dict[ParamPath, Source]:
    return {(tree,) + p: s for tree in ("vit", "projector", "decoder")
            for p, s in self.tree_sources(hf_config, tree).items()}

  def ignored(self, key: str, hf_config: dict) -> bool:
    """The towers' own unread tensors (their families say), and with a feature layer below
    the top, the layers above it and the final norm."""
    if key.startswith("vision_tower."):
      rest, vc = key[len("vision_tower."):], hf_config["vision_config"]
      return _family(vc, "vision", "vision_config").ignored(rest, vc) or (
          hf_config["model_type"] == "llava" and _above_feature_layer(
              rest, self._vision(hf_config)[1]["num_hidden_layers"]))
    if key.startswith("language_model."):
      tc = hf_config["text_config"]
      return _family(tc, "language", "text_config").ignored(key[len("language_model."):], tc)
    return False


def _above_feature_layer(key: str, depth: int) -> bool:
  """Whether a CLIP tower tensor belongs past the feature layer (layers >= depth, the final
  norm): LLaVA never runs them."""
  if key.startswith("vision_model.post_layernorm."):
    return True
  prefix = "vision_model.encoder.layers."
  if key.startswith(prefix):
    return int(key[len(prefix):].split(".")[0]) >= depth
  return False


FAMILIES = (VisionLanguage(),)
