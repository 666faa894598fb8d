"""Decoder-only transformer: RMSNorm pre-norm, RoPE, GQA, explicit KV cache.

Architecture switches (`Decoder` attributes: norm kind and epsilon, biases, MLP activation,
learned positions instead of RoPE, Llama 3 RoPE scaling, embedding and attention scales, a
sliding attention window) let the same module hold GPT-2, Llama, Mistral, Qwen2 and Gemma
checkpoints (`gpt4v_jax/pretrained/language.py`); their defaults are this codebase's own model.

The KV cache is a plain pytree, not a Linen "cache" collection, so decoding
code can build, carry and inspect it like any other array tree:

  cache = [dict(k=[batch, kv_heads, max_len, head_dim],
                v=[batch, kv_heads, max_len, head_dim])] * depth

Heads before slots: a decode step's attention dots then read the cache as it is laid out
(see `attention.cached_attention`).
"""
import math

import jax
import jax.numpy as jnp
import flax.linen as nn

from gpt4v_jax.models import attention, matmul
from gpt4v_jax.models.activations import ACTIVATIONS
from gpt4v_jax.models import remat as remat_lib

_BTE = ("activation_batch", "activation_length", "activation_embed")
_BTM = ("activation_batch", "activation_length", "activation_mlp")
_BTHD = ("activation_batch", "activation_length", "activation_heads",
         "activation_head_dim")
_BTKD = ("activation_batch", "activation_length", "activation_kv_heads",
         "activation_head_dim")
_BKTD = ("activation_batch", "activation_kv_heads", "activation_length",
         "activation_head_dim")


def _init(names, in_axis=-2, out_axis=-1):
  """Fan-in scaled truncated normal kernel init carrying logical names."""
  return nn.with_logical_partitioning(
      nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal",
                                       in_axis=in_axis, out_axis=out_axis),
      names)


NORMS = ("rms", "rms_plus_one", "layer")
POSITION_KINDS = ("rope", "learned")
def _embedding_init(names):
  """Rows of std 1/sqrt(width) (a table [rows, width]), carrying logical `names`."""
  return nn.with_logical_partitioning(
      nn.initializers.variance_scaling(1.0, "fan_in", "normal", in_axis=1, out_axis=0), names)


def _zeros(names):
  return nn.with_logical_partitioning(nn.initializers.zeros_init(), names)


class RMSNormPlusOne(nn.Module):
  """Gemma's RMSNorm: x / rms(x) * (1 + scale), computed in float32; the scale starts at 0,
  so a fresh norm is a plain RMSNorm."""
  epsilon: float = 1e-6
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    """[..., features] -> same shape, self.dtype."""
    scale = self.param("scale", _zeros(("norm",)), (x.shape[-1],), jnp.float32)
    x = x.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.epsilon)
    return (x * (1.0 + scale)).astype(self.dtype)


def _norm(kind, eps, dtype, name):
  """A block's pre-norm or the final norm (see `Decoder.norm`); params float32, named
  ("norm",)."""
  if kind == "rms":
    return nn.RMSNorm(
        epsilon=eps,
        dtype=dtype,
        param_dtype=jnp.float32,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(),
                                                ("norm",)),
        name=name)
  if kind == "layer":
    # Two-pass variance, as torch's LayerNorm: E[x^2] - E[x]^2 loses digits on the residual
    # stream of a deep pretrained model.
    return nn.LayerNorm(
        epsilon=eps, dtype=dtype, param_dtype=jnp.float32, use_fast_variance=False,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
        bias_init=_zeros(("norm",)), name=name)
  if kind == "rms_plus_one":
    return RMSNormPlusOne(eps, dtype, name=name)
  raise ValueError(f"Unknown norm {kind!r}; expected one of {NORMS}.")


def _rms_norm(dtype, name):
  return _norm("rms", 1e-6, dtype, name)


def rope_frequencies(head_dim, base, scaling=()):
  """[head_dim // 2] float32 angular frequencies of RoPE's dimension pairs.

  scaling: () for none, or ("llama3", factor, low_freq_factor, high_freq_factor,
    original_max_positions): Llama 3.1's remap, which divides the frequencies of wavelengths
    longer than original_max_positions / low_freq_factor by factor, keeps those shorter than
    original_max_positions / high_freq_factor and blends the two in between.
  """
  half = head_dim // 2
  freqs = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
  if not scaling:
    return freqs
  _, factor, low, high, original = scaling
  wavelength = 2 * math.pi / freqs
  long = wavelength > original / low
  short = wavelength < original / high
  smooth = (original / wavelength - low) / (high - low)
  blended = (1 - smooth) * freqs / factor + smooth * freqs
  return jnp.where(long, freqs / factor, jnp.where(short, freqs, blended))


