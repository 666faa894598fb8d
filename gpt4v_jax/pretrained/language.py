"""Hugging Face causal language models as our `Decoder`: GPT-2, the Llama family (Llama 2/3,
Mistral, Qwen2, SmolLM2) and Gemma.

  GPT2, LLAMA, GEMMA      the families (see `families.py`); FAMILIES lists them
  LanguageModel           the module they build: a `Decoder` over token ids
  greedy_generate         greedy decoding with our KV cache

Each family turns config.json into `Decoder` switches (norm kind, biases, activation,
positions, RoPE scaling, embedding and attention scales, sliding window) and maps the
checkpoint's tensors onto our params. torch's Linear stores [out, in], so its weights are
transposed into our kernels ([in, heads, head_dim] for q/k/v, [heads, head_dim, out] for the
attention output, [in, out] for the MLP); GPT-2's Conv1D already stores [in, out] and fuses
q, k and v side by side in `c_attn` (our three params are `Part`s of it). The checkpoint's
(untied) lm_head [vocab, width] is our unembedding transposed.
"""
import dataclasses
import functools
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gpt4v_jax.models import activations
from gpt4v_jax.models.decoder import Decoder
from gpt4v_jax.pretrained.families import Part, Source, UnsupportedCheckpoint, same

_ACTIVATIONS = activations.HF_NAMES


class LanguageModel(Decoder):
  """A `Decoder` that takes token ids: what a language family's `module` builds. Its params
  are exactly the Decoder's (the composed model's "decoder" tree takes them as they are)."""

  def __call__(self, tokens):
    """tokens [batch, length] int -> logits [batch, length, vocab] float32: causal
    attention, positions 0..length-1."""
    b, t = tokens.shape
    positions = jnp.broadcast_to(jnp.arange(t), (b, t))
    mask = jnp.broadcast_to(jnp.tril(jnp.ones((t, t), bool)), (b, t, t))
    logits, _ = super().__call__(self.embed(tokens), positions, mask)
    return logits

  def prefill(self, tokens, cache):
    """Runs a prompt through a fresh cache (`init_cache`): tokens [batch, t] int at slots and
    positions 0..t-1. Returns (logits [batch, t, vocab], cache)."""
    b, t = tokens.shape
    positions = jnp.broadcast_to(jnp.arange(t), (b, t))
    mask = jnp.broadcast_to(jnp.tril(jnp.ones((t, t), bool)), (b, t, t))
    return super().__call__(self.embed(tokens), positions, mask, cache, jnp.int32(0))

  def step(self, token, cache, index):
    """One token per row at slot and position `index` (scalar int, may be traced), attending
    to slots 0..index. token [batch, 1] int. Returns (logits [batch, 1, vocab], cache)."""
    b = token.shape[0]
    slots = jax.tree.leaves(cache)[0].shape[-2]
    positions = jnp.full((b, 1), index, jnp.int32)
    mask = jnp.broadcast_to(jnp.arange(slots) <= index, (b, 1, slots))
    return super().__call__(self.embed(token), positions, mask, cache, index)


def greedy_generate(model: LanguageModel, params, prompt, max_new_tokens: int) -> jax.Array:
  """Greedy decoding with our KV cache: one prefill of the prompt, then one token per step.

  Args:
    model: a `LanguageModel`.
    params: its params (boxed or plain).
    prompt: [batch, length] int token ids (no padding: every row has `length` tokens).
    max_new_tokens: tokens to generate (>= 1); no stop token.

  Returns:
    [batch, max_new_tokens] int32, the argmax token of each step.
  """
  total = prompt.shape[1] + max_new_tokens
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens={max_new_tokens}: expected at least 1.")
  if model.position_kind == "learned" and total > model.max_positions:
    raise ValueError(f"A {prompt.shape[1]}-token prompt and {max_new_tokens} new tokens need "
                     f"{total} positions; the model has max_positions={model.max_positions}.")
  return _greedy(model, nn.unbox(params), jnp.asarray(prompt, jnp.int32), max_new_tokens)


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens"))
def _greedy(model, params, prompt, max_new_tokens):
  b, length = prompt.shape
  variables = {"params": params}
  cache = model.init_cache(b, length + max_new_tokens)
  logits, cache = model.apply(variables, prompt, cache, method=LanguageModel.prefill)
  first = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)

  def one(carry, index):
    token, cache = carry
    logits, cache = model.apply(variables, token[:, None], cache, index,
                                method=LanguageModel.step)
    token = jnp.argmax(logits[:, 0], axis=-1).astype(jnp.int32)
    return (token, cache), token

  # The last token generated is never fed back: max_new_tokens - 1 steps after the prefill.
  _, rest = jax.lax.scan(one, (first, cache), length + jnp.arange(max_new_tokens - 1))
  return jnp.concatenate([first[:, None], rest.T], axis=1)


