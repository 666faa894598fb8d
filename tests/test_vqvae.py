"""Tests for the VQ-VAE tokenizer: shapes, quantiser maths against numpy, loss.

Shape checks use `jax.eval_shape`; the quantiser is tested on its own with
hand-made codebooks, so only `test_loss_*` compiles the conv nets.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpt4v_jax import sharding
from gpt4v_jax.models import vqvae

# The logical names vqvae.py adds to those of sharding.DEFAULT_RULES.
NEW_NAMES = {"codebook", "code_dim"}
SMALL = dict(channels=16, num_res_blocks=1, num_codes=16, code_dim=8)


def quantizer_variables(codebook, ema_count=None):
  """Variables of an "ema" VectorQuantizer with this codebook [K, D]."""
  codebook = jnp.asarray(codebook, jnp.float32)
  if ema_count is None:
    ema_count = jnp.ones(codebook.shape[0])
  return {"vq_stats": {"codebook": codebook,
                       "ema_count": jnp.asarray(ema_count, jnp.float32),
                       "ema_sum": codebook * ema_count[:, None]}}


def numpy_init(model, images):
  """N(0, 0.1) variables without compiling RNG code (a minute on CPU).

  EMA state is made consistent: counts 1, sums equal to the codebook.
  """
  shapes = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), images))
  rng = np.random.default_rng(0)
  variables = jax.tree.map(
      lambda s: jnp.asarray(rng.normal(0, 0.1, s.shape), s.dtype), shapes)
  if "vq_stats" in variables:
    codebook = variables["vq_stats"]["quantizer"]["codebook"]
    variables["vq_stats"]["quantizer"] = quantizer_variables(codebook)[
        "vq_stats"]
  return variables


@pytest.mark.parametrize("downsample", [8, 4])
def test_encode_decode_shapes(downsample):
  model = vqvae.VQVAE(downsample=downsample, **SMALL)
  images = jnp.zeros((2, 64, 64, 3))
  variables = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), images))
  grid = 64 // downsample
  codes = jax.eval_shape(
      lambda v: model.apply(v, images, method=model.encode), variables)
  assert codes.shape == (2, grid, grid) and codes.dtype == jnp.int32
  decoded = jax.eval_shape(
      lambda v, c: model.apply(v, c, method=model.decode_codes), variables,
      codes)
  assert decoded.shape == (2, 64, 64, 3)
  recon, aux = jax.eval_shape(lambda v: model.apply(v, images), variables)
  assert recon.shape == (2, 64, 64, 3) and aux["codes"].shape == (2, grid, grid)


@pytest.mark.parametrize("local", [True, False])
def test_local_encoder_sees_only_its_patch(local):
  """A local encoder's latent for patch (1, 1) ignores every pixel outside that 8x8 patch
  (equal patches, equal codes); the default encoder's sees its neighbours."""
  encoder = vqvae.Encoder(16, 8, 1, 8, 8, local=local)
  images = jax.random.uniform(jax.random.key(0), (1, 64, 64, 3), minval=-1.0)
  variables = encoder.init(jax.random.key(1), images)
  changed = (images.at[:, :8].set(0.3).at[:, 16:].set(-0.7).at[:, 8:16, :8].set(0.9)
             .at[:, 8:16, 16:].set(-0.2))  # Every pixel but those of patch (1, 1).
  before, after = (np.asarray(encoder.apply(variables, x)) for x in (images, changed))
  same = np.allclose(before[0, 1, 1], after[0, 1, 1], rtol=0, atol=0)
  assert same == local
  assert not np.allclose(before[0, 0, 0], after[0, 0, 0])