def rope_rotations(positions, head_dim, base, scaling=()):
  """RoPE's per-position factors: (cos, signed_sin), each [batch, length, 1, 1 or 2, half]
  float32, for `apply_rope`; positions [batch, length] int; scaling: see
  `rope_frequencies`."""
  freqs = rope_frequencies(head_dim, base, scaling)
  # [batch, length, 1, 1, half], broadcasting over heads and the two halves.
  angles = positions.astype(jnp.float32)[..., None, None, None] * freqs
  sin, cos = jnp.sin(angles), jnp.cos(angles)
  return cos, jnp.concatenate([-sin, sin], axis=-2)


def apply_rope(x, positions, base, rotations=None, scaling=()):
  """Rotary position embedding (rotate-half convention).

  Args:
    x: [batch, length, heads, head_dim], head_dim even.
    positions: [batch, length] int, absolute position of each token.
    base: RoPE wavelength base.
    rotations: optional `rope_rotations(positions, head_dim, base, scaling)`, computed once
      for several calls.
    scaling: see `rope_frequencies`; used when rotations is None.

  Returns:
    x rotated by position-dependent angles, same shape and dtype.
  """
  b, t, h, d = x.shape
  dtype, half = x.dtype, d // 2
  cos, signed_sin = (rope_rotations(positions, d, base, scaling) if rotations is None
                     else rotations)
  # Rotate in float32: bf16 angles lose precision at large positions. With x's halves
  # (x1, x2) as an axis of 2: (x1 cos - x2 sin, x2 cos + x1 sin) = x cos + flip(x) (-sin,
  # sin), elementwise with a reversed index, which XLA fuses (a concatenate of the halves
  # cost the mid benchmark model ~0.3 s per train step, forward and backward).
  x = x.astype(jnp.float32).reshape(b, t, h, 2, half)
  out = x * cos + jnp.flip(x, axis=-2) * signed_sin
  return out.reshape(b, t, h, d).astype(dtype)


def _window_mask(t, s, start, window):
  """[1, t, s] bool: which of s key slots lie within `window` slots of each of t queries.

  Queries are slots start + i. Keys are slots j of the cache, or, when s == t (no cache, or
  a fresh cache's prefill), the queries' own slots; a query sees keys less than `window`
  slots behind it (Mistral's sliding window: itself and the window - 1 before it).
  """
  distance = jnp.arange(t)[:, None] - jnp.arange(s)[None, :]
  if s != t:
    distance = distance + start
  return (distance < window)[None]