# --- Sources: checkpoint tensors <-> our params. ---


def _contiguous(*xs):
  return tuple(np.ascontiguousarray(x) for x in xs)


def _linear_in(key, heads, head_dim) -> Source:
  """torch Linear [heads * head_dim, width] -> our projection kernel [width, heads,
  head_dim]."""
  return Source((key,), lambda t: np.ascontiguousarray(t.T).reshape(-1, heads, head_dim),
                lambda x: _contiguous(x.reshape(x.shape[0], -1).T))


def _linear_out(key, heads, head_dim) -> Source:
  """torch Linear [width, heads * head_dim] -> our output kernel [heads, head_dim, width]."""
  return Source((key,), lambda t: np.ascontiguousarray(t.T).reshape(heads, head_dim, -1),
                lambda x: _contiguous(x.reshape(heads * head_dim, -1).T))


def _transposed(key) -> Source:
  """torch Linear [out, in] -> our Dense kernel [in, out] (and lm_head -> unembedding)."""
  return Source((key,), lambda t: np.ascontiguousarray(t.T), lambda x: _contiguous(x.T))


def _heads(key, heads, head_dim) -> Source:
  """A bias [heads * head_dim] -> ours [heads, head_dim]."""
  return Source((key,), lambda t: t.reshape(heads, head_dim), lambda x: (x.reshape(-1),))


# --- Reading config.json. ---


def _need(cfg: dict, key: str):
  if cfg.get(key) is None:
    raise UnsupportedCheckpoint(f"config.json ({cfg.get('model_type')}) has no {key!r}; it "
                                "sets the model's shape.")
  return cfg[key]


def _activation(cfg: dict, key: str, default: str) -> str:
  name = cfg.get(key) or default
  ours = _ACTIVATIONS.get(name)
  if ours is None:
    supported = sorted(_ACTIVATIONS)
    raise UnsupportedCheckpoint(f"config.json {key}={name!r} is not supported; supported: "
                                f"{', '.join(supported)}.")
  return ours


def _refuse(cfg: dict, key: str, why: str, ok=(None, False)) -> None:
  """UnsupportedCheckpoint when config key `key` is set to anything but the values in ok."""
  if cfg.get(key) not in ok:
    raise UnsupportedCheckpoint(f"config.json {key}={cfg[key]!r} is not supported: {why}.")


def _rope_scaling(cfg: dict) -> tuple:
  """Decoder.rope_scaling from config.json's rope_scaling (None, default or llama3)."""
  scaling = cfg.get("rope_scaling")
  if not scaling:
    return ()
  kind = scaling.get("rope_type", scaling.get("type"))
  if kind == "default":
    return ()
  if kind != "llama3":
    raise UnsupportedCheckpoint(f"config.json rope_scaling type {kind!r} is not supported; "
                                "supported: 'llama3' (or none).")
  try:
    return ("llama3", float(scaling["factor"]), float(scaling["low_freq_factor"]),
            float(scaling["high_freq_factor"]),
            float(scaling["original_max_position_embeddings"]))
  except KeyError as e:
    raise UnsupportedCheckpoint(
        f"config.json rope_scaling (llama3) has no {e.args[0]!r}.") from None


@dataclasses.dataclass(frozen=True)
class _Family:
  """Shared by the families: `module` builds a LanguageModel from `arch(hf_config)`."""
  kind = "language"
  model_types: tuple[str, ...]

  def arch(self, cfg: dict[str, Any]) -> dict[str, Any]:
    raise NotImplementedError

  def _check_type(self, cfg):
    if cfg.get("model_type") not in self.model_types:
      raise UnsupportedCheckpoint(f"config.json model_type {cfg.get('model_type')!r} is not "
                                  f"one of this family's {self.model_types}.")

  def module(self, hf_config: dict[str, Any], **overrides) -> LanguageModel:
    """The LanguageModel config.json describes; overrides: our settings (dtype, remat,
    scan_layers, dropout, a grown vocab_size, ...)."""
    self._check_type(hf_config)
    return LanguageModel(**{**self.arch(hf_config), **overrides})


