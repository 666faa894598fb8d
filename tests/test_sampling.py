"""Sampling: filters keep what they promise; special cases equal greedy."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpt4v_jax import decode, sampling
import tiny_lm
from tiny_lm import NEVER, PROMPT_LEN, PROMPT_LENGTHS, VOCAB

NEW = 8


# ----------------------------------------------------------------------------
# Filters and draws, on random logits.
# ----------------------------------------------------------------------------


def _random_logits(seed, batch=16, vocab=50):
  return np.random.default_rng(seed).normal(0, 2, (batch, vocab)).astype(
      np.float32)


def _nucleus(logits_row, p):
  """Reference nucleus: the fewest most-likely tokens with mass >= p."""
  probs = np.exp(logits_row - logits_row.max())
  probs /= probs.sum()
  order = np.argsort(-probs)
  size = int(np.searchsorted(np.cumsum(probs[order]), p)) + 1
  return set(order[:size].tolist())


def test_top_k_filter_keeps_exactly_the_k_largest():
  rng = np.random.default_rng(0)
  for trial in range(100):
    logits = _random_logits(trial)
    k = int(rng.integers(1, logits.shape[1] + 1))
    kept = np.isfinite(np.asarray(sampling.top_k_filter(logits, k)))
    top = np.argsort(-logits, axis=1)[:, :k]
    for row in range(len(logits)):
      assert set(np.flatnonzero(kept[row])) == set(top[row])
  logits = _random_logits(0)
  np.testing.assert_array_equal(sampling.top_k_filter(logits, 0), logits)


def test_top_p_filter_keeps_exactly_the_nucleus():
  rng = np.random.default_rng(1)
  for trial in range(100):
    logits = _random_logits(100 + trial)
    p = float(rng.uniform(0.05, 0.99))
    kept = np.isfinite(np.asarray(sampling.top_p_filter(logits, p)))
    for row in range(len(logits)):
      assert set(np.flatnonzero(kept[row])) == _nucleus(logits[row], p)
  logits = _random_logits(0)
  np.testing.assert_array_equal(sampling.top_p_filter(logits, 1.0), logits)
  # A tiny p still keeps the most likely token.
  kept = np.isfinite(np.asarray(sampling.top_p_filter(logits, 1e-6)))
  np.testing.assert_array_equal(np.flatnonzero(kept.ravel()) % 50,
                                np.argmax(logits, axis=1))


@jax.jit
def _draws_jit(keys, logits, settings):
  return jax.vmap(lambda key: sampling.choose_tokens(key, logits, **settings))(
      keys)


def _draws(logits, **settings):
  """[300, batch] tokens from choose_tokens with independent keys.

  Shapes and setting types never change, so this compiles once.
  """
  keys = jax.random.split(jax.random.key(0), 300)
  settings = {"temperature": 1.0, "top_k": 0, "top_p": 1.0,
              "allowed": np.ones(logits.shape[1], bool), **settings}
  return np.asarray(_draws_jit(keys, logits, settings))


def test_draws_stay_inside_top_k_top_p_and_allowed():
  logits = _random_logits(7)
  top5 = np.argsort(-logits, axis=1)[:, :5]
  for row, tokens in enumerate(_draws(logits, top_k=5).T):
    assert set(tokens) <= set(top5[row])
    assert len(set(tokens)) > 1  # Actually sampling.
  for row, tokens in enumerate(_draws(logits, top_p=0.6, temperature=2.0).T):
    assert set(tokens) <= _nucleus(logits[row] / 2.0, 0.6)
  allowed = np.zeros(logits.shape[1], bool)
  allowed[[3, 17, 40]] = True
  assert set(_draws(logits, allowed=allowed).ravel()) <= {3, 17, 40}
  greedy = _draws(logits, allowed=allowed, temperature=0.0)
  masked = np.where(allowed, logits, -np.inf)
  np.testing.assert_array_equal(greedy[0], np.argmax(masked, axis=1))


def test_draws_follow_the_tempered_distribution():
  """16 rows x 300 keys = 4800 draws from p = (0.1, 0.2, 0.3, 0.4, 0, ...)."""
  probs = np.zeros(50, np.float32)
  probs[:4] = [0.1, 0.2, 0.3, 0.4]
  with np.errstate(divide="ignore"):
    logits = np.tile(np.log(probs), (16, 1))
  for temperature in (1.0, 0.5):
    tokens = _draws(logits, temperature=temperature).ravel()
    target = probs ** (1 / temperature)
    target /= target.sum()
    np.testing.assert_allclose(np.bincount(tokens, minlength=50) / tokens.size,
                               target, atol=0.03)


def test_guide():
  cond = np.array([[1.0, 2.0, 3.0]], np.float32)
  uncond = np.array([[3.0, 2.0, 0.0]], np.float32)
  logits = np.concatenate([cond, uncond])
  np.testing.assert_allclose(sampling.guide(logits, 3.0),
                             uncond + 3.0 * (cond - uncond))
  np.testing.assert_array_equal(sampling.guide(logits, 1.0), cond)


# ----------------------------------------------------------------------------
# The model loop.
# ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model():
  return tiny_lm.model(depth=1)


@pytest.fixture(scope="module")
def inputs():
  return tiny_lm.inputs()


@pytest.fixture(scope="module")
def uncond(inputs):
  """The prompts' first token only (as if the caption were dropped)."""
  _, prompt, mask = inputs
  keep = np.arange(PROMPT_LEN)[None] < 1
  return jnp.where(keep, prompt, 0), jnp.asarray(keep & np.asarray(mask))