class Attention(nn.Module):
  """Grouped-query self-attention with RoPE and an optional KV cache.

  Switches (see `Decoder`): qkv_bias, out_bias, use_rope, rope_scaling, scale (None:
  head_dim ** -0.5), sliding_window (0: none).
  """
  num_heads: int
  num_kv_heads: int
  head_dim: int
  rope_base: float
  dtype: jnp.dtype = jnp.float32
  qkv_bias: bool = False
  out_bias: bool = False
  use_rope: bool = True
  rope_scaling: tuple = ()
  scale: float | None = None
  sliding_window: int = 0

  @nn.compact
  def __call__(self, x, positions, attn_mask, cache, cache_index):
    """Self-attention over the inputs, or over the cache slots.

    Args:
      x: [batch, t, embed].
      positions: [batch, t] int RoPE positions (unused without RoPE).
      attn_mask: [batch, t, s] bool; s = t without cache; with a cache s = max_len (the
        t new tokens attend over every cache slot), or s = t when the cache is fresh
        (prefill, cache_index 0: they attend among themselves). A sliding window further
        limits it, by cache slot (as transformers does).
      cache: None, or dict(k, v) of [batch, kv_heads, max_len, head_dim].
      cache_index: scalar int32, first slot written when cache is given.

    Returns:
      ([batch, t, embed], updated cache or None).
    """
    width = x.shape[-1]
    hq, hkv, d = self.num_heads, self.num_kv_heads, self.head_dim
    q_names = ("embed", "heads", "head_dim")
    kv_names = ("embed", "kv_heads", "head_dim")
    wq = self.param("query", _init(q_names, 0, (1, 2)), (width, hq, d),
                    jnp.float32)
    wk = self.param("key", _init(kv_names, 0, (1, 2)), (width, hkv, d),
                    jnp.float32)
    wv = self.param("value", _init(kv_names, 0, (1, 2)), (width, hkv, d),
                    jnp.float32)
    wo = self.param("out", _init(("heads", "head_dim", "embed"), (0, 1), 2),
                    (hq, d, width), jnp.float32)

    if cache is None:
      q = matmul.contract(x, wq.astype(self.dtype))
      k = matmul.contract(x, wk.astype(self.dtype))
      v = matmul.contract(x, wv.astype(self.dtype))
    else:
      # One [rows, width] x [width, (heads + 2 kv_heads) head_dim] matmul: XLA:CPU runs the
      # three of the mid benchmark model at ~45% of its matmul rate in a batch-64 decode step
      # (~60% in the prefill), this one at ~75% (~100%). The concatenated kernel does not
      # depend on the step: XLA builds it once per call.
      w_qkv = jnp.concatenate([w.reshape(width, -1) for w in (wq, wk, wv)], axis=1)
      qkv = matmul.contract(x, w_qkv.astype(self.dtype))
      q, k, v = jnp.split(qkv, [hq * d, (hq + hkv) * d], axis=-1)
      q = q.reshape(*x.shape[:2], hq, d)
      k, v = (y.reshape(*x.shape[:2], hkv, d) for y in (k, v))
    if self.qkv_bias:
      q = q + self.param("query_bias", _zeros(("heads", "head_dim")), (hq, d),
                         jnp.float32).astype(self.dtype)
      k = k + self.param("key_bias", _zeros(("kv_heads", "head_dim")), (hkv, d),
                         jnp.float32).astype(self.dtype)
      v = v + self.param("value_bias", _zeros(("kv_heads", "head_dim")), (hkv, d),
                         jnp.float32).astype(self.dtype)
    if self.use_rope:
      rotations = None
      if cache is not None:
        # XLA fuses cos into every element of q and k that it multiplies: a decode step
        # spent more time on it than on the rotation. As a concatenate (like signed_sin,
        # which XLA does not fuse into its users) it is computed once per layer.
        cos, signed_sin = rope_rotations(positions, d, self.rope_base, self.rope_scaling)
        rotations = jnp.concatenate([cos, cos], axis=-2), signed_sin
      q = apply_rope(q, positions, self.rope_base, rotations, self.rope_scaling)
      k = apply_rope(k, positions, self.rope_base, rotations, self.rope_scaling)
    q = nn.with_logical_constraint(q, _BTHD)
    k = nn.with_logical_constraint(k, _BTKD)
    v = nn.with_logical_constraint(v, _BTKD)
    if self.sliding_window:
      attn_mask = attn_mask & _window_mask(x.shape[1], attn_mask.shape[-1],
                                           0 if cache is None else cache_index,
                                           self.sliding_window)

    if cache is None:
      # GQA (heads % kv_heads == 0), the softmax in float32.
      y = attention.dot_product_attention(q, k, v, mask=attn_mask[:, None, :, :],
                                          scale=self.scale)
    else:
      # The cache is [batch, kv_heads, max_len, head_dim]: the t new keys and values go in
      # as [batch, kv_heads, t, head_dim] (a free reshape for a decode step's t = 1).
      start = (0, 0, cache_index, 0)
      cache = {name: nn.with_logical_constraint(jax.lax.dynamic_update_slice(
          cache[name], jnp.swapaxes(new, 1, 2).astype(cache[name].dtype), start), _BKTD)
               for name, new in (("k", k), ("v", v))}
      if attn_mask.shape[-1] == x.shape[1]:
        # Prefill of a fresh cache: the other slots are empty, so the new tokens attend
        # among themselves, as without a cache, rather than over all max_len slots.
        y = attention.dot_product_attention(q, k, v, mask=attn_mask[:, None, :, :],
                                            scale=self.scale)
      else:
        y = attention.cached_attention(q, cache["k"].astype(self.dtype),
                                       cache["v"].astype(self.dtype), attn_mask,
                                       scale=self.scale)
    y = nn.with_logical_constraint(y, _BTHD)
    y = matmul.contract(y, wo.astype(self.dtype), 2)
    if self.out_bias:
      y = y + self.param("out_bias", _zeros(("embed",)), (width,), jnp.float32).astype(
          self.dtype)
    return nn.with_logical_constraint(y, _BTE), cache


