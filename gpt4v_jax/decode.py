"""Greedy decoding for `GPT4V`, with and without a KV cache.

`token_loop` and `cached_steps` are the shared machinery: `sampling` runs the
same loop with a sampling rule in place of argmax.

Both compile once per (model, input shapes, max_new_tokens); eos_id and pad_id
are traced (eos_id may be one id or a 1-D array of stop ids: its length is a
shape, so each length compiles once). Steps run in `lax.fori_loop`, so no
step recompiles. The public functions forward positionally to jitted ones
because jit keys its cache on how arguments are passed: `pad_id=0` and an
omitted pad_id would otherwise compile twice.

`params` is the "params" collection (what `variables["params"]` holds), boxed
(`nn.LogicallyPartitioned` leaves, as returned by `model.init`) or plain
arrays: it is unboxed here.
"""
import functools

import jax
import jax.numpy as jnp
import flax.linen as nn


def _argmax(logits, step):
  del step  # Greedy choices do not depend on the step.
  return jnp.argmax(logits, axis=-1).astype(jnp.int32)


def is_stop(tokens, stop_ids):
  """Which tokens are stop ids.

  Args:
    tokens: [...] int.
    stop_ids: int, or [n] int (may be traced); n = 0 never stops.

  Returns:
    [...] bool. For a single id this is exactly `tokens == stop_ids`.
  """
  stop_ids = jnp.ravel(jnp.asarray(stop_ids))
  return jnp.any(tokens[..., None] == stop_ids, axis=-1)


def token_loop(first_logits, step_fn, carry, choose, max_new_tokens, eos_id,
               pad_id):
  """Shared decoding loop: choose a token, feed it back, until max_new_tokens.

  Args:
    first_logits: [batch, vocab] logits of the first new token.
    step_fn: (prev_tokens [batch], step, carry) -> (logits [batch, vocab],
      carry); logits are those of new token `step` given token `step - 1`.
    carry: initial state threaded through step_fn.
    choose: (logits [batch, vocab], step) -> [batch] int32, the rule that
      picks new token `step` (argmax for greedy decoding).
    max_new_tokens, eos_id, pad_id: see `greedy_decode`.

  Returns:
    [batch, max_new_tokens] int32; the stop token is kept, later tokens are
    pad_id.
  """
  first = choose(first_logits, 0)
  tokens = jnp.full((first.shape[0], max_new_tokens), pad_id, jnp.int32)
  tokens = tokens.at[:, 0].set(first)

  def body(step, loop_carry):
    tokens, done, carry = loop_carry
    logits, carry = step_fn(tokens[:, step - 1], step, carry)
    new = choose(logits, step)
    tokens = tokens.at[:, step].set(jnp.where(done, pad_id, new))
    return tokens, done | is_stop(new, eos_id), carry

  tokens, _, _ = jax.lax.fori_loop(1, max_new_tokens, body,
                                   (tokens, is_stop(first, eos_id), carry))
  return tokens


def greedy_decode(model, params, images, prompt, prompt_mask, max_new_tokens,
                  eos_id, pad_id=0, image_mask=None):
  """Greedy decoding with a KV cache.

  Args:
    model: a `GPT4V` (static: must be hashable, as Linen modules are).
    params: the model's "params" collection, boxed or unboxed.
    images: [batch, H, W, 3] float in [-1, 1], or None (no images, see
      `GPT4V.__call__`).
    prompt: [batch, p] int32, right-padded.
    prompt_mask: [batch, p] bool, False at padding.
    max_new_tokens: number of tokens to generate.
    eos_id: the stop id (an int), or several ([n] int array, e.g. EOS and an
      end-of-image token): a row stops at the first token that is any of
      them; it is emitted, everything after it is pad_id. Traced: new ids
      of the same count do not recompile.
    pad_id: filler after the stop token.
    image_mask: optional [batch] bool; False hides that example's image (a
      text-only row), see `GPT4V.__call__`.

  Returns:
    [batch, max_new_tokens] int32.
  """
  return _greedy_decode(model, params, images, prompt, prompt_mask,
                        max_new_tokens, eos_id, pad_id, image_mask)


def cached_steps(model, variables, images, prompt, prompt_mask,
                 max_new_tokens, image_mask=None):
  """Prefills a KV cache; returns `token_loop`'s (first_logits, step_fn, carry).

  Args:
    model, images, prompt, prompt_mask, max_new_tokens: see `greedy_decode`.
    variables: {"params": unboxed params}.
    images: may be None (no images), see `GPT4V.__call__`.
    image_mask: optional [batch] bool, see `GPT4V.__call__`.
  """
  # The last generated token is never fed back, hence the -1.
  max_len = (model.image_tokens_in_sequence(images) + prompt.shape[1] + max_new_tokens
             - 1)
  logits, cache, state = model.apply(variables, images, prompt, prompt_mask,
                                     max_len, image_mask, method="prefill")

  def step_fn(prev, step, carry):
    del step  # The cache state tracks slots and positions itself.
    logits, cache, state = model.apply(variables, prev, *carry,
                                       method="decode_step")
    return logits, (cache, state)

  return logits, step_fn, (cache, state)


@functools.partial(jax.jit, static_argnums=(0, 5))
def _greedy_decode(model, params, images, prompt, prompt_mask, max_new_tokens,
                   eos_id, pad_id, image_mask):
  variables = {"params": nn.unbox(params)}
  logits, step_fn, carry = cached_steps(model, variables, images, prompt,
                                        prompt_mask, max_new_tokens, image_mask)
  return token_loop(logits, step_fn, carry, _argmax, max_new_tokens, eos_id,
                    pad_id)


def greedy_decode_no_cache(model, params, images, prompt, prompt_mask,
                           max_new_tokens, eos_id, pad_id=0):
  """Same contract as `greedy_decode`, recomputing the full forward each step.

  Generated tokens are written right after each example's valid prompt in a
  fixed-size [batch, p + max_new_tokens - 1] buffer, so shapes never change.
  Every prompt needs at least one valid token (e.g. BOS): the first new token
  is predicted from the last valid text position.
  """
  return _greedy_decode_no_cache(model, params, images, prompt, prompt_mask,
                                 max_new_tokens, eos_id, pad_id)


@functools.partial(jax.jit, static_argnums=(0, 5))
def _greedy_decode_no_cache(model, params, images, prompt, prompt_mask,
                            max_new_tokens, eos_id, pad_id):
  variables = {"params": nn.unbox(params)}
  b, p = prompt.shape
  lengths = jnp.sum(prompt_mask, axis=1, dtype=jnp.int32)
  # Padded prompt slots are masked out until a generated token overwrites them.
  text = jnp.pad(prompt.astype(jnp.int32), ((0, 0), (0, max_new_tokens - 1)))
  idx = jnp.arange(text.shape[1])[None, :]
  rows = jnp.arange(b)

  def next_logits(text, step):
    """Logits for new token `step`, read at the last valid text position."""
    logits = model.apply(variables, images, text,
                         ar_mask=idx >= lengths[:, None],
                         input_mask=idx < (lengths + step)[:, None])
    return logits[rows, lengths + step - 1]

  def step_fn(prev, step, text):
    text = text.at[rows, lengths + step - 1].set(prev)
    return next_logits(text, step), text

  return token_loop(next_logits(text, 0), step_fn, text, _argmax,
                    max_new_tokens, eos_id, pad_id)
