"""The decode-path pieces against independent references: attention over a KV cache in the
decoder's layout, and RoPE with precomputed rotations."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpt4v_jax.models import attention
from gpt4v_jax.models import decoder as decoder_lib


@pytest.mark.parametrize("heads,kv_heads,t", [(4, 2, 1), (4, 1, 1), (4, 4, 1), (4, 2, 3)])
def test_cached_attention_matches_jax(heads, kv_heads, t):
  """cached_attention (cache [batch, kv_heads, s, head_dim]) against
  jax.nn.dot_product_attention on the same keys in [batch, s, kv_heads, head_dim]: GQA, MQA,
  MHA, a decode step (t = 1) and several new tokens, a row with no allowed slot (uniform)."""
  rng = np.random.default_rng(0)
  b, s, d = 3, 7, 8
  q = jnp.asarray(rng.normal(size=(b, t, heads, d)), jnp.float32)
  k, v = (jnp.asarray(rng.normal(size=(b, s, kv_heads, d)), jnp.float32) for _ in range(2))
  mask = jnp.asarray(rng.random((b, t, s)) < 0.6).at[0].set(False).at[1, :, 2].set(True)
  got = attention.cached_attention(q, jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2), mask)
  want = jax.nn.dot_product_attention(q, k, v, mask=mask[:, None])
  assert got.shape == (b, t, heads, d) and got.dtype == q.dtype
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_cached_attention_validates_heads():
  q = jnp.zeros((1, 1, 3, 4))
  kv = jnp.zeros((1, 2, 5, 4))
  with pytest.raises(ValueError, match="kv_heads=2"):
    attention.cached_attention(q, kv, kv, jnp.ones((1, 1, 5), bool))


def test_rope_with_precomputed_rotations_is_the_same():
  """Passing rope_rotations (computed once per decode step) rotates exactly as computing
  them inside apply_rope, also with the cos factor given for both halves."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 3, 4, 8)), jnp.float32)
  positions = jnp.asarray(rng.integers(0, 50, size=(2, 3)))
  cos, signed_sin = decoder_lib.rope_rotations(positions, 8, 10000.0)
  want = decoder_lib.apply_rope(x, positions, 10000.0)
  for rotations in ((cos, signed_sin), (jnp.concatenate([cos, cos], axis=-2), signed_sin)):
    np.testing.assert_array_equal(
        decoder_lib.apply_rope(x, positions, 10000.0, rotations), want)