class Mlp(nn.Module):
  """Feed-forward block: gated ("gated": act(x W_gate) * x W_up, SwiGLU by default) or plain
  ("gelu": act(x W_in), GELU by default); activation: a name in ACTIVATIONS, "" for the
  default; use_bias: biases on every Dense (GPT-2)."""
  mlp_dim: int
  mlp_type: str
  dtype: jnp.dtype = jnp.float32
  activation: str = ""
  use_bias: bool = False

  @nn.compact
  def __call__(self, x):
    """[batch, t, embed] -> [batch, t, embed]."""
    def dense(features, names, name):
      return nn.Dense(features, use_bias=self.use_bias, dtype=self.dtype,
                      param_dtype=jnp.float32, kernel_init=_init(names),
                      bias_init=_zeros(names[-1:]),
                      dot_general=matmul.dense_dot_general, name=name)

    if self.mlp_type == "gated":
      act = ACTIVATIONS[self.activation or "silu"]
      gate = dense(self.mlp_dim, ("embed", "mlp"), "wi_gate")(x)
      up = dense(self.mlp_dim, ("embed", "mlp"), "wi_up")(x)
      h = act(gate) * up
    elif self.mlp_type == "gelu":
      act = ACTIVATIONS[self.activation or "gelu_tanh"]
      h = act(dense(self.mlp_dim, ("embed", "mlp"), "wi")(x))
    else:
      raise ValueError(f"Unknown mlp_type {self.mlp_type!r}; "
                       "expected 'gated' or 'gelu'.")
    h = nn.with_logical_constraint(h, _BTM)
    y = dense(x.shape[-1], ("mlp", "embed"), "wo")(h)
    return nn.with_logical_constraint(y, _BTE)


class GatedCrossAttention(nn.Module):
  """Flamingo's gated cross-attention dense block: the text attends to the image tokens, and
  tanh gates that start at zero add the result, so a new block starts as the identity and
  the decoder first behaves as a text-only LM (Alayrac et al. 2022)."""
  num_heads: int
  head_dim: int
  mlp_dim: int
  mlp_type: str
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, context, context_visible):
    """x: [batch, t, embed]; context: [batch, n, embed] image tokens; context_visible:
    [batch] bool, False where an example's image is hidden (its rows get no image
    information). Returns [batch, t, embed]."""
    width, h, d = x.shape[-1], self.num_heads, self.head_dim
    wq = self.param("query", _init(("embed", "heads", "head_dim"), 0, (1, 2)), (width, h, d),
                    jnp.float32)
    wk = self.param("key", _init(("embed", "heads", "head_dim"), 0, (1, 2)), (width, h, d),
                    jnp.float32)
    wv = self.param("value", _init(("embed", "heads", "head_dim"), 0, (1, 2)), (width, h, d),
                    jnp.float32)
    wo = self.param("out", _init(("heads", "head_dim", "embed"), (0, 1), 2), (h, d, width),
                    jnp.float32)
    gate_init = nn.with_logical_partitioning(nn.initializers.zeros_init(), ())
    gate_attn = self.param("gate_attn", gate_init, (), jnp.float32)
    gate_mlp = self.param("gate_mlp", gate_init, (), jnp.float32)

    y = _rms_norm(self.dtype, "norm_xattn")(x)
    context = context.astype(self.dtype)
    q = nn.with_logical_constraint(matmul.contract(y, wq.astype(self.dtype)), _BTHD)
    k = nn.with_logical_constraint(matmul.contract(context, wk.astype(self.dtype)),
                                   _BTHD)
    v = nn.with_logical_constraint(matmul.contract(context, wv.astype(self.dtype)),
                                   _BTHD)
    visible = context_visible.astype(bool)
    mask = jnp.broadcast_to(visible[:, None, None, None], (x.shape[0], 1, x.shape[1],
                                                           context.shape[1]))
    y = attention.dot_product_attention(q, k, v, mask=mask)
    # A hidden image's row attends to nothing: its (uniform) attention output is zeroed.
    y = matmul.contract(y, wo.astype(self.dtype), 2) * visible[:, None, None]
    x = x + jnp.tanh(gate_attn).astype(self.dtype) * nn.with_logical_constraint(y, _BTE)
    y = Mlp(self.mlp_dim, self.mlp_type, self.dtype, name="mlp")(
        _rms_norm(self.dtype, "norm_mlp")(x))
    return nn.with_logical_constraint(x + jnp.tanh(gate_mlp).astype(self.dtype) * y, _BTE)


