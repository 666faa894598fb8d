"""Beam search for `GPT4V` over the KV cache, with Hugging Face's scoring.

A hypothesis is scored by the sum of the log-softmax (float32) of its generated tokens,
the stop token included when it ends with one, divided by (its number of generated
tokens) ** length_penalty. Per example the search keeps:

  alive     the num_beams best unfinished beams by raw summed log-prob;
  finished  the num_beams best hypotheses that emitted a stop id, by penalised score.

Each step extends every alive beam by every token. The num_beams best extensions that are
not stop ids become the next alive beams; the extensions ending in a stop id that rank
among the num_beams best extensions of the step enter the finished pool (as in Hugging
Face, where lower-ranked ones are never added). The search always runs max_new_tokens
steps (fixed shapes, one `lax.fori_loop`), after which the alive beams compete too, with
length max_new_tokens: the result is that of Hugging Face's `early_stopping="never"`.

The example's prefix is prefilled once; its cache and decoding state are then repeated to
num_beams rows, and every step gathers the rows of the chosen parents. At step 0 all beams
share one prefix: every beam but the first starts at log-prob -inf, so the first step
cannot pick the same token num_beams times.

Shapes: B examples, K = num_beams, V vocabulary, L = max_new_tokens.

One compilation per (model, input shapes, max_new_tokens, num_beams, number of stop ids);
the stop ids, pad_id, length_penalty and allowed-token mask are traced. As in `decode`,
the public function forwards positionally to the jitted one, so that how the arguments are
passed does not split jit's cache.
"""
import functools

import jax
import jax.numpy as jnp
import flax.linen as nn

from gpt4v_jax import decode


def beam_search(model, params, images, prompt, prompt_mask, max_new_tokens, eos_ids, pad_id=0,
                *, num_beams, length_penalty=1.0, image_mask=None, allowed_tokens=None):
  """Beam search with a KV cache; returns the best hypothesis of each example.

  Args:
    model: a `GPT4V` (static: must be hashable, as Linen modules are).
    params: the model's "params" collection, boxed or unboxed.
    images: [B, H, W, 3] float in [-1, 1], or None (no images, see `GPT4V.__call__`).
    prompt: [B, p] int32, right-padded.
    prompt_mask: [B, p] bool, False at padding.
    max_new_tokens: L, the most tokens a hypothesis has (static).
    eos_ids: the stop id (an int) or several ([n] int): a hypothesis that emits any of them
      is finished.
    pad_id: filler after the stop token.
    num_beams: K, beams kept per example (static).
    length_penalty: the exponent of the length that divides the summed log-prob; > 0
      favours longer hypotheses, 0 ranks by raw log-prob.
    image_mask: optional [B] bool; False hides that example's image, see
      `GPT4V.__call__`. Default: all visible.
    allowed_tokens: optional [V] bool; only these tokens are ever chosen (default: all).
      Log-probs are not renormalised over them (as Hugging Face's logits processors act
      after the log-softmax), so scores stay the model's own.

  Returns:
    (tokens [B, L] int32: the best hypothesis, its stop token kept and pad_id after it;
     scores [B] float32: its penalised score).
  """
  if num_beams < 1 or max_new_tokens < 1:
    raise ValueError(f"beam_search: num_beams={num_beams} and max_new_tokens="
                     f"{max_new_tokens} must both be >= 1.")
  eos_ids = jnp.asarray(eos_ids, jnp.int32)
  if eos_ids.ndim > 1:
    raise ValueError(f"beam_search: eos_ids has shape {eos_ids.shape}; pass one id or a 1-D "
                     "array of stop ids.")
  if allowed_tokens is None:
    # An all-True mask rather than a second compiled variant without one.
    allowed_tokens = jnp.ones(model.decoder.vocab_size, bool)
  if image_mask is None:
    image_mask = jnp.full(prompt.shape[0], images is not None)
  # Arrays, not Python scalars: an int and a float penalty must not compile twice.
  return _beam_search(model, params, images, prompt, prompt_mask, max_new_tokens,
                      jnp.ravel(eos_ids), jnp.int32(pad_id), num_beams,
                      jnp.float32(length_penalty), image_mask, allowed_tokens)


def _repeat_rows(cache, state, num_beams, batch_axis):
  """Repeats each example's cache and state rows num_beams times: [B, ...] -> [B * K, ...]
  (the cache's batch axis is `batch_axis`; state["index"] is a shared scalar)."""
  cache = jax.tree.map(lambda x: jnp.repeat(x, num_beams, axis=batch_axis), cache)
  state = {k: v if k == "index" else jnp.repeat(v, num_beams, axis=0)
           for k, v in state.items()}
  return cache, state


def _gather_rows(cache, state, rows, batch_axis):
  """Keeps cache and state rows `rows` ([B * K] int) in that order."""
  cache = jax.tree.map(lambda x: jnp.take(x, rows, axis=batch_axis), cache)
  state = {k: v if k == "index" else jnp.take(v, rows, axis=0) for k, v in state.items()}
  return cache, state