@pytest.mark.parametrize("update", ["ema", "loss"])
def test_every_variable_has_logical_names(update):
  model = vqvae.VQVAE(codebook_update=update, **SMALL)
  boxed = jax.eval_shape(model.init, jax.random.key(0),
                         jnp.zeros((1, 64, 64, 3)))
  leaves = jax.tree.leaves(
      boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert all(isinstance(x, nn.LogicallyPartitioned) for x in leaves)
  assert all(len(x.names) == x.value.ndim for x in leaves)
  known = {name for name, _ in sharding.DEFAULT_RULES} | NEW_NAMES
  assert {n for x in leaves for n in x.names} <= known
  # The EMA codebook is state, not a param the optimizer would update.
  assert ("codebook" in str(jax.tree_util.tree_structure(boxed["params"]))) == (
      update == "loss")


def test_nearest_codes_matches_numpy():
  rng = np.random.default_rng(0)
  latents = rng.normal(size=(50, 8)).astype(np.float32)
  codebook = rng.normal(size=(16, 8)).astype(np.float32)
  codes, dist = vqvae.nearest_codes(jnp.asarray(latents), jnp.asarray(codebook))
  all_dist = ((latents[:, None, :] - codebook[None, :, :]) ** 2).sum(-1)
  np.testing.assert_array_equal(codes, all_dist.argmin(1))
  np.testing.assert_allclose(dist, all_dist.min(1), rtol=1e-4, atol=1e-4)


def test_quantizer_forward_is_nearest_entry_and_gradient_straight_through():
  rng = np.random.default_rng(1)
  codebook = rng.normal(size=(16, 8)).astype(np.float32)
  latents = jnp.asarray(rng.normal(size=(2, 3, 3, 8)), jnp.float32)
  cotangent = jnp.asarray(rng.normal(size=(2, 3, 3, 8)), jnp.float32)
  quantizer = vqvae.VectorQuantizer(16, 8)
  variables = quantizer_variables(codebook)

  def quantize(z):
    return quantizer.apply(variables, z, train=False)

  @jax.jit
  def forward_and_grad(z):
    # d<w, q(z)>/dz = w: the decoder's gradient reaches the encoder unchanged.
    grad = jax.grad(lambda z: jnp.sum(cotangent * quantize(z)[0]))(z)
    return quantize(z), grad

  (quantized, aux), grad = forward_and_grad(latents)
  np.testing.assert_allclose(quantized, codebook[np.asarray(aux["codes"])],
                             atol=1e-6)
  np.testing.assert_allclose(grad, cotangent, atol=1e-6)


def test_commitment_gradient_pulls_latents_to_their_codes():
  codebook = np.eye(4, dtype=np.float32)
  latents = jnp.asarray([[[[0.5, 0.0, 0.0, 0.1]]]])
  quantizer = vqvae.VectorQuantizer(4, 4)
  variables = quantizer_variables(codebook)

  def commitment(z):
    return quantizer.apply(variables, z, train=False)[1]["commitment_loss"]

  grad = jax.jit(jax.grad(commitment))(latents)
  # mean |z - e|^2 over 4 elements: 2 (z - e) / 4, e = code 0.
  np.testing.assert_allclose(grad[0, 0, 0], [-0.25, 0.0, 0.0, 0.05], atol=1e-6)


def numpy_ema(count, total, latents, codes, decay, eps):
  """The EMA formulas, one code at a time."""
  k = len(count)
  new_count = np.array([decay * count[j] + (1 - decay) * np.sum(codes == j)
                        for j in range(k)])
  new_sum = np.stack([
      decay * total[j] + (1 - decay) * latents[codes == j].sum(0)
      for j in range(k)])
  n = new_count.sum()
  smoothed = (new_count + eps) / (n + k * eps) * n
  return new_count, new_sum, new_sum / smoothed[:, None]


def test_ema_update_matches_numpy():
  codebook = np.array([[0, 0], [1, 0], [0, 1], [5, 5]], np.float32)
  count = np.array([2.0, 1.0, 0.5, 0.1], np.float32)
  # Codes 0, 0, 1, 2, 2, 2; nothing near code 3.
  latents = np.array([[0.1, 0.1], [-0.2, 0.0], [0.9, 0.1], [0.1, 1.2],
                      [0.0, 0.8], [-0.1, 1.0]], np.float32)
  decay, eps = 0.9, 0.01
  quantizer = vqvae.VectorQuantizer(4, 2, decay=decay, epsilon=eps)
  variables = quantizer_variables(codebook, count)
  apply = jax.jit(quantizer.apply, static_argnames=("train", "mutable"))
  (_, aux), updates = apply(variables, latents.reshape(1, 2, 3, 2),
                            train=True, mutable=("vq_stats",))
  np.testing.assert_array_equal(aux["codes"].reshape(-1), [0, 0, 1, 2, 2, 2])
  want = numpy_ema(count, codebook * count[:, None], latents,
                   np.array([0, 0, 1, 2, 2, 2]), decay, eps)
  stats = updates["vq_stats"]
  for got, expected in zip(
      (stats["ema_count"], stats["ema_sum"], stats["codebook"]), want):
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
  # train=False leaves the codebook alone.
  _, updates = apply(variables, latents.reshape(1, 2, 3, 2), train=False,
                     mutable=("vq_stats",))
  np.testing.assert_array_equal(updates["vq_stats"]["codebook"], codebook)


def test_dead_codes_restart_at_worst_served_latents():
  codebook = np.array([[0, 0], [1, 0], [0, 1], [5, 5]], np.float32)
  count = np.array([2.0, 1.0, 0.05, 0.05], np.float32)
  latents = np.array([[0.1, 0.1], [3.0, 0.0], [0.9, 0.1], [-2.5, 0.0]],
                     np.float32)
  quantizer = vqvae.VectorQuantizer(4, 2, decay=0.9, dead_code_threshold=0.5)
  (_, aux), updates = jax.jit(
      lambda v, z: quantizer.apply(v, z, train=True, mutable=["vq_stats"]))(
          quantizer_variables(codebook, count), latents.reshape(1, 2, 2, 2))
  np.testing.assert_array_equal(aux["codes"].reshape(-1), [0, 1, 1, 0])
  stats = updates["vq_stats"]
  # Codes 2 and 3 were dead: they take latents 3 (squared distance 6.25 to
  # code 0) and 1 (4 to code 1), worst served first.
  np.testing.assert_allclose(stats["codebook"][2:], latents[[3, 1]])
  np.testing.assert_allclose(stats["ema_count"][2:], [1.0, 1.0])
  want = numpy_ema(count, codebook * count[:, None], latents,
                   np.array([0, 1, 1, 0]), 0.9, 1e-5)
  np.testing.assert_allclose(stats["codebook"][:2], want[2][:2], rtol=1e-5)


def test_code_statistics():
  codes = jnp.asarray([[0, 1], [2, 3], [0, 1], [2, 3]])
  counts, perplexity, usage = vqvae.code_statistics(codes, 8)
  np.testing.assert_array_equal(counts, [2, 2, 2, 2, 0, 0, 0, 0])
  np.testing.assert_allclose(perplexity, 4.0, rtol=1e-6)
  np.testing.assert_allclose(usage, 0.5)


def test_invalid_settings_raise():
  images = jnp.zeros((1, 64, 64, 3))
  with pytest.raises(ValueError, match="codebook_update"):
    jax.eval_shape(vqvae.VQVAE(codebook_update="kmeans", **SMALL).init,
                   jax.random.key(0), images)
  with pytest.raises(ValueError, match="ema"):
    jax.eval_shape(vqvae.VQVAE(codebook_update="loss", dead_code_threshold=1.0,
                               **SMALL).init, jax.random.key(0), images)
  with pytest.raises(ValueError, match="power of two"):
    jax.eval_shape(vqvae.VQVAE(downsample=6, **SMALL).init,
                   jax.random.key(0), images)


@pytest.mark.parametrize("update", ["ema", "loss"])
def test_loss_finite_codes_in_range_and_gradients_reach_both_ends(update):
  model = vqvae.VQVAE(codebook_update=update, dead_code_threshold=0.0, **SMALL)
  images = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 64, 64, 3)),
                       jnp.float32)
  variables = numpy_init(model, images)
  params, stats = variables["params"], variables.get("vq_stats", {})

  @jax.jit
  def step(params, stats):
    def loss_fn(p):
      loss, metrics, new_stats = vqvae.vqvae_loss(model, p, stats, images)
      return loss, (metrics, new_stats)
    codes = model.apply({"params": params, "vq_stats": stats}, images,
                        method=model.encode)
    return jax.value_and_grad(loss_fn, has_aux=True)(params), codes

  ((loss, (metrics, new_stats)), grads), codes = step(params, stats)
  assert np.isfinite(loss) and all(np.isfinite(v) for v in metrics.values())
  np.testing.assert_allclose(
      loss, metrics["reconstruction_mse"] + 0.25 * metrics["commitment_loss"]
      + metrics["codebook_loss"], rtol=1e-5)
  assert 0 < metrics["codebook_usage"] <= 1
  assert 1 <= metrics["perplexity"] <= SMALL["num_codes"]
  # The reconstruction gradient crosses the quantiser into the encoder.
  assert np.any(grads["encoder"]["down_0"]["kernel"] != 0)
  if update == "ema":
    assert not np.allclose(new_stats["quantizer"]["codebook"],
                           stats["quantizer"]["codebook"])
  else:
    assert np.any(grads["quantizer"]["codebook"] != 0)
    assert new_stats == {}
  assert codes.dtype == jnp.int32
  assert np.all((codes >= 0) & (codes < SMALL["num_codes"]))
