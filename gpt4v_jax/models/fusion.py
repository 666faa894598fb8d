"""Glue between the vision encoder and the decoder.

* `Projector` maps ViT tokens into the decoder's embedding space.
* `prefix_lm_mask` builds the attention mask of the fused sequence
  [image tokens, prompt tokens, target tokens].
"""
import math

import jax.numpy as jnp
import flax.linen as nn

from gpt4v_jax.models.vit import dense


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
  """
  kind: str
  width: int
  merge: int = 1
  dtype: jnp.dtype = jnp.float32

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
          nn.gelu(x),
          ("activation_batch", "activation_length", "activation_mlp"))
      x = dense(self.width, ("mlp", "embed"), self.dtype, "fc2")(x)
    else:
      raise ValueError(f"Unknown projector kind {self.kind!r}; "
                       "expected 'linear' or 'mlp'.")
    return nn.with_logical_constraint(
        x, ("activation_batch", "activation_length", "activation_embed"))


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