class _Gpt2(_Family):
  """GPT-2: learned positions, LayerNorm with bias, biased Conv1D layers ([in, out]), plain
  GELU (tanh) MLP, tied embeddings."""

  def arch(self, cfg):
    _refuse(cfg, "scale_attn_by_inverse_layer_idx", "a per-layer attention scale")
    _refuse(cfg, "add_cross_attention", "cross-attention to an encoder")
    width, heads = _need(cfg, "n_embd"), _need(cfg, "n_head")
    return dict(
        vocab_size=_need(cfg, "vocab_size"), width=width, depth=_need(cfg, "n_layer"),
        mlp_dim=cfg.get("n_inner") or 4 * width, num_heads=heads, num_kv_heads=heads,
        head_dim=width // heads, mlp_type="gelu",
        mlp_activation=_activation(cfg, "activation_function", "gelu_new"),
        tie_embeddings=cfg.get("tie_word_embeddings", True), norm="layer",
        norm_eps=cfg.get("layer_norm_epsilon", 1e-5), qkv_bias=True, out_bias=True,
        mlp_bias=True, position_kind="learned", max_positions=_need(cfg, "n_positions"),
        embed_scale=False,
        attn_scale=None if cfg.get("scale_attn_weights", True) else 1.0)

  def sources(self, hf_config):
    self._check_type(hf_config)
    a = self.arch(hf_config)
    width, heads, d = a["width"], a["num_heads"], a["head_dim"]
    sources = {("embedding",): same("transformer.wte.weight"),
               ("position_embedding",): same("transformer.wpe.weight"),
               ("final_norm", "scale"): same("transformer.ln_f.weight"),
               ("final_norm", "bias"): same("transformer.ln_f.bias")}
    if not a["tie_embeddings"]:
      sources[("unembedding",)] = _transposed("lm_head.weight")
    for i in range(a["depth"]):
      h, block = f"transformer.h.{i}.", f"block_{i}"
      for ours, theirs in (("norm_attn", "ln_1"), ("norm_mlp", "ln_2")):
        sources[(block, ours, "scale")] = same(h + theirs + ".weight")
        sources[(block, ours, "bias")] = same(h + theirs + ".bias")
      for j, name in enumerate(("query", "key", "value")):
        cols = slice(j * width, (j + 1) * width)
        sources[(block, "attn", name)] = Part(
            (h + "attn.c_attn.weight",),
            lambda t, cols=cols: np.ascontiguousarray(t[:, cols]).reshape(-1, heads, d),
            lambda x: _contiguous(x.reshape(x.shape[0], -1)), index=j, count=3)
        sources[(block, "attn", name + "_bias")] = Part(
            (h + "attn.c_attn.bias",),
            lambda t, cols=cols: np.ascontiguousarray(t[cols]).reshape(heads, d),
            lambda x: (x.reshape(-1),), index=j, count=3)
      sources[(block, "attn", "out")] = Source(
          (h + "attn.c_proj.weight",), lambda t: t.reshape(heads, d, -1),
          lambda x: (x.reshape(heads * d, -1),))
      sources[(block, "attn", "out_bias")] = same(h + "attn.c_proj.bias")
      for ours, theirs in (("wi", "c_fc"), ("wo", "c_proj")):
        sources[(block, "mlp", ours, "kernel")] = same(f"{h}mlp.{theirs}.weight")
        sources[(block, "mlp", ours, "bias")] = same(f"{h}mlp.{theirs}.bias")
    return sources

  def ignored(self, key: str, hf_config: dict[str, Any]) -> bool:
    del hf_config  # The same tensors for every GPT-2 config.
    # The causal-mask buffers older transformers saved; the tied lm_head some checkpoints
    # store next to wte.
    return (re.fullmatch(r"(transformer\.)?h\.\d+\.attn\.(bias|masked_bias)", key) is not None
            or key == "lm_head.weight")


# transformers' config class defaults where they differ by model type, for a config.json
# that leaves the key out.
_LLAMA_DEFAULTS = {
    "llama": dict(num_key_value_heads=None, tie_word_embeddings=False, hidden_act="silu"),
    "mistral": dict(num_key_value_heads=8, tie_word_embeddings=False, hidden_act="silu"),
    "qwen2": dict(num_key_value_heads=32, tie_word_embeddings=False, hidden_act="silu"),
    "gemma": dict(num_key_value_heads=16, tie_word_embeddings=True,
                  hidden_act="gelu_pytorch_tanh"),
}


