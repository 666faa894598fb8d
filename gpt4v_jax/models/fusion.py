"""Glue between the vision encoder and the decoder.

* `Projector` maps ViT tokens into the decoder's embedding space.
* `PerceiverResampler` (optional) turns them into a fixed number of learned latents.
* `sincos_2d` gives image tokens where they are on the patch grid (`IMAGE_POSITIONS`).
* `prefix_lm_mask` builds the attention mask of the fused sequence
  [image tokens, prompt tokens, target tokens].
"""
import math

import jax.numpy as jnp
import flax.linen as nn

from gpt4v_jax.models import activations, attention, matmul
from gpt4v_jax.models.vit import dense, layer_norm


IMAGE_POSITIONS = ("none", "sincos2d")


def sincos_2d(side: int, width: int, temperature: float = 10_000.0) -> jnp.ndarray:
  """[side * side, width] float32 fixed 2D position embedding of a row-major token grid (MAE's
  and big_vision's `sincos2d`): the first half of the channels encode the column, the second
  half the row, each as sin and cos of the position over width / 4 geometric frequencies.

  Added to the image tokens the decoder reads, it puts each token's place in the values
  attention gathers, which 1D RoPE over the raster order (a bias on attention weights) does
  not: without it the decoder cannot compare two objects' x (docs/vqa.md).
  """
  if width % 4:
    raise ValueError(f"sincos2d image positions need a decoder width divisible by 4, not "
                     f"{width}.")
  freqs = 1.0 / temperature ** (jnp.arange(width // 4, dtype=jnp.float32) / (width // 4))
  rows, cols = jnp.meshgrid(jnp.arange(side), jnp.arange(side), indexing="ij")

  def encode(coordinate):  # [side * side] -> [side * side, width / 2]
    angles = coordinate.reshape(-1, 1).astype(jnp.float32) * freqs
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=1)
  return jnp.concatenate([encode(cols), encode(rows)], axis=1)


class Projector(nn.Module):
  """Maps vision tokens to decoder tokens.

  Attributes:
    kind: "linear" (one Dense) or "mlp" (Dense-GELU-Dense, LLaVA-1.5 style,
      hidden size = `width`).
    width: decoder model width.
    merge: side of the square of neighbouring vision tokens concatenated into
      one decoder token before the projection (1 = none; 2 = 2x2, as
      Qwen2-VL's patch merger and InternVL's pixel shuffle do). It lets the
      encoder see a fine patch grid while the decoder, whose sequence dominates
      the cost, sees merge**2 times fewer image tokens.
    dtype: compute dtype; params stay float32.
    activation: the "mlp" kind's, a name of `activations.ACTIVATIONS` (LLaVA's is "gelu").
  """
  kind: str
  width: int
  merge: int = 1
  dtype: jnp.dtype = jnp.float32
  activation: str = "gelu_tanh"

  def forward_flops(self, num_vision_tokens: int, vision_width: int) -> float:
    """Matmul FLOPs of one image's projection."""
    n, d = num_vision_tokens // self.merge**2, vision_width * self.merge**2
    return 2 * n * d * self.width + (2 * n * self.width**2 if self.kind == "mlp" else 0)

  @nn.compact
  def __call__(self, x):
    """[batch, grid*grid, vision_width] -> [batch, (grid/merge)**2, width]."""
    if self.merge > 1:
      x = merge_tokens(x, self.merge)
    if self.kind == "linear":
      x = dense(self.width, ("vision_embed", "embed"), self.dtype, "linear")(x)
    elif self.kind == "mlp":
      x = dense(self.width, ("vision_embed", "mlp"), self.dtype, "fc1")(x)
      x = nn.with_logical_constraint(
          activations.get(self.activation)(x),
          ("activation_batch", "activation_length", "activation_mlp"))
      x = dense(self.width, ("mlp", "embed"), self.dtype, "fc2")(x)
    else:
      raise ValueError(f"Unknown projector kind {self.kind!r}; "
                       "expected 'linear' or 'mlp'.")
    return nn.with_logical_constraint(
        x, ("activation_batch", "activation_length", "activation_embed"))


class PerceiverResampler(nn.Module):
  """Flamingo's Perceiver resampler: `num_latents` learned queries attend to the image
  tokens and to themselves, `depth` times (pre-LN attention and GELU MLP, residual), and
  replace the image tokens: the decoder sees num_latents tokens whatever the patch grid.

  Attributes:
    num_latents, depth, num_heads, mlp_dim: as named; width is the input's.
    dtype: compute dtype; params stay float32.
  """
  num_latents: int
  depth: int
  num_heads: int
  mlp_dim: int
  dtype: jnp.dtype = jnp.float32

  def forward_flops(self, num_tokens: int, width: int) -> float:
    """Matmul FLOPs of one image's resampling."""
    n, kv, h = self.num_latents, self.num_latents + num_tokens, width
    per_layer = (2 * n * width * h * 2 + 2 * kv * width * h * 2  # q, o; k, v.
                 + 2 * 2 * n * kv * h + 2 * 2 * n * width * self.mlp_dim)
    return self.depth * per_layer

  @nn.compact
  def __call__(self, x):
    """[batch, n, width] -> [batch, num_latents, width]."""
    b, _, width = x.shape
    d = width // self.num_heads
    names = ("activation_batch", "activation_length", "activation_embed")
    latents = self.param("latents", nn.with_logical_partitioning(
        nn.initializers.normal(0.02), ("image_tokens", "embed")),
                         (self.num_latents, width), jnp.float32)
    y = jnp.broadcast_to(latents.astype(self.dtype)[None], (b, self.num_latents, width))
    x = x.astype(self.dtype)
    for i in range(self.depth):
      def proj(name, inputs):
        kernel = self.param(f"layer_{i}_{name}", nn.with_logical_partitioning(
            nn.initializers.lecun_normal(in_axis=0, out_axis=(1, 2)),
            ("embed", "heads", "head_dim")), (width, self.num_heads, d), jnp.float32)
        return matmul.contract(inputs, kernel.astype(self.dtype))

      q_in = layer_norm(self.dtype, f"layer_{i}_norm_latents")(y)
      kv_in = jnp.concatenate([layer_norm(self.dtype, f"layer_{i}_norm_image")(x), q_in],
                              axis=1)
      out = attention.dot_product_attention(proj("query", q_in), proj("key", kv_in),
                                            proj("value", kv_in))
      wo = self.param(f"layer_{i}_out", nn.with_logical_partitioning(
          nn.initializers.lecun_normal(in_axis=(0, 1), out_axis=2),
          ("heads", "head_dim", "embed")), (self.num_heads, d, width), jnp.float32)
      y = y + matmul.contract(out, wo.astype(self.dtype), 2)
      h = dense(self.mlp_dim, ("embed", "mlp"), self.dtype, f"layer_{i}_mlp_in")(
          layer_norm(self.dtype, f"layer_{i}_norm_mlp")(y))
      y = y + dense(width, ("mlp", "embed"), self.dtype, f"layer_{i}_mlp_out")(nn.gelu(h))
      y = nn.with_logical_constraint(y, names)
    return layer_norm(self.dtype, "norm_out")(y)


def merge_tokens(x, m):
  """Concatenates each m x m block of a square token grid into one token.

  [batch, g*g, d] (row-major g x g grid) -> [batch, (g/m)**2, m*m*d], the
  blocks again row-major, each block's tokens row-major inside it.
  """
  b, n, d = x.shape
  g = math.isqrt(n)
  if g * g != n or g % m:
    raise ValueError(f"Cannot merge {m}x{m} tokens of a {n}-token grid; the grid must be "
                     f"square with a side divisible by {m}.")
  x = x.reshape(b, g // m, m, g // m, m, d).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (g // m) ** 2, m * m * d)


def prefix_lm_mask(ar_mask, input_mask):
  """Prefix-LM attention mask, big_vision style.

  Each position carries an autoregressive flag. `cumsum(ar_mask)` numbers the
  "blocks" of the sequence: a run of ar=0 tokens shares the block number of
  the token before it, and every ar=1 token opens a new block. Query i may see
  key j iff block(j) <= block(i). So a leading run of ar=0 tokens (image
  tokens and the prompt) is one fully visible prefix, and ar=1 tokens (the
  targets) are causal: each sees the prefix, earlier targets and itself.

  Padding (input_mask False) is never attended to, and padded queries attend
  to nothing (their outputs are meaningless and must be ignored by the loss).

  Args:
    ar_mask: [batch, seq] int/bool, 1 for causal tokens, 0 for prefix tokens.
    input_mask: [batch, seq] bool, False at padding.

  Returns:
    [batch, seq, seq] bool, True where query (axis 1) may attend key (axis 2).
  """
  block = jnp.cumsum(ar_mask.astype(jnp.int32), axis=1)
  visible = block[:, None, :] <= block[:, :, None]
  input_mask = input_mask.astype(bool)
  valid = input_mask[:, None, :] & input_mask[:, :, None]
  return visible & valid