class Block(nn.Module):
  """x + Attn(Norm(x)), then x + Mlp(Norm(x)); the switches: see `Decoder`."""
  mlp_dim: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  mlp_type: str
  rope_base: float
  dtype: jnp.dtype = jnp.float32
  dropout: float = 0.0
  norm: str = "rms"
  norm_eps: float = 1e-6
  qkv_bias: bool = False
  out_bias: bool = False
  mlp_bias: bool = False
  mlp_activation: str = ""
  use_rope: bool = True
  rope_scaling: tuple = ()
  attn_scale: float | None = None
  sliding_window: int = 0

  @nn.compact
  def __call__(self, x, positions, attn_mask, cache, cache_index,
               deterministic):
    """See `Attention`; returns ([batch, t, embed], updated cache or None)."""
    y = _norm(self.norm, self.norm_eps, self.dtype, "norm_attn")(x)
    y, cache = Attention(self.num_heads, self.num_kv_heads, self.head_dim,
                         self.rope_base, self.dtype, qkv_bias=self.qkv_bias,
                         out_bias=self.out_bias, use_rope=self.use_rope,
                         rope_scaling=self.rope_scaling, scale=self.attn_scale,
                         sliding_window=self.sliding_window, name="attn")(
                             y, positions, attn_mask, cache, cache_index)
    x = x + nn.Dropout(self.dropout)(y, deterministic)
    x = nn.with_logical_constraint(x, _BTE)

    y = _norm(self.norm, self.norm_eps, self.dtype, "norm_mlp")(x)
    y = Mlp(self.mlp_dim, self.mlp_type, self.dtype, self.mlp_activation, self.mlp_bias,
            name="mlp")(y)
    x = x + nn.Dropout(self.dropout)(y, deterministic)
    return nn.with_logical_constraint(x, _BTE), cache


