"""Scaled dot-product attention with the softmax normalised after the value matmul.

jax.nn.dot_product_attention divides every attention weight by its row's sum before the
value matmul: [batch, heads, t, s] divisions forward and their gradient backward. Dividing
the output [batch, t, heads, head_dim] instead (as flash attention does) gives the same
result with s / head_dim times fewer divisions; the row max is a constant to autodiff (the
result does not depend on it). Grouped-query attention (heads a multiple of kv_heads) needs
no repeated keys: the query heads of one kv head are a group axis.

`cached_attention` is the same computation over a KV cache in its own layout (decoding).
"""
import jax
import jax.numpy as jnp

# A masked logit: exp(_MASKED - row max) is 0 next to any real logit, and a row with no
# allowed key attends uniformly (as jax.nn.dot_product_attention's), never NaN.
_MASKED = -0.7 * float(jnp.finfo(jnp.float32).max)


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                          mask: jax.Array | None = None, scale: float | None = None) -> jax.Array:
  """softmax(scale q k^T) v, the softmax in float32.

  Args:
    q: [batch, t, heads, head_dim].
    k, v: [batch, s, kv_heads, head_dim]; heads % kv_heads == 0.
    mask: optional bool [batch, 1 or heads, t, s]; True = may attend.
    scale: the logits' factor; None for 1 / sqrt(head_dim).

  Returns:
    [batch, t, heads, head_dim], q's dtype.
  """
  b, t, heads, d = q.shape
  s, kv_heads = k.shape[1], k.shape[2]
  if heads % kv_heads:
    raise ValueError(f"heads={heads} is not a multiple of kv_heads={kv_heads}.")
  groups = heads // kv_heads
  scale = d ** -0.5 if scale is None else scale
  q = (q * jnp.asarray(scale, q.dtype)).reshape(b, t, kv_heads, groups, d)
  logits = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32)
  if mask is not None:
    mask = mask.reshape(b, -1, 1, t, s) if mask.shape[1] == 1 else mask.reshape(
        b, kv_heads, groups, t, s)
    logits = jnp.where(mask, logits, _MASKED)
  weights = jnp.exp(logits - jax.lax.stop_gradient(logits.max(axis=-1, keepdims=True)))
  out = jnp.einsum("bkgts,bskd->btkgd", weights.astype(v.dtype), v,
                   preferred_element_type=jnp.float32)
  # [batch, kv_heads, groups, t] row sums -> [batch, t, kv_heads, groups, 1].
  out = out / jnp.moveaxis(weights.sum(axis=-1), 3, 1)[..., None]
  return out.reshape(b, t, heads, d).astype(q.dtype)


def cached_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array,
                     scale: float | None = None) -> jax.Array:
  """`dot_product_attention` of new tokens over a KV cache laid out [batch, kv_heads, s,
  head_dim] (the decoder's), without moving the cache.

  A decode step's attention is batch x kv_heads small matmuls. With the cache in
  [batch, s, kv_heads, head_dim] XLA:CPU first copies all of it, transposed, into each dot's
  layout, every step and layer; in this layout both dots read it as it is. The logits are
  one dot per query head of a group, [t, head_dim] x [head_dim, s]: a matrix-vector product
  per row in a decode step, which XLA:CPU runs 2x faster than the [groups * t, head_dim]
  matmul. One layer's attention in a batch-64 decode step (cache writes included,
  experiments/benchmarks/decode_profile.py): 0.3 -> 0.08 ms for the default benchmark model,
  3 -> 0.7 ms for the mid one (which then reads its 12 MB of cache at memory speed). Same
  softmax (float32, normalised after the value matmul).

  Args:
    q: [batch, t, heads, head_dim].
    k, v: [batch, kv_heads, s, head_dim]; heads % kv_heads == 0.
    mask: bool [batch, t, s]; True = may attend.
    scale: the logits' factor; None for 1 / sqrt(head_dim).

  Returns:
    [batch, t, heads, head_dim], q's dtype.
  """
  b, t, heads, d = q.shape
  kv_heads = k.shape[1]
  if heads % kv_heads:
    raise ValueError(f"heads={heads} is not a multiple of kv_heads={kv_heads}.")
  groups = heads // kv_heads
  scale = d ** -0.5 if scale is None else scale
  q = (q * jnp.asarray(scale, q.dtype)).reshape(b, t, kv_heads, groups, d)
  q = jnp.moveaxis(q, 1, 3)  # [batch, kv_heads, groups, t, head_dim]; free for t = 1.
  logits = jnp.stack([jnp.einsum("bktd,bksd->bkts", q[:, :, g], k,
                                 preferred_element_type=jnp.float32)
                      for g in range(groups)], axis=2)  # [batch, kv_heads, groups, t, s]
  logits = jnp.where(mask[:, None, None, :, :], logits, _MASKED)
  weights = jnp.exp(logits - jax.lax.stop_gradient(logits.max(axis=-1, keepdims=True)))
  out = jnp.einsum("bkgts,bksd->bkgtd", weights.astype(v.dtype), v,
                   preferred_element_type=jnp.float32)
  out = out / weights.sum(axis=-1)[..., None]
  return jnp.moveaxis(out, 3, 1).reshape(b, t, heads, d).astype(q.dtype)