def _select(step, logits, beams, eos_ids, length_penalty, allowed_tokens):
  """Extends the alive beams by new token `step` and updates the finished pool.

  Args:
    step: scalar int, the new token's column.
    logits: [B * K, V] float32, each alive beam's logits for it.
    beams: dict(alive [B, K, L] int32 tokens (pad_id after `step`), alive_logp [B, K]
      float32 summed log-probs, finished [B, K, L] int32, finished_score [B, K] float32
      penalised scores, -inf for empty slots).
    eos_ids, length_penalty, allowed_tokens: see `beam_search`.

  Returns:
    (beams, parents [B, K] int32: the alive beam each new alive beam extends).
  """
  b, k, _ = beams["alive"].shape
  v = logits.shape[-1]
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1).reshape(b, k, v)
  logp = jnp.where(allowed_tokens, logp, -jnp.inf)
  candidates = (beams["alive_logp"][:, :, None] + logp).reshape(b, k * v)
  stops = jnp.tile(decode.is_stop(jnp.arange(v), eos_ids), k)  # [K * V]

  def extend(flat_index):
    """[B, K] candidate indices -> (parents, tokens [B, K, L] of parent + new token)."""
    parents, new = flat_index // v, flat_index % v
    tokens = jnp.take_along_axis(beams["alive"], parents[:, :, None], axis=1)
    return parents, tokens.at[:, :, step].set(new.astype(jnp.int32))

  alive_logp, alive_index = jax.lax.top_k(jnp.where(stops, -jnp.inf, candidates), k)
  parents, alive = extend(alive_index)

  # Only stop candidates among the step's K best join the pool (Hugging Face's rule).
  top_logp, top_index = jax.lax.top_k(candidates, k)
  _, ended = extend(top_index)
  length = (step + 1).astype(jnp.float32)
  ended_score = jnp.where(stops[top_index], top_logp / length ** length_penalty, -jnp.inf)
  # Old entries first: on a tie top_k keeps the lower index, and Hugging Face keeps the
  # hypothesis it already had.
  pool_score = jnp.concatenate([beams["finished_score"], ended_score], axis=1)
  pool = jnp.concatenate([beams["finished"], ended], axis=1)
  finished_score, keep = jax.lax.top_k(pool_score, k)
  finished = jnp.take_along_axis(pool, keep[:, :, None], axis=1)
  return dict(alive=alive, alive_logp=alive_logp, finished=finished,
              finished_score=finished_score), parents


@functools.partial(jax.jit, static_argnums=(0, 5, 8))
def _beam_search(model, params, images, prompt, prompt_mask, max_new_tokens, eos_ids, pad_id,
                 num_beams, length_penalty, image_mask, allowed_tokens):
  variables = {"params": nn.unbox(params)}
  b, k, length = prompt.shape[0], num_beams, max_new_tokens
  # A scanned decoder stacks its cache on a leading layer axis.
  batch_axis = 1 if model.decoder.scan_layers else 0

  # The last token is never fed back, hence the -1 (as in `decode.cached_steps`).
  max_len = model.image_tokens_in_sequence(images) + prompt.shape[1] + length - 1
  logits, cache, state = model.apply(variables, images, prompt, prompt_mask, max_len,
                                     image_mask, method="prefill")
  cache, state = _repeat_rows(cache, state, k, batch_axis)
  logits = jnp.repeat(logits, k, axis=0)

  empty = jnp.full((b, k, length), pad_id, jnp.int32)
  beams = dict(alive=empty,
               alive_logp=jnp.broadcast_to(jnp.where(jnp.arange(k) == 0, 0.0, -jnp.inf), (b, k)),
               finished=empty, finished_score=jnp.full((b, k), -jnp.inf))
  select = functools.partial(_select, eos_ids=eos_ids, length_penalty=length_penalty,
                             allowed_tokens=allowed_tokens)
  beams, parents = select(jnp.int32(0), logits, beams)

  def body(step, carry):
    beams, parents, cache, state = carry
    rows = (jnp.arange(b)[:, None] * k + parents).reshape(-1)
    cache, state = _gather_rows(cache, state, rows, batch_axis)
    prev = beams["alive"][:, :, step - 1].reshape(-1)
    logits, cache, state = model.apply(variables, prev, cache, state, method="decode_step")
    beams, parents = select(step, logits, beams)
    return beams, parents, cache, state

  beams, _, _, _ = jax.lax.fori_loop(1, length, body, (beams, parents, cache, state))

  # Unfinished beams compete with the finished ones at full length.
  alive_score = beams["alive_logp"] / jnp.float32(length) ** length_penalty
  scores = jnp.concatenate([beams["finished_score"], alive_score], axis=1)
  tokens = jnp.concatenate([beams["finished"], beams["alive"]], axis=1)
  best = jnp.argmax(scores, axis=1)
  rows = jnp.arange(b)
  return tokens[rows, best], scores[rows, best]