class Decoder(nn.Module):
  """Decoder-only transformer over embeddings.

  Input embeddings are passed in (not tokens) so callers can splice image
  tokens in front of text; use `embed` for the text part.

  Attributes:
    vocab_size: number of token ids.
    width: model width.
    depth: number of blocks.
    mlp_dim: hidden size of the feed-forward block.
    num_heads: query heads.
    num_kv_heads: key/value heads (GQA; 1 = MQA); must divide num_heads.
    head_dim: per-head size; defaults to width // num_heads. Must be even.
    mlp_type: "gated" (SwiGLU) or "gelu".
    tie_embeddings: logits = x @ embedding.T, else a separate
      ("embed", "vocab") unembedding.
    rope_base: RoPE wavelength base.
    remat: "none", "full" or "save_dots": see `models/remat.py`.
    scan_layers: run the blocks as one `nn.scan` over stacked params (a leading "layers"
      axis) and, when decoding, a stacked cache: XLA compiles one block instead of `depth`.
    cross_attention_every: 0 for none; k > 0 puts a `GatedCrossAttention` to the image
      tokens (`context`) before blocks 0, k, 2k, ... (Flamingo-style fusion).
    dtype: compute dtype; params stay float32, logits are float32.
    dropout: residual dropout rate.
    code_ids: (first, end) token ids of image codes (text-to-image), with
      num_code_positions.
    num_code_positions: 0 for none; n > 0 adds a learned embedding of its place in the
      image to the k-th code token of a sequence, k < n (`code_index`): DALL-E's image
      position embeddings, so the decoder need not count its way across the code grid.

  Architecture switches (pretrained checkpoints; the defaults are this codebase's model):
    norm: "rms" (RMSNorm), "rms_plus_one" (Gemma's x / rms(x) * (1 + scale), in float32)
      or "layer" (LayerNorm with bias, GPT-2), for the blocks' pre-norms and the final norm.
    norm_eps: their epsilon.
    qkv_bias: biases on the query, key and value projections (Qwen2, GPT-2).
    out_bias: a bias on the attention output projection (GPT-2).
    mlp_bias: biases on the MLP's Dense layers (GPT-2).
    mlp_activation: a name in ACTIVATIONS ("silu", "gelu_tanh", "gelu", "relu"); "" for
      mlp_type's own (silu gated, gelu_tanh plain). Gemma is gated "gelu_tanh".
    position_kind: "rope", or "learned": a [max_positions, width] table, indexed by
      `positions`, added to the input embeddings (GPT-2; no RoPE then). Positions at or past
      max_positions give NaN.
    max_positions: rows of the learned table.
    rope_scaling: () or ("llama3", factor, low_freq_factor, high_freq_factor,
      original_max_positions): see `rope_frequencies`.
    embed_scale: `embed` multiplies token embeddings by sqrt(width) (ours, Gemma).
    attn_scale: the attention logits' factor; None for head_dim ** -0.5.
    sliding_window: 0 for full causal attention; w > 0 lets a token attend to the w cache
      slots up to itself only (Mistral), with or without a cache.
  """
  vocab_size: int
  width: int
  depth: int
  mlp_dim: int
  num_heads: int
  num_kv_heads: int
  head_dim: int | None = None
  mlp_type: str = "gated"
  tie_embeddings: bool = True
  rope_base: float = 10000.0
  remat: str = "none"
  scan_layers: bool = False
  cross_attention_every: int = 0
  dtype: jnp.dtype = jnp.float32
  dropout: float = 0.0
  code_ids: tuple[int, int] = (0, 0)
  num_code_positions: int = 0
  norm: str = "rms"
  norm_eps: float = 1e-6
  qkv_bias: bool = False
  out_bias: bool = False
  mlp_bias: bool = False
  mlp_activation: str = ""
  position_kind: str = "rope"
  max_positions: int = 0
  rope_scaling: tuple = ()
  embed_scale: bool = True
  attn_scale: float | None = None
  sliding_window: int = 0

  def __post_init__(self):
    # Validate at construction so a bad config fails before any tracing.
    if self.num_code_positions and not 0 <= self.code_ids[0] < self.code_ids[1] <= (
        self.vocab_size):
      raise ValueError(f"code_ids={self.code_ids} must be a non-empty id range within the "
                       f"vocabulary of {self.vocab_size} for code position embeddings.")
    if self.cross_attention_every and self.scan_layers:
      raise ValueError("config.model.scan_layers=True does not support cross-attention "
                       "fusion yet; use fusion='prefix' or scan_layers=False.")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"num_heads={self.num_heads} must be a multiple of "
                       f"num_kv_heads={self.num_kv_heads}.")
    if self.position_kind == "rope" and self.resolved_head_dim % 2:
      raise ValueError(f"head_dim={self.resolved_head_dim} must be even for "
                       "RoPE.")
    if self.norm not in NORMS:
      raise ValueError(f"Decoder norm={self.norm!r}: expected one of {NORMS}.")
    if self.mlp_activation and self.mlp_activation not in ACTIVATIONS:
      raise ValueError(f"Decoder mlp_activation={self.mlp_activation!r}: expected '' or one "
                       f"of {tuple(ACTIVATIONS)}.")
    if self.position_kind not in POSITION_KINDS:
      raise ValueError(f"Decoder position_kind={self.position_kind!r}: expected one of "
                       f"{POSITION_KINDS}.")
    if (self.position_kind == "learned") != (self.max_positions > 0):
      raise ValueError(f"Decoder max_positions={self.max_positions} with position_kind="
                       f"{self.position_kind!r}: learned positions need max_positions > 0, "
                       "RoPE needs 0.")
    if self.rope_scaling and (self.rope_scaling[0] != "llama3" or len(self.rope_scaling) != 5):
      raise ValueError(f"Decoder rope_scaling={self.rope_scaling!r}: expected () or ('llama3', "
                       "factor, low_freq_factor, high_freq_factor, original_max_positions).")
    if self.sliding_window < 0:
      raise ValueError(f"Decoder sliding_window={self.sliding_window}: expected 0 (none) or a "
                       "positive number of slots.")
    super().__post_init__()

  @property
  def resolved_head_dim(self):
    return self.head_dim or self.width // self.num_heads

  def forward_flops(self, seq_len: int, logit_len: int, causal_halving: bool = True,
                    context_len: int = 0) -> float:
    """Matmul FLOPs of one sequence's forward pass (2 per multiply-add).

    Args:
      seq_len: tokens through the blocks.
      logit_len: positions whose logits are computed (the unembedding).
      causal_halving: count attention over half the [seq, seq] pairs, as MFU conventions
        (MaxText, PaLM) do for a causal mask; False counts all pairs, as the dense masked
        computation does them.
      context_len: image tokens the cross-attention blocks attend to.
    """
    s, w, hd = seq_len, self.width, self.resolved_head_dim
    projections = 2 * s * w * hd * (2 * self.num_heads + 2 * self.num_kv_heads)  # q, o; k, v.
    attention = 2 * 2 * s * s * self.num_heads * hd * (0.5 if causal_halving else 1.0)
    mlp = 2 * s * w * self.mlp_dim * (3 if self.mlp_type == "gated" else 2)
    every = self.cross_attention_every
    num_xattn = len(range(0, self.depth, every)) if every else 0
    h = self.num_heads * hd
    xattn = (2 * 2 * (s + context_len) * w * h  # q, o over the text; k, v over the image.
             + 2 * 2 * s * context_len * h + mlp)
    return (self.depth * (projections + attention + mlp) + num_xattn * xattn
            + 2 * logit_len * w * self.vocab_size)

  def init_cache(self, batch, max_len, dtype=None):
    """Zero KV cache; needs no params, so works on an unbound module.

    Returns:
      [dict(k=zeros[batch, kv_heads, max_len, head_dim], v=...)] * depth, or with
      scan_layers one dict(k=zeros[depth, batch, kv_heads, max_len, head_dim], v=...).
    """
    shape = (batch, self.num_kv_heads, max_len, self.resolved_head_dim)
    dtype = dtype or self.dtype
    if self.scan_layers:
      shape = (self.depth,) + shape
      return dict(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype))
    return [dict(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype))
            for _ in range(self.depth)]

  def setup(self):
    # std 1/sqrt(width): tied logits x @ E.T of a unit-RMS x are then ~N(0, 1);
    # `embed` multiplies by sqrt(width) to give unit-RMS input embeddings.
    self.embedding = self.param(
        "embedding",
        _embedding_init(("vocab", "embed")),
        (self.vocab_size, self.width), jnp.float32)
    if self.num_code_positions:
      # Scaled like the token embedding, which `embed` adds it to.
      self.code_position_embedding = self.param(
          "code_position_embedding",
          _embedding_init((None, "embed")),
          (self.num_code_positions, self.width), jnp.float32)
    if not self.tie_embeddings:
      self.unembedding = self.param("unembedding", _init(("embed", "vocab")),
                                    (self.width, self.vocab_size), jnp.float32)
    if self.position_kind == "learned":
      # Scaled like the token embedding, which `__call__` adds it to.
      self.position_embedding = self.param(
          "position_embedding",
          _embedding_init((None, "embed")),
          (self.max_positions, self.width), jnp.float32)
    # static_argnums counts `self` as 0, so 6 is `deterministic`.
    block = remat_lib.remat(Block, self.remat, static_argnums=(6,))
    args = (self.mlp_dim, self.num_heads, self.num_kv_heads, self.resolved_head_dim,
            self.mlp_type, self.rope_base, self.dtype, self.dropout)
    switches = dict(norm=self.norm, norm_eps=self.norm_eps, qkv_bias=self.qkv_bias,
                    out_bias=self.out_bias, mlp_bias=self.mlp_bias,
                    mlp_activation=self.mlp_activation,
                    use_rope=self.position_kind == "rope", rope_scaling=self.rope_scaling,
                    attn_scale=self.attn_scale, sliding_window=self.sliding_window)
    if self.scan_layers:
      # Carry x; the cache (or None) is scanned over its leading layer axis; positions,
      # mask, cache index and `deterministic` are the same for every layer.
      self.blocks = nn.scan(
          block, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
          in_axes=(nn.broadcast, nn.broadcast, 0, nn.broadcast, nn.broadcast),
          length=self.depth, metadata_params={nn.PARTITION_NAME: "layers"},
      )(*args, **switches, name="blocks")
    else:
      self.blocks = [block(*args, **switches, name=f"block_{i}") for i in range(self.depth)]
    every = self.cross_attention_every
    self.cross_attention = [
        GatedCrossAttention(self.num_heads, self.resolved_head_dim, self.mlp_dim,
                            self.mlp_type, self.dtype, name=f"xattn_{i}")
        if every and i % every == 0 else None for i in range(self.depth)]
    self.final_norm = _norm(self.norm, self.norm_eps, self.dtype, "final_norm")
    self.embed_dropout = nn.Dropout(self.dropout)

  def code_index(self, tokens, codes_before=None):
    """Which image code of its sequence each token is.

    Args:
      tokens: [batch, t] int.
      codes_before: optional [batch] int, code tokens earlier in the sequence (a decode
        step's cache holds them); default 0.

    Returns:
      [batch, t] int32: k for the k-th code token (counted from 0), -1 for other tokens.
    """
    first, end = self.code_ids
    is_code = (tokens >= first) & (tokens < end)
    k = jnp.cumsum(is_code, axis=1, dtype=jnp.int32) - 1
    if codes_before is not None:
      k = k + codes_before[:, None]
    return jnp.where(is_code, k, -1)

  def embed(self, tokens, codes_before=None):
    """[batch, t] int -> [batch, t, width], scaled by sqrt(width) (with embed_scale); with
    num_code_positions, code tokens add their position's embedding (see `code_index`)."""
    x = jnp.take(self.embedding, tokens, axis=0)
    if self.num_code_positions:
      k = self.code_index(tokens, codes_before)
      # Codes past the last position (none in a well-formed sequence) share it.
      position = jnp.take(self.code_position_embedding,
                          jnp.clip(k, 0, self.num_code_positions - 1), axis=0)
      x = x + jnp.where((k >= 0)[..., None], position, 0.0)
    if self.embed_scale:
      x = x.astype(self.dtype) * jnp.asarray(self.width**0.5, self.dtype)
    else:
      x = x.astype(self.dtype)
    return nn.with_logical_constraint(x, _BTE)

  def __call__(self, x, positions, attn_mask, cache=None, cache_index=None,
               deterministic=True, context=None, context_visible=None):
    """Runs the blocks and the unembedding: `hidden_states`, then the logits.

    Returns:
      (logits [batch, t, vocab] float32, updated cache or None).
    """
    x, new_cache = self.hidden_states(x, positions, attn_mask, cache, cache_index,
                                      deterministic, context, context_visible)
    if self.tie_embeddings:
      logits = matmul.contract(x, self.embedding.astype(self.dtype), transpose_w=True,
                               preferred_element_type=jnp.float32)
    else:
      logits = matmul.contract(x, self.unembedding.astype(self.dtype),
                               preferred_element_type=jnp.float32)
    logits = nn.with_logical_constraint(
        logits, ("activation_batch", "activation_length", "activation_vocab"))
    return logits, new_cache

  def hidden_states(self, x, positions, attn_mask, cache=None, cache_index=None,
                    deterministic=True, context=None, context_visible=None):
    """Runs the blocks and the final norm (a text tower's output, before any logits).

    Args:
      x: [batch, t, width] input embeddings.
      positions: [batch, t] int RoPE positions, or rows of the learned position table.
      attn_mask: [batch, t, t] bool without cache; [batch, t, max_len] bool
        over cache slots with cache, or [batch, t, t] when prefilling a fresh cache
        (cache_index 0), see `Attention`.
      cache: None or the pytree from `init_cache`; the t new keys/values are
        written at slots [cache_index, cache_index + t).
      cache_index: scalar int32 (may be traced), used with cache.
      deterministic: disables dropout.
      context: [batch, n, width] image tokens for the cross-attention blocks (needed iff
        cross_attention_every > 0).
      context_visible: [batch] bool, False hides an example's image from them.

    Returns:
      (hidden states [batch, t, width] in the decoder's dtype, updated cache or None).
    """
    x = nn.with_logical_constraint(x.astype(self.dtype), _BTE)
    if self.position_kind == "learned":
      # Out-of-range rows are NaN (jnp.take's fill), not silently clipped.
      x = x + jnp.take(self.position_embedding, positions, axis=0).astype(self.dtype)
      x = nn.with_logical_constraint(x, _BTE)
    x = self.embed_dropout(x, deterministic)
    if self.scan_layers:
      x, new_cache = self.blocks(x, positions, attn_mask, cache, cache_index, deterministic)
    else:
      new_cache = None if cache is None else []
      for i, block in enumerate(self.blocks):
        if self.cross_attention[i] is not None:
          x = self.cross_attention[i](x, context, context_visible)
        x, layer_cache = block(x, positions, attn_mask,
                               None if cache is None else cache[i], cache_index,
                               deterministic)
        if cache is not None:
          new_cache.append(layer_cache)
    return self.final_norm(x), new_cache
