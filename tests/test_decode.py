"""KV-cache decoding must reproduce the full forward pass exactly."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpt4v_jax import decode
import tiny_lm
from tiny_lm import NEVER, PROMPT_LEN, PROMPT_LENGTHS, VOCAB


@pytest.fixture(scope="module", params=[0, 6], ids=["plain", "code_positions"])
def model(request):
  """Also with image-code position embeddings: random prompts and continuations hold
  code ids (half the vocabulary), so prefill must count the prompt's codes and each step
  its own; 6 positions for up to 9 codes also covers codes past the last position."""
  return tiny_lm.model(depth=2, num_code_positions=request.param)


@pytest.fixture(scope="module")
def inputs():
  return tiny_lm.inputs()


@pytest.fixture(scope="module")
def params(model, inputs):
  images, prompt, mask = inputs
  variables = jax.jit(model.init)(jax.random.key(0), images, prompt,
                                  jnp.zeros_like(mask), mask)
  return variables["params"]  # Boxed: greedy_decode must unbox them itself.


@pytest.mark.parametrize("hide_images", [False, True])
def test_prefill_and_steps_match_forward(model, params, inputs, hide_images):
  """Also with some rows' images hidden (text-to-image): positions must still agree."""
  images, prompt, mask = inputs
  b, steps = prompt.shape[0], 4
  image_mask = (jnp.arange(b) % 2 == 0) if hide_images else None
  variables = {"params": params}
  cont = jnp.asarray(np.random.default_rng(1).integers(1, VOCAB, (b, steps)),
                     jnp.int32)

  # Reference: each row's valid prompt immediately followed by `cont`.
  lengths = np.array(PROMPT_LENGTHS)
  idx = np.arange(PROMPT_LEN + steps)[None]
  text = np.zeros((b, PROMPT_LEN + steps), np.int32)
  for row, n in enumerate(lengths):
    text[row, :n] = prompt[row, :n]
    text[row, n:n + steps] = cont[row]
  full = jax.jit(model.apply)(variables, images, jnp.asarray(text),
                              idx >= lengths[:, None],
                              idx < (lengths + steps)[:, None],
                              image_mask=image_mask)
  rows = np.arange(b)

  max_len = model.num_image_tokens + PROMPT_LEN + steps
  prefill = jax.jit(lambda images, prompt, mask, image_mask: model.apply(
      variables, images, prompt, mask, max_len, image_mask, method="prefill"))
  step = jax.jit(lambda *a: model.apply(variables, *a, method="decode_step"))
  logits, cache, state = prefill(images, prompt, mask, image_mask)
  np.testing.assert_allclose(logits, full[rows, lengths - 1], atol=1e-4)
  for i in range(steps):
    logits, cache, state = step(cont[:, i], cache, state)
    np.testing.assert_allclose(logits, full[rows, lengths + i], atol=1e-4,
                               err_msg=f"step {i}")


def test_greedy_matches_no_cache(model, params, inputs):
  tokens = decode.greedy_decode(model, params, *inputs, max_new_tokens=8,
                                eos_id=NEVER)
  reference = decode.greedy_decode_no_cache(model, params, *inputs,
                                            max_new_tokens=8, eos_id=NEVER)
  assert tokens.shape == (len(PROMPT_LENGTHS), 8) and tokens.dtype == jnp.int32
  np.testing.assert_array_equal(tokens, reference)
  assert len(np.unique(np.asarray(tokens))) > 2  # Not a degenerate model.


def test_tokens_after_eos_are_pad(model, params, inputs):
  pad = 0
  free = np.asarray(decode.greedy_decode(model, params, *inputs,
                                         max_new_tokens=8, eos_id=NEVER))
  # Make the token row 0 emits at step 2 the EOS: row 0 (and any row emitting
  # it earlier) stops early, the rest must be unaffected.
  eos = int(free[0, 2])
  tokens = np.asarray(decode.greedy_decode(model, params, *inputs,
                                           max_new_tokens=8, eos_id=eos,
                                           pad_id=pad))
  reference = decode.greedy_decode_no_cache(model, params, *inputs,
                                            max_new_tokens=8, eos_id=eos,
                                            pad_id=pad)
  np.testing.assert_array_equal(tokens, reference)
  for row in range(len(free)):
    hits = np.flatnonzero(free[row] == eos)
    stop = hits[0] + 1 if len(hits) else free.shape[1]
    np.testing.assert_array_equal(tokens[row, :stop], free[row, :stop])
    assert np.all(tokens[row, stop:] == pad)
  assert np.all(tokens[0, 3:] == pad)
