"""Image-text embeddings and the contrastive losses that train them (SigLIP, CLIP).

`ContrastiveHead` sits on a `GPT4V` (`GPT4V.contrastive_outputs`): it pools the ViT's tokens
into one image embedding and the decoder's final states (the text tower: the same decoder the
other objectives train, run without the image) into one text embedding, both projected to
`embed_dim` and L2-normalised, and holds the loss's learnable temperature and bias.

The losses see the global batch: inside the jitted step the image embeddings stay sharded over
the batch axes while the text embeddings are gathered to every device (one all-gather of
[batch, embed_dim]), so each device scores its images against every text of the batch and the
loss equals one device's (tests/test_contrastive.py).
"""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from gpt4v_jax.models.vit import MAPHead, dense

LOSSES = ("sigmoid", "softmax")
IMAGE_POOLS = ("map", "mean")
TEXT_POOLS = ("last", "mean")
# Initial temperature and bias as their papers set them: SigLIP (Zhai et al. 2023, sec. 3.2)
# starts at t = 10, b = -10 so that the many negatives begin near zero probability; CLIP
# (Radford et al. 2021) at a logit scale of 1 / 0.07, capped at 100 while training.
SIGLIP_INIT = (math.log(10.0), -10.0)
CLIP_INIT = math.log(1 / 0.07)
CLIP_MAX_SCALE = 100.0


class ContrastiveHead(nn.Module):
  """Pools and projects image tokens and text states into a joint embedding space.

  Attributes:
    embed_dim: width of the joint embedding.
    loss: "sigmoid" (SigLIP: learnable temperature and bias) or "softmax" (CLIP: learnable
      temperature only).
    image_pool: "map" (SigLIP's attention-pooling head) or "mean" (mean of the tokens).
    text_pool: "last" (CLIP: the EOS token's state, the text read causally) or "mean" (the
      mean over valid tokens, the text read bidirectionally); see `GPT4V.embed_texts`.
    map_heads, map_mlp_dim: the "map" head's attention heads and MLP width.
    dtype: compute dtype; params and outputs float32.
  """
  embed_dim: int
  loss: str = "sigmoid"
  image_pool: str = "map"
  text_pool: str = "last"
  map_heads: int = 4
  map_mlp_dim: int = 512
  dtype: jnp.dtype = jnp.float32

  def __post_init__(self):
    for name, value, allowed in (("loss", self.loss, LOSSES),
                                 ("image_pool", self.image_pool, IMAGE_POOLS),
                                 ("text_pool", self.text_pool, TEXT_POOLS)):
      if value not in allowed:
        raise ValueError(f"config.objective {name}={value!r}: expected one of {allowed}.")
    super().__post_init__()

  def setup(self):
    if self.image_pool == "map":
      self.image_pool_head = MAPHead(self.map_mlp_dim, self.map_heads, self.dtype)
    self.image_proj = dense(self.embed_dim, ("vision_embed", None), self.dtype, "image_proj")
    self.text_proj = dense(self.embed_dim, ("embed", None), self.dtype, "text_proj")
    t_init = SIGLIP_INIT[0] if self.loss == "sigmoid" else CLIP_INIT
    self.temperature = self.param("temperature", nn.with_logical_partitioning(
        nn.initializers.constant(t_init), ()), (), jnp.float32)
    if self.loss == "sigmoid":
      self.bias = self.param("bias", nn.with_logical_partitioning(
          nn.initializers.constant(SIGLIP_INIT[1]), ()), (), jnp.float32)

  def embed_image(self, tokens):
    """ViT tokens [batch, n, vision_width] -> L2-normalised [batch, embed_dim] float32."""
    if self.image_pool == "map":
      pooled = self.image_pool_head(tokens.astype(self.dtype))
    else:
      pooled = jnp.mean(tokens.astype(jnp.float32), axis=1).astype(self.dtype)
    return _normalize(self.image_proj(pooled))

  def embed_text(self, states, input_mask):
    """Decoder states [batch, t, width] and input_mask [batch, t] bool (valid tokens, left
    aligned) -> L2-normalised [batch, embed_dim] float32."""
    if self.text_pool == "last":
      last = jnp.maximum(jnp.sum(input_mask, axis=1, dtype=jnp.int32) - 1, 0)
      pooled = states[jnp.arange(states.shape[0]), last]
    else:
      m = input_mask.astype(jnp.float32)[..., None]
      pooled = (jnp.sum(states.astype(jnp.float32) * m, axis=1)
                / jnp.maximum(jnp.sum(m, axis=1), 1.0)).astype(self.dtype)
    return _normalize(self.text_proj(pooled))

  def logit_scale_and_bias(self):
    """(scale [] = exp(temperature) (CLIP's capped at 100), bias [] (0 for softmax))."""
    scale = jnp.exp(self.temperature)
    if self.loss == "softmax":
      return jnp.minimum(scale, CLIP_MAX_SCALE), jnp.float32(0.0)
    return scale, self.bias

  def __call__(self, image_tokens, states, input_mask):
    """Both embeddings and the logit scale and bias (what `init` runs to create every
    param): ([batch, embed_dim], [batch, embed_dim], [], [])."""
    return (self.embed_image(image_tokens), self.embed_text(states, input_mask),
            *self.logit_scale_and_bias())


def _normalize(x):
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-12))


def pair_logits(image_emb, text_emb, scale, bias):
  """Every image of the global batch against every text: [batch_images, batch_texts] float32,
  rows sharded over the batch axes, the texts gathered to every device."""
  text_emb = nn.with_logical_constraint(text_emb, (None, None))  # The all-gather.
  image_emb = nn.with_logical_constraint(image_emb, ("activation_batch", None))
  logits = jnp.einsum("id,td->it", image_emb, text_emb,
                      precision=jax.lax.Precision.HIGHEST) * scale + bias
  return nn.with_logical_constraint(logits, ("activation_batch", None))


def contrastive_loss(kind, image_emb, text_emb, scale, bias):
  """The batch's loss and metrics; pair i of the batch (image i, text i) is the positive,
  every other pairing a negative.

  kind "sigmoid" (SigLIP): -sum_ij log sigmoid(z_ij (scale x_i.y_j + bias)) / batch, z_ij = 1
  on the diagonal and -1 off it. kind "softmax" (CLIP): the mean of the image->text and
  text->image cross-entropies over the batch.

  Args:
    image_emb, text_emb: [batch, embed_dim] L2-normalised.
    scale, bias: [] float32 (`ContrastiveHead.logit_scale_and_bias`).

  Returns:
    (loss [], dict(batch_accuracy: image->text top-1 accuracy within the batch, temperature,
    bias)).
  """
  logits = pair_logits(image_emb, text_emb, scale, bias)
  b = logits.shape[0]
  eye = jnp.eye(b, dtype=bool)
  if kind == "sigmoid":
    z = jnp.where(eye, 1.0, -1.0)
    loss = -jnp.sum(jax.nn.log_sigmoid(z * logits)) / b
  else:
    diag = jnp.sum(jnp.where(eye, logits, 0.0), axis=1)
    i2t = jax.nn.logsumexp(logits, axis=1) - diag
    t2i = jax.nn.logsumexp(logits, axis=0) - diag
    loss = 0.5 * (jnp.mean(i2t) + jnp.mean(t2i))
  accuracy = jnp.mean(jnp.argmax(logits, axis=1) == jnp.arange(b))
  return loss, dict(batch_accuracy=accuracy, temperature=scale, bias=bias)