@pytest.fixture(scope="module")
def params(model, inputs):
  """Random weights of the init's shapes, without compiling the init.

  Normal(0, 1 / sqrt(leading dim)) weights and unit norm scales keep the
  logits near unit scale, so tokens vary with the input.
  """
  images, prompt, mask = inputs
  shapes = jax.eval_shape(model.init, jax.random.key(0), images, prompt,
                          jnp.zeros_like(mask), mask)["params"]
  rng = np.random.default_rng(0)

  def draw(path, leaf):
    if "scale" in jax.tree_util.keystr(path):
      return jnp.ones(leaf.shape, leaf.dtype)
    std = 1 / np.sqrt(leaf.shape[0])
    return jnp.asarray(rng.normal(0, std, leaf.shape), leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, nn.unbox(shapes))


def _run(model, params, inputs, seed=0, **kwargs):
  kwargs.setdefault("eos_id", NEVER)
  return np.asarray(sampling.sample(model, params, jax.random.key(seed),
                                    *inputs, NEW, **kwargs))


def test_temperature_zero_is_greedy(model, params, inputs):
  greedy = np.asarray(decode.greedy_decode(model, params, *inputs, NEW,
                                           eos_id=NEVER))
  tokens = _run(model, params, inputs, temperature=0.0, top_k=3, top_p=0.5)
  np.testing.assert_array_equal(tokens, greedy)
  assert len(np.unique(greedy)) > 2  # Not a degenerate model.


def test_sampling_is_random_and_reproducible(model, params, inputs):
  first = _run(model, params, inputs, seed=0)
  np.testing.assert_array_equal(first, _run(model, params, inputs, seed=0))
  assert not np.array_equal(first, _run(model, params, inputs, seed=1))
  assert first.shape == (len(PROMPT_LENGTHS), NEW) and first.dtype == np.int32


def _guidance(uncond, scale):
  return {"uncond_prompt": uncond[0], "uncond_prompt_mask": uncond[1],
          "cfg_scale": scale}


def test_cfg_scale_one_is_conditional_sampling(model, params, inputs, uncond):
  for seed in range(3):
    cond = _run(model, params, inputs, seed, top_k=20)
    guided = _run(model, params, inputs, seed, top_k=20,
                  **_guidance(uncond, 1.0))
    np.testing.assert_array_equal(guided, cond)


def test_cfg_scale_zero_greedy_follows_the_unconditional_prompt(
    model, params, inputs, uncond):
  """Both branches get the chosen tokens: at scale 0 they decode uncond."""
  greedy = decode.greedy_decode(model, params, inputs[0], *uncond, NEW,
                                eos_id=NEVER)
  tokens = _run(model, params, inputs, temperature=0.0,
                **_guidance(uncond, 0.0))
  np.testing.assert_array_equal(tokens, greedy)
  # Real guidance changes the choices.
  strong = _run(model, params, inputs, temperature=0.0,
                **_guidance(uncond, 3.0))
  assert not np.array_equal(strong, tokens)


def test_allowed_tokens_are_respected(model, params, inputs, uncond):
  allowed = np.zeros(VOCAB, bool)
  allowed[64:96] = True  # Say, the image-code tokens.
  for temperature in (1.0, 0.0):
    for guidance in ({}, _guidance(uncond, 2.0)):
      tokens = _run(model, params, inputs, temperature=temperature,
                    allowed_tokens=jnp.asarray(allowed), **guidance)
      assert np.all(allowed[tokens])


def test_tokens_after_eos_are_pad(model, params, inputs):
  free = _run(model, params, inputs)
  eos = int(free[0, 2])
  tokens = _run(model, params, inputs, eos_id=eos, pad_id=0)
  for row in range(len(free)):
    hits = np.flatnonzero(free[row] == eos)
    stop = hits[0] + 1 if len(hits) else NEW
    # A row's draws depend on (rng, step) and its own logits: equal to EOS.
    np.testing.assert_array_equal(tokens[row, :stop], free[row, :stop])
    assert np.all(tokens[row, stop:] == 0)


def test_settings_do_not_recompile(model, params, inputs):
  jitted = sampling._sample  # pylint: disable=protected-access
  _run(model, params, inputs, temperature=0.7, top_k=5, top_p=0.9)
  compiled = jitted._cache_size()
  _run(model, params, inputs, temperature=1.3, top_k=0, top_p=0.5)
  _run(model, params, inputs, temperature=0.0, top_k=1, top_p=1.0,
       allowed_tokens=jnp.arange(VOCAB) < 10)
  assert jitted._cache_size() == compiled


def test_no_images_draws_as_hidden_images(model, params, inputs, uncond):
  """Text-to-image samples without images: the same draws as with every image hidden, with
  and without guidance (RoPE sees only relative positions)."""
  images, prompt, mask = inputs
  hidden = jnp.zeros(images.shape[0], bool)
  for guidance in ({}, _guidance(uncond, 2.0)):
    with_hidden = _run(model, params, inputs, image_mask=hidden, **guidance)
    without = _run(model, params, (None, prompt, mask), **guidance)
    np.testing.assert_array_equal(without, with_hidden)
    assert not np.array_equal(with_hidden, _run(model, params, inputs, **guidance))
