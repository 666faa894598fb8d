"""Tests for the ViT, decoder, fusion helpers and the composed GPT4V model.

Compiles dominate the runtime on CPU (param init in particular), so shape-only
checks use `jax.eval_shape` and numeric checks share one initialized model.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import flax.linen as nn

from configs import shapes_caption
from gpt4v_jax import decode, sharding
from gpt4v_jax.models import decoder as decoder_lib
from gpt4v_jax.models import cnn
from gpt4v_jax.models import fusion
from gpt4v_jax.models import gpt4v
from gpt4v_jax.models import attention, matmul
from gpt4v_jax.models import vit as vit_lib

RULES = sharding.DEFAULT_RULES
PARAM_NAMES = {"embed", "mlp", "heads", "kv_heads", "head_dim", "vocab", "norm",
               "patch", "image_tokens", "vision_embed", "conv_height", "conv_width", "conv_in",
               "conv_out", "layers"}
NUM_IMAGE_TOKENS = 16  # nano/16 on 64x64 images.
VOCAB = 128
BATCH = 8  # Divisible by the 2x4 ("data", "fsdp") mesh.


def small_config(**overrides):
  cfg = shapes_caption.get_config().model
  cfg.update(vit_variant="nano/16", width=64, depth=2, mlp_dim=128,
             num_heads=4, num_kv_heads=2, vocab_size=VOCAB, projector="mlp",
             mlp_type="gated")
  cfg.update(overrides)
  return cfg


def make_batch(batch=BATCH, text_len=8, prompt_len=3, seed=0):
  """Images, text and masks; row i has i % 4 trailing padding tokens."""
  rng = np.random.default_rng(seed)
  images = jnp.asarray(rng.uniform(-1, 1, (batch, 64, 64, 3)), jnp.float32)
  # Ids below VOCAB - 1, so tests can add 1 to a token.
  text = jnp.asarray(rng.integers(1, VOCAB - 1, (batch, text_len)), jnp.int32)
  idx = np.arange(text_len)[None, :]
  ar_mask = jnp.asarray(np.broadcast_to(idx >= prompt_len, (batch, text_len)))
  input_mask = jnp.asarray(idx < text_len - np.arange(batch)[:, None] % 4)
  return images, text, ar_mask, input_mask


def numpy_init(module, *args):
  """Unboxed random variables without compiling RNG code (slow on CPU)."""
  shapes = nn.unbox(jax.eval_shape(module.init, jax.random.key(0), *args))
  rng = np.random.default_rng(0)
  return jax.tree.map(
      lambda s: jnp.asarray(rng.normal(0, 0.2, s.shape), s.dtype), shapes)


@pytest.fixture(scope="module")
def model():
  return gpt4v.build_model(small_config())


@pytest.fixture(scope="module")
def variables(model):
  return jax.jit(model.init)(jax.random.key(0), *make_batch())


@pytest.fixture(scope="module")
def apply(model):
  return jax.jit(model.apply)


@pytest.mark.parametrize("spec,num_axes,transpose_w", [
    ("bte,ef->btf", 1, False), ("bte,ehd->bthd", 1, False), ("bthd,hde->bte", 2, False),
    ("bte,ve->btv", 1, True)])
def test_contract_matches_einsum_with_gradients(spec, num_axes, transpose_w):
  """matmul.contract (one 2D dot) is the einsum it replaces, forward and backward."""
  rng = np.random.default_rng(0)
  lhs, rhs = spec.split("->")[0].split(",")
  sizes = dict(b=2, t=5, e=6, f=7, h=3, d=4, v=9)
  x = jnp.asarray(rng.normal(size=[sizes[a] for a in lhs]), jnp.float32)
  w = jnp.asarray(rng.normal(size=[sizes[a] for a in rhs]), jnp.float32)
  dy = jnp.asarray(rng.normal(size=[sizes[a] for a in spec.split("->")[1]]), jnp.float32)
  ours = jax.vjp(lambda x, w: matmul.contract(x, w, num_axes, transpose_w=transpose_w), x, w)
  ref = jax.vjp(lambda x, w: jnp.einsum(spec, x, w), x, w)
  np.testing.assert_allclose(ours[0], ref[0], rtol=1e-5, atol=1e-5)
  for got, want in zip(ours[1](dy), ref[1](dy)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="Contracted axes differ"):
    matmul.contract(x, w[..., :1] if transpose_w else w[:1], num_axes, transpose_w=transpose_w)


@pytest.mark.parametrize("heads,kv_heads,mask_heads", [(4, 4, 1), (4, 2, 1), (4, 2, 4),
                                                        (4, 1, 0)])
def test_attention_matches_jax_with_gradients(heads, kv_heads, mask_heads):
  """attention.dot_product_attention (normalised after the value matmul) against
  jax.nn.dot_product_attention, forward and backward: GQA, shared and per-head masks, rows
  with no allowed key (uniform, as jax's), and no mask (mask_heads 0)."""
  rng = np.random.default_rng(0)
  b, t, s, d = 2, 5, 6, 8
  q = jnp.asarray(rng.normal(size=(b, t, heads, d)), jnp.float32)
  k, v = (jnp.asarray(rng.normal(size=(b, s, kv_heads, d)), jnp.float32) for _ in range(2))
  mask = None
  if mask_heads:
    mask = jnp.asarray(rng.random((b, mask_heads, t, s)) < 0.6).at[:, :, 0].set(False)
  dy = jnp.asarray(rng.normal(size=(b, t, heads, d)), jnp.float32)
  ours = jax.vjp(lambda q, k, v: attention.dot_product_attention(q, k, v, mask), q, k, v)
  ref = jax.vjp(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, mask=mask), q, k, v)
  np.testing.assert_allclose(ours[0], ref[0], rtol=1e-5, atol=1e-5)
  for got, want in zip(ours[1](dy), ref[1](dy)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_rope_matches_numpy_rotate_half():
  """apply_rope against the rotate-half formula in numpy: position p rotates dimension
  pair (i, i + d/2) by p * base^(-i / (d/2))."""
  rng = np.random.default_rng(0)
  b, t, h, d = 2, 7, 3, 8
  x = rng.normal(size=(b, t, h, d)).astype(np.float32)
  positions = rng.integers(0, 500, size=(b, t))
  angle = positions[..., None, None] * 10000.0 ** (-np.arange(d // 2) / (d // 2))
  x1, x2 = x[..., :d // 2], x[..., d // 2:]
  want = np.concatenate([x1 * np.cos(angle) - x2 * np.sin(angle),
                         x2 * np.cos(angle) + x1 * np.sin(angle)], axis=-1)
  got = decoder_lib.apply_rope(jnp.asarray(x), jnp.asarray(positions), 10000.0)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  assert decoder_lib.apply_rope(jnp.asarray(x, jnp.bfloat16), jnp.asarray(positions),
                                10000.0).dtype == jnp.bfloat16


def test_vit_variant():
  assert vit_lib.vit_variant("mu/8") == dict(
      width=128, depth=4, mlp_dim=512, num_heads=4, patch_size=8)
  assert vit_lib.vit_variant("nano/16") == dict(
      width=64, depth=2, mlp_dim=256, num_heads=2, patch_size=16)
  assert vit_lib.vit_variant("B/16") == dict(
      width=768, depth=12, mlp_dim=3072, num_heads=12, patch_size=16)
  assert vit_lib.vit_variant("Ti/16")["width"] == 192
  assert vit_lib.vit_variant("S/8")["num_heads"] == 6
  assert vit_lib.vit_variant("L/14")["depth"] == 24
  for bad in ("XL/16", "B", "B/x", "nano16"):
    with pytest.raises(ValueError, match=bad):
      vit_lib.vit_variant(bad)


def test_vit_shape():
  vit = vit_lib.ViT(**vit_lib.vit_variant("nano/16"))
  out, _ = jax.eval_shape(vit.init_with_output, jax.random.key(0),
                          make_batch()[0])
  assert out.shape == (BATCH, NUM_IMAGE_TOKENS, 64)
  assert vit.num_patches == NUM_IMAGE_TOKENS


def test_vit_conv_stem_keeps_the_token_grid():
  vit = vit_lib.ViT(**vit_lib.vit_variant("nano/16"), stem="conv")
  out, params = jax.eval_shape(vit.init_with_output, jax.random.key(0),
                               make_batch()[0])
  assert out.shape == (BATCH, NUM_IMAGE_TOKENS, 64)
  # log2(16) = 4 stride-2 convs, channels doubling up to width / 2.
  convs = [params["params"][f"stem_conv_{i}"]["kernel"] for i in range(4)]
  assert [nn.unbox(k).shape[-1] for k in convs] == [4, 8, 16, 32]
  with pytest.raises(ValueError, match="power-of-two"):
    vit_lib.ViT(**vit_lib.vit_variant("nano/12"), image_size=48, stem="conv").init(
        jax.random.key(0), jnp.zeros((1, 48, 48, 3)))


def test_merge_tokens_matches_loops():
  b, g, m, d = 2, 4, 2, 3
  x = np.random.default_rng(0).normal(size=(b, g * g, d)).astype(np.float32)
  expected = np.zeros((b, (g // m) ** 2, m * m * d))
  for i in range(g // m):
    for j in range(g // m):
      sub = [x[:, (i * m + a) * g + j * m + c] for a in range(m) for c in range(m)]
      expected[:, i * (g // m) + j] = np.concatenate(sub, axis=-1)
  np.testing.assert_array_equal(fusion.merge_tokens(jnp.asarray(x), m), expected)
  with pytest.raises(ValueError, match="merge 3x3"):
    fusion.merge_tokens(jnp.asarray(x), 3)


def test_sincos_2d_encodes_column_then_row():
  side, width = 3, 16
  freqs = 1.0 / 10_000.0 ** (np.arange(4) / 4)
  table = np.asarray(fusion.sincos_2d(side, width))
  for r in range(side):
    for c in range(side):
      expected = np.concatenate([np.sin(c * freqs), np.cos(c * freqs),
                                 np.sin(r * freqs), np.cos(r * freqs)])
      np.testing.assert_allclose(table[r * side + c], expected, atol=1e-6)
  with pytest.raises(ValueError, match="divisible by 4"):
    fusion.sincos_2d(side, 18)


def test_image_positions_add_the_grid_table_to_the_image_tokens(model, variables):
  images = make_batch()[0]
  with_positions = gpt4v.build_model(small_config(image_positions="sincos2d"))
  plain = gpt4v.build_model(small_config(image_positions="none"))
  encode = lambda m: m.apply(variables, images, method=m.encode_images)
  np.testing.assert_allclose(encode(with_positions) - encode(plain),
                             np.broadcast_to(fusion.sincos_2d(4, 64), (BATCH, 16, 64)),
                             atol=1e-5)
  with pytest.raises(ValueError, match="image_positions='grid'"):
    gpt4v.build_model(small_config(image_positions="grid"))


def test_merged_projector_shortens_the_image_prefix():
  model = gpt4v.build_model(small_config(vit_variant="nano/8", projector_merge=2))
  variables = model.init(jax.random.key(0), *make_batch())
  assert model.num_image_tokens == 16  # 8x8 patches of 64x64, merged 2x2.
  assert model.apply(variables, *make_batch()).shape == (BATCH, 8, VOCAB)


def test_resnet_stem_grid_and_identity_init():
  vit = vit_lib.ViT(**vit_lib.vit_variant("nano/8"), stem="resnet", stem_blocks=2)
  images = make_batch()[0]
  out, params = jax.eval_shape(vit.init_with_output, jax.random.key(0), images)
  assert out.shape == (BATCH, 64, 64)  # 8x8 grid of width-64 tokens.
  stem = params["params"]["stem"]
  # log2(8) = 3 stages of 2 blocks, channels doubling up to the ViT width.
  assert [nn.unbox(stem[f"stage{i}_block0"]["conv2"]["kernel"]).shape[-1]
          for i in range(3)] == [16, 32, 64]
  assert "shortcut" not in stem["stage0_block1"]  # Same shape: identity shortcut.

  # The zero-initialised last norm makes each residual branch start at 0.
  block = cnn.ResidualBlock(8)
  x = jax.random.normal(jax.random.key(1), (2, 8, 8, 8))
  y = block.apply(block.init(jax.random.key(2), x), x)
  np.testing.assert_allclose(y, nn.gelu(x), atol=1e-6)


def test_gpt4v_shape(model, variables, apply):
  logits = apply(variables, *make_batch())
  assert logits.shape == (BATCH, 8, VOCAB) and logits.dtype == jnp.float32
  assert model.num_image_tokens == NUM_IMAGE_TOKENS


def test_decoder_cache_matches_no_cache(model, variables):
  """The decoder alone, on the GPT4V decoder params: shapes and cache."""
  dec = model.decoder
  dec_vars = {"params": variables["params"]["decoder"]}
  b, t, max_len = 2, 5, 9
  tokens = jnp.arange(b * t, dtype=jnp.int32).reshape(b, t)
  positions = jnp.broadcast_to(jnp.arange(t), (b, t))
  causal = jnp.broadcast_to(jnp.tril(jnp.ones((t, t), bool)), (b, t, t))

  def run(module, cache):
    x = module.embed(tokens)
    if cache is None:
      return module(x, positions, causal)
    mask = jnp.pad(causal, ((0, 0), (0, 0), (0, max_len - t)))
    return module(x, positions, mask, cache=cache, cache_index=jnp.int32(0))

  logits, no_cache = jax.jit(nn.apply(run, dec))(dec_vars, None)
  assert logits.shape == (b, t, VOCAB) and logits.dtype == jnp.float32
  assert no_cache is None

  empty = dec.init_cache(b, max_len)
  assert len(empty) == 2
  assert empty[0]["k"].shape == (b, 2, max_len, 16)
  logits_cached, filled = jax.jit(nn.apply(run, dec))(dec_vars, empty)
  np.testing.assert_allclose(logits_cached, logits, atol=1e-5)
  assert jax.tree.map(jnp.shape, filled) == jax.tree.map(jnp.shape, empty)
  assert jnp.all(jnp.any(filled[0]["k"][:, :, :t] != 0, axis=(1, 3)))
  assert not jnp.any(filled[0]["k"][:, :, t:])  # Only slots [0, t) are written.


def test_decoder_validates_heads():
  with pytest.raises(ValueError, match="num_kv_heads"):
    decoder_lib.Decoder(vocab_size=VOCAB, width=64, depth=1, mlp_dim=128,
                        num_heads=4, num_kv_heads=3)
  with pytest.raises(ValueError, match="even"):
    decoder_lib.Decoder(vocab_size=VOCAB, width=60, depth=1, mlp_dim=128,
                        num_heads=4, num_kv_heads=2)
  with pytest.raises(ValueError, match="num_kv_heads"):
    gpt4v.build_model(small_config(num_kv_heads=3))


def test_code_positions_embed_the_kth_code_token():
  """Tokens from id 10 up are image codes: the k-th of a row (after codes_before) adds
  position embedding k, clipped to the last; other tokens embed as without positions."""
  dec = decoder_lib.Decoder(vocab_size=16, width=8, depth=1, mlp_dim=16, num_heads=2,
                            num_kv_heads=1, code_ids=(10, 16), num_code_positions=4)
  tokens = jnp.array([[1, 10, 11, 2, 15], [12, 3, 4, 13, 14]])
  before = jnp.array([2, 0])
  expected = np.full(tokens.shape, -1)
  for row in range(2):  # A loop, counting codes left to right.
    k = int(before[row])
    for i, token in enumerate(np.asarray(tokens[row])):
      if token >= 10:
        expected[row, i], k = k, k + 1
  np.testing.assert_array_equal(dec.code_index(tokens, before), expected)
  np.testing.assert_array_equal(dec.code_index(tokens)[1], expected[1])

  variables = dec.init(jax.random.key(0), tokens, method="embed")["params"]
  x = dec.apply({"params": variables}, tokens, before, method="embed")
  table = np.asarray(nn.unbox(variables["embedding"]))
  positions = np.asarray(nn.unbox(variables["code_position_embedding"]))
  reference = table[np.asarray(tokens)] + np.where(
      (expected >= 0)[..., None], positions[np.clip(expected, 0, 3)], 0)
  np.testing.assert_allclose(x, reference * 8**0.5, rtol=1e-6)
  with pytest.raises(ValueError, match="code_ids"):
    decoder_lib.Decoder(vocab_size=16, width=8, depth=1, mlp_dim=16, num_heads=2,
                        num_kv_heads=1, code_ids=(10, 20), num_code_positions=4)


def test_prefix_lm_mask_matches_loop():
  rng = np.random.default_rng(0)
  b, s = 6, 12
  # A prefix of random length, then causal tokens, then right padding.
  prefix = rng.integers(0, s, b)
  valid = rng.integers(1, s + 1, b)
  idx = np.arange(s)[None]
  ar_mask = (idx >= prefix[:, None]).astype(np.int32)
  input_mask = idx < valid[:, None]
  expected = np.zeros((b, s, s), bool)
  for n in range(b):
    for i in range(s):
      for j in range(s):
        if not (input_mask[n, i] and input_mask[n, j]):
          continue  # Padding neither attends nor is attended to.
        if i < prefix[n]:
          expected[n, i, j] = j < prefix[n]  # Prefix: sees the whole prefix.
        else:
          expected[n, i, j] = j <= i  # Target: prefix + causal.
  got = fusion.prefix_lm_mask(jnp.asarray(ar_mask), jnp.asarray(input_mask))
  np.testing.assert_array_equal(got, expected)


def test_prefix_lm_causality(variables, apply):
  images, text, ar_mask, input_mask = make_batch(prompt_len=3)
  base = apply(variables, images, text, ar_mask, input_mask)

  # Row 0 is unpadded. A target token only affects logits from its position.
  future = text.at[0, 5].add(1)
  changed = apply(variables, images, future, ar_mask, input_mask)
  np.testing.assert_allclose(changed[0, :5], base[0, :5], atol=1e-6)
  assert not np.allclose(changed[0, 5:], base[0, 5:], atol=1e-4)
  np.testing.assert_array_equal(changed[1:], base[1:])

  # The prompt is a bidirectional prefix: its last token affects every logit.
  prompt = text.at[0, 2].add(1)
  changed = apply(variables, images, prompt, ar_mask, input_mask)
  assert np.all(np.abs(changed[0] - base[0]).max(axis=-1) > 1e-4)


def test_padding_is_not_attended(variables, apply):
  images, text, ar_mask, input_mask = make_batch()
  base = apply(variables, images, text, ar_mask, input_mask)
  # Row 3 has three padded positions; changing them is a no-op for the rest.
  padded = text.at[3, -3:].add(1)
  out = apply(variables, images, padded, ar_mask, input_mask)
  np.testing.assert_allclose(out[3, :-3], base[3, :-3], atol=1e-6)


def test_hidden_images_do_not_affect_text(variables, apply):
  """Hidden images, whatever they are, leave the text's logits alone; so does no image."""
  images, text, ar_mask, input_mask = make_batch()
  hidden = jnp.zeros(images.shape[0], bool)
  base = apply(variables, images, text, ar_mask, input_mask, image_mask=hidden)
  out = apply(variables, -images, text, ar_mask, input_mask, image_mask=hidden)
  # Padded positions attend to nothing: their outputs are meaningless.
  np.testing.assert_allclose(out[input_mask], base[input_mask], atol=1e-6)
  visible = apply(variables, images, text, ar_mask, input_mask)
  assert not np.allclose(visible, base, atol=1e-4)
  # No images at all: the text alone, shifted 16 positions, which RoPE does not see.
  none = apply(variables, None, text, ar_mask, input_mask)
  np.testing.assert_allclose(none[input_mask], base[input_mask], atol=1e-5)


@pytest.mark.parametrize("num_kv_heads", [1, 2, 4])
def test_gqa(num_kv_heads):
  # A one-block decoder keeps the three compiles cheap.
  dec = decoder_lib.Decoder(vocab_size=VOCAB, width=64, depth=1, mlp_dim=128,
                            num_heads=4, num_kv_heads=num_kv_heads)
  b, t = 2, 4
  x = jax.random.normal(jax.random.key(1), (b, t, 64))
  positions = jnp.broadcast_to(jnp.arange(t), (b, t))
  causal = jnp.broadcast_to(jnp.tril(jnp.ones((t, t), bool)), (b, t, t))
  dec_vars = numpy_init(dec, x, positions, causal)
  assert dec_vars["params"]["block_0"]["attn"]["key"].shape == (
      64, num_kv_heads, 16)
  logits, _ = jax.jit(dec.apply)(dec_vars, x, positions, causal)
  assert logits.shape == (b, t, VOCAB)
  assert np.all(np.isfinite(logits))


@pytest.mark.parametrize("overrides", [
    dict(),
    dict(projector="linear", mlp_type="gelu", tie_embeddings=False,
         dtype="bfloat16", remat="save_dots", vit_stem="conv"),
    dict(vit_variant="nano/8", projector_merge=2),
    dict(vit_stem="resnet", vit_stem_blocks=2),
    dict(scan_layers=True, remat="full"),
    dict(fusion="cross_attention", cross_attention_every=2),
    dict(encoder="cnn", vit_stem_blocks=2),
    dict(resampler_latents=4, resampler_depth=2, fusion="cross_attention"),
])
def test_every_param_has_logical_names(overrides):
  model = gpt4v.build_model(small_config(**overrides))
  boxed = jax.eval_shape(model.init, jax.random.key(0), *make_batch())
  specs = nn.get_partition_spec(boxed)
  values = nn.unbox(boxed)
  is_spec = lambda x: isinstance(x, jax.sharding.PartitionSpec)
  flat_specs = jax.tree.leaves(specs, is_leaf=is_spec)
  flat_values = jax.tree.leaves(values)
  assert len(flat_specs) == len(flat_values)
  for spec, value in zip(flat_specs, flat_values):
    assert is_spec(spec)
    assert len(spec) == value.ndim, spec
    assert set(spec) <= PARAM_NAMES, spec
    assert value.dtype == jnp.float32  # Params stay float32 in bf16 too.


def test_sharded_apply_matches_single_device(model, variables, apply):
  batch = make_batch()
  expected = apply(variables, *batch)

  # jax.make_mesh defaults to Explicit axes, under which
  # with_sharding_constraint is an assertion; Flax's logical constraints need
  # Auto axes.
  mesh = jax.make_mesh((2, 4, 1), ("data", "fsdp", "tensor"),
                       axis_types=(jax.sharding.AxisType.Auto,) * 3)
  shardings = nn.logical_to_mesh_sharding(
      nn.get_partition_spec(variables), mesh, RULES)
  params = jax.device_put(nn.unbox(variables), shardings)
  embedding = params["params"]["decoder"]["embedding"]
  assert embedding.sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")

  with jax.set_mesh(mesh), nn.logical_axis_rules(RULES):
    logits = jax.jit(model.apply)(params, *batch)
  assert logits.sharding.spec[0] == ("data", "fsdp")
  np.testing.assert_allclose(logits, expected, atol=1e-5)


@pytest.mark.parametrize("policy", ["full", "save_dots"])
def test_remat_matches(variables, apply, policy):
  remat_model = gpt4v.build_model(small_config(remat=policy))
  batch = make_batch()
  np.testing.assert_allclose(jax.jit(remat_model.apply)(variables, *batch),
                             apply(variables, *batch), atol=1e-6)
  # Every ViT and decoder block is checkpointed in the backward pass.
  loss = lambda v: jnp.mean(remat_model.apply(v, *batch) ** 2)
  jaxpr = str(jax.make_jaxpr(jax.grad(loss))(variables))
  assert jaxpr.count("remat") == 4
  with pytest.raises(ValueError, match="config.model.remat='some'"):
    gpt4v.build_model(small_config(remat="some")).init(jax.random.key(0), *batch)


@pytest.mark.parametrize("policy", ["full", "save_dots"])
def test_remat_gradients_match(policy):
  # Gradient compiles are slow on CPU: compare on the decoder alone.
  b, t = 2, 4
  x = jax.random.normal(jax.random.key(1), (b, t, 64))
  positions = jnp.broadcast_to(jnp.arange(t), (b, t))
  causal = jnp.broadcast_to(jnp.tril(jnp.ones((t, t), bool)), (b, t, t))

  def grads(remat):
    dec = decoder_lib.Decoder(vocab_size=VOCAB, width=64, depth=2, mlp_dim=128,
                              num_heads=4, num_kv_heads=2, remat=remat)
    loss = lambda v: jnp.mean(dec.apply(v, x, positions, causal)[0] ** 2)
    return jax.jit(jax.grad(loss))(numpy_init(dec, x, positions, causal))

  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
               grads(policy), grads("none"))


def test_bfloat16(variables, apply):
  bf16_model = gpt4v.build_model(small_config(dtype="bfloat16"))
  batch = make_batch()
  logits = jax.jit(bf16_model.apply)(variables, *batch)
  assert logits.dtype == jnp.float32
  # Same float32 params, bf16 compute: logits stay close.
  np.testing.assert_allclose(logits, apply(variables, *batch), atol=0.25)


def _stack_blocks(tree: dict, depth: int) -> dict:
  """Unrolled params {block_0: p0, block_1: p1, ...} -> scanned {blocks: stack(p0, p1, ...)}."""
  out = {k: v for k, v in tree.items() if not k.startswith("block_")}
  out["blocks"] = jax.tree.map(lambda *xs: jnp.stack(xs),
                               *[tree[f"block_{i}"] for i in range(depth)])
  return out


def test_scanned_layers_match_unrolled_forward_gradients_and_cached_decoding(variables, apply):
  """The same weights, stacked for nn.scan, give the same logits, gradients (restacked) and
  KV-cache greedy decoding as the unrolled blocks."""
  scanned = gpt4v.build_model(small_config(scan_layers=True))
  boxed = jax.eval_shape(scanned.init, jax.random.key(0), *make_batch())
  assert nn.get_partition_spec(boxed)["params"]["decoder"]["blocks"]["attn"]["query"] == (
      jax.sharding.PartitionSpec("layers", "embed", "heads", "head_dim"))
  params = nn.unbox(variables)["params"]
  stacked = dict(params, vit=_stack_blocks(params["vit"], 2),
                 decoder=_stack_blocks(params["decoder"], 2))
  jax.tree.map(lambda a, b: None if a.shape == b.shape else pytest.fail(f"{a.shape} {b.shape}"),
               stacked, nn.unbox(boxed)["params"])
  batch = make_batch()
  np.testing.assert_allclose(jax.jit(scanned.apply)({"params": stacked}, *batch),
                             apply(variables, *batch), atol=1e-5)

  loss = lambda model: jax.jit(jax.grad(
      lambda p: jnp.mean(model.apply({"params": p}, *batch) ** 2)))
  unrolled = loss(gpt4v.build_model(small_config()))(params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
               loss(scanned)(stacked),
               dict(unrolled, vit=_stack_blocks(unrolled["vit"], 2),
                    decoder=_stack_blocks(unrolled["decoder"], 2)))

  images, text, _, input_mask = batch
  prompt, prompt_mask = text[:, :4], input_mask[:, :4]
  greedy = lambda model, p: decode.greedy_decode(model, p, images, prompt, prompt_mask,
                                                 max_new_tokens=5, eos_id=-1, pad_id=0)
  np.testing.assert_array_equal(greedy(scanned, stacked),
                                greedy(gpt4v.build_model(small_config()), params))


def test_cross_attention_fusion_starts_text_only_and_decodes_like_its_forward_pass():
  model = gpt4v.build_model(small_config(fusion="cross_attention", cross_attention_every=1))
  assert model.num_image_tokens == 0 and model.num_vision_tokens == NUM_IMAGE_TOKENS
  images, text, ar_mask, input_mask = make_batch()
  other_images = -images
  params = nn.unbox(jax.jit(model.init)(jax.random.key(0), *make_batch()))["params"]
  assert set(params["decoder"]) >= {"xattn_0", "xattn_1"}
  apply = jax.jit(lambda p, images, image_mask=None: model.apply(
      {"params": p}, images, text, ar_mask, input_mask, image_mask=image_mask))
  # Zero-initialised tanh gates: the image has no effect yet.
  np.testing.assert_array_equal(apply(params, images), apply(params, other_images))
  gated = jax.tree_util.tree_map_with_path(
      lambda path, x: x + 0.5 if "gate" in jax.tree_util.keystr(path) else x, params)
  assert np.abs(apply(gated, images) - apply(gated, other_images)).max() > 1e-3
  # A hidden image is no image at all.
  hidden = jnp.zeros(BATCH, bool)
  np.testing.assert_allclose(apply(gated, images, hidden), apply(gated, other_images, hidden),
                             atol=1e-6)
  # KV-cache decoding (image tokens carried in the decode state) equals recomputing.
  prompt, prompt_mask = text[:, :4], input_mask[:, :4]
  kwargs = dict(max_new_tokens=5, eos_id=-1, pad_id=0)
  np.testing.assert_array_equal(
      decode.greedy_decode(model, gated, images, prompt, prompt_mask, **kwargs),
      decode.greedy_decode_no_cache(model, gated, images, prompt, prompt_mask, **kwargs))
  with pytest.raises(ValueError, match="fusion='sideways'"):
    gpt4v.build_model(small_config(fusion="sideways"))


def test_cnn_encoder_is_the_resnet_stem_alone():
  model = gpt4v.build_model(small_config(encoder="cnn"))
  params = jax.eval_shape(model.init, jax.random.key(0), *make_batch())["params"]["vit"]
  assert "stem" in params and not any(k.startswith("block") for k in params)
  logits = jax.jit(model.apply)(jax.jit(model.init)(jax.random.key(0), *make_batch()),
                                *make_batch())
  assert logits.shape == (BATCH, 8, VOCAB) and np.all(np.isfinite(logits))
  with pytest.raises(ValueError, match="config.model.encoder='rnn'"):
    gpt4v.build_model(small_config(encoder="rnn"))


def test_perceiver_resampler_replaces_the_image_tokens_with_its_latents():
  model = gpt4v.build_model(small_config(resampler_latents=4))
  assert model.num_image_tokens == model.num_vision_tokens == 4
  variables = jax.jit(model.init)(jax.random.key(0), *make_batch())
  assert nn.unbox(variables)["params"]["resampler"]["latents"].shape == (4, 64)
  images = make_batch()[0]
  tokens = jax.jit(lambda v, x: model.apply(v, x, method="encode_images"))(variables, images)
  assert tokens.shape == (BATCH, 4, 64)
  # Each example's latents depend on its own image only.
  flipped = jax.jit(lambda v, x: model.apply(v, x, method="encode_images"))(
      variables, images.at[0].set(-images[0]))
  assert np.abs(flipped[0] - tokens[0]).max() > 1e-3
  np.testing.assert_allclose(flipped[1:], tokens[1:], atol=1e-6)