class _Llama(_Family):
  """Llama-style: RMSNorm (Gemma: x * (1 + w)), RoPE, GQA, gated MLP, no biases but where
  the config (or the model type: Qwen2's q/k/v) asks."""

  def arch(self, cfg):
    kind = cfg.get("model_type")
    gemma = kind == "gemma"
    for key in ("attn_logit_softcapping", "final_logit_softcapping"):
      _refuse(cfg, key, "logit soft-capping (Gemma 2/3) is not implemented")
    _refuse(cfg, "partial_rotary_factor", "RoPE over part of each head", ok=(None, 1, 1.0))
    width, heads = _need(cfg, "hidden_size"), _need(cfg, "num_attention_heads")
    default = _LLAMA_DEFAULTS[kind]
    bias = bool(cfg.get("attention_bias", False)) and kind in ("llama", "gemma")
    return dict(
        vocab_size=_need(cfg, "vocab_size"), width=width, depth=_need(cfg, "num_hidden_layers"),
        mlp_dim=_need(cfg, "intermediate_size"), num_heads=heads,
        num_kv_heads=cfg.get("num_key_value_heads", default["num_key_value_heads"]) or heads,
        head_dim=cfg.get("head_dim") or (256 if gemma else width // heads), mlp_type="gated",
        mlp_activation=_activation(cfg, "hidden_act", default["hidden_act"]),
        tie_embeddings=cfg.get("tie_word_embeddings", default["tie_word_embeddings"]),
        rope_base=float(cfg.get("rope_theta", 10000.0)), rope_scaling=_rope_scaling(cfg),
        norm="rms_plus_one" if gemma else "rms", norm_eps=cfg.get("rms_norm_eps", 1e-6),
        qkv_bias=bias or kind == "qwen2", out_bias=bias,
        mlp_bias=bool(cfg.get("mlp_bias", False)) and kind == "llama",
        embed_scale=gemma, sliding_window=self._window(cfg))

  @staticmethod
  def _window(cfg) -> int:
    kind = cfg.get("model_type")
    if kind == "mistral":
      return cfg.get("sliding_window", 4096) or 0
    if kind == "qwen2":
      window = cfg.get("sliding_window") if cfg.get("use_sliding_window") else None
      depth = cfg["num_hidden_layers"]
      layers = cfg.get("layer_types") or [
          "sliding_attention" if window and i >= cfg.get("max_window_layers", 28)
          else "full_attention" for i in range(depth)]
      if all(t == "full_attention" for t in layers):
        return 0
      if window and all(t == "sliding_attention" for t in layers):
        return int(window)
      raise UnsupportedCheckpoint(
          f"config.json layer_types={layers!r} (use_sliding_window, max_window_layers): "
          "sliding-window attention in some layers only is not supported; every layer must "
          "use the same attention.")
    return 0

  def sources(self, hf_config):
    self._check_type(hf_config)
    a = self.arch(hf_config)
    heads, kv_heads, d = a["num_heads"], a["num_kv_heads"], a["head_dim"]
    sources = {("embedding",): same("model.embed_tokens.weight"),
               ("final_norm", "scale"): same("model.norm.weight")}
    if not a["tie_embeddings"]:
      sources[("unembedding",)] = _transposed("lm_head.weight")
    for i in range(a["depth"]):
      layer, block = f"model.layers.{i}.", f"block_{i}"
      attn = layer + "self_attn."
      sources[(block, "norm_attn", "scale")] = same(layer + "input_layernorm.weight")
      sources[(block, "norm_mlp", "scale")] = same(layer + "post_attention_layernorm.weight")
      for name, proj, n in (("query", "q", heads), ("key", "k", kv_heads),
                            ("value", "v", kv_heads)):
        sources[(block, "attn", name)] = _linear_in(f"{attn}{proj}_proj.weight", n, d)
        if a["qkv_bias"]:
          sources[(block, "attn", name + "_bias")] = _heads(f"{attn}{proj}_proj.bias", n, d)
      sources[(block, "attn", "out")] = _linear_out(attn + "o_proj.weight", heads, d)
      if a["out_bias"]:
        sources[(block, "attn", "out_bias")] = same(attn + "o_proj.bias")
      for ours, theirs in (("wi_gate", "gate_proj"), ("wi_up", "up_proj"),
                           ("wo", "down_proj")):
        sources[(block, "mlp", ours, "kernel")] = _transposed(f"{layer}mlp.{theirs}.weight")
        if a["mlp_bias"]:
          sources[(block, "mlp", ours, "bias")] = same(f"{layer}mlp.{theirs}.bias")
    return sources

  def ignored(self, key: str, hf_config: dict[str, Any]) -> bool:
    del hf_config  # The same tensors for every config of the family.
    # RoPE's inverse frequencies (a buffer older checkpoints saved); a tied lm_head stored
    # next to the embedding.
    return key.endswith("rotary_emb.inv_freq") or key == "lm_head.weight"


GPT2 = _Gpt2(("gpt2",))
LLAMA = _Llama(("llama", "mistral", "qwen2"))
GEMMA = _Llama(("gemma",))
FAMILIES = (GPT2, LLAMA, GEMMA)
