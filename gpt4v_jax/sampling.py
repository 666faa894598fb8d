"""Sampling from `GPT4V` with a KV cache: temperature, top-k, top-p, CFG.

Runs `decode.token_loop` over `decode.cached_steps`, as greedy decoding does,
with a sampling rule in place of argmax. One compilation per (model, input
shapes, max_new_tokens, whether CFG is used); the sampling settings and the
allowed-token mask are traced, so changing them never recompiles.

Per new token, the logits [batch, vocab] go through, in this order:

  1. classifier-free guidance, when unconditional prompts are given: the
     conditional and unconditional prompts run as one doubled batch through
     prefill and decode_step, both halves are fed the chosen token, and
     logits = uncond + cfg_scale * (cond - uncond);
  2. the allowed-token mask (e.g. image-code tokens only for text-to-image):
     other tokens get -inf;
  3. temperature 0: argmax, and nothing below applies. Otherwise division by
     the temperature, then top-k, then top-p (on the tempered distribution,
     as in most LM libraries), then one categorical draw.

The draw for token `step` uses `jax.random.fold_in(rng, step)`: no key is
threaded through the loop, and guided sampling draws exactly as unguided
sampling does with the same rng.
"""
import functools

import jax
import jax.numpy as jnp
import flax.linen as nn

from gpt4v_jax import decode


def top_k_filter(logits, k):
  """Keeps the k largest logits of each row; the rest become -inf.

  Args:
    logits: [batch, vocab] float.
    k: scalar int (may be traced); k <= 0 keeps everything.

  Returns:
    [batch, vocab]. Logits equal to the k-th largest are all kept, so a tie
    at the boundary can keep more than k.
  """
  descending = -jnp.sort(-logits, axis=-1)
  kth = jnp.take(descending, jnp.clip(k - 1, 0, logits.shape[-1] - 1),
                 axis=-1)[..., None]
  return jnp.where((k > 0) & (logits < kth), -jnp.inf, logits)


def top_p_filter(logits, p):
  """Nucleus filter: keeps the smallest set of top tokens with mass >= p.

  Tokens are taken from the most likely down, until the probability (softmax
  of `logits`) of those taken reaches p; the most likely token is always
  kept. The rest become -inf.

  Args:
    logits: [batch, vocab] float.
    p: scalar float in (0, 1] (may be traced); p >= 1 keeps everything.

  Returns:
    [batch, vocab]. As in `top_k_filter`, ties with the last kept logit are
    kept too.
  """
  descending = -jnp.sort(-logits, axis=-1)
  probs = jax.nn.softmax(descending, axis=-1)
  mass_before = jnp.cumsum(probs, axis=-1) - probs
  # A token is needed while the more likely ones hold less than p.
  needed = mass_before < p
  lowest_kept = jnp.min(jnp.where(needed, descending, jnp.inf), axis=-1,
                        keepdims=True)
  return jnp.where((p < 1) & (logits < lowest_kept), -jnp.inf, logits)


def choose_tokens(rng, logits, temperature, top_k, top_p, allowed):
  """Steps 2 and 3 of the module docstring for one new token.

  Args:
    rng: PRNG key.
    logits: [batch, vocab] float (after guidance).
    temperature: scalar >= 0; 0 picks the argmax.
    top_k: scalar int, <= 0 for no top-k.
    top_p: scalar float, >= 1 for no top-p.
    allowed: [vocab] bool, the tokens that may be chosen.

  Returns:
    [batch] int32.
  """
  logits = jnp.where(allowed, logits, -jnp.inf)
  greedy = jnp.argmax(logits, axis=-1)
  # Dividing by 1 instead of 0 keeps the draw finite; it is discarded then.
  tempered = logits / jnp.where(temperature > 0, temperature, 1.0)
  filtered = top_p_filter(top_k_filter(tempered, top_k), top_p)
  drawn = jax.random.categorical(rng, filtered, axis=-1)
  return jnp.where(temperature > 0, drawn, greedy).astype(jnp.int32)


def guide(logits, scale):
  """Classifier-free guidance of a doubled batch.

  Args:
    logits: [2 * batch, vocab], conditional rows first, then unconditional.
    scale: scalar guidance scale; 1 is plain conditional sampling, 0 plain
      unconditional.

  Returns:
    [batch, vocab], uncond + scale * (cond - uncond), computed as
    cond + (scale - 1) * (cond - uncond): the same value, but exactly `cond`
    at scale 1, so that guidance at 1 reproduces conditional sampling bit for
    bit.
  """
  cond, uncond = jnp.split(logits, 2)
  return cond + (scale - 1) * (cond - uncond)


def _pad_to(tokens, mask, length):
  """Right-pads [batch, p] prompt tokens and mask to `length` columns."""
  widths = ((0, 0), (0, length - tokens.shape[1]))
  return jnp.pad(tokens, widths), jnp.pad(mask, widths)


def sample(model, params, rng, images, prompt, prompt_mask, max_new_tokens,
           eos_id, pad_id=0, *, temperature=1.0, top_k=0, top_p=1.0,
           allowed_tokens=None, uncond_prompt=None, uncond_prompt_mask=None,
           cfg_scale=1.0, image_mask=None):
  """Samples continuations of image + prompt with a KV cache.

  Args:
    model: a `GPT4V` (static: must be hashable, as Linen modules are).
    params: the model's "params" collection, boxed or unboxed.
    rng: PRNG key.
    images: [batch, H, W, 3] float in [-1, 1], or None: no images (text-to-image).
    prompt: [batch, p] int32, right-padded.
    prompt_mask: [batch, p] bool, False at padding.
    max_new_tokens: number of tokens to generate.
    eos_id: the stop id (an int), or several ([n] int array): a row stops at
      the first token that is any of them, see `decode.greedy_decode`.
    pad_id: filler after the stop token.
    temperature: >= 0; 0 is greedy decoding (`decode.greedy_decode`).
    top_k: keep the k most likely tokens; 0 keeps all.
    top_p: keep the nucleus of probability mass top_p; 1 keeps all.
    allowed_tokens: optional [vocab] bool; only these tokens are ever chosen
      (default: all).
    uncond_prompt: optional [batch, q] int32, the prompts with the condition
      (e.g. the caption) dropped, right-padded; enables classifier-free
      guidance. The images are shared by both branches.
    uncond_prompt_mask: [batch, q] bool, required with uncond_prompt.
    cfg_scale: guidance scale, used only with uncond_prompt.
    image_mask: optional [batch] bool; False hides the image (text-to-image),
      see `GPT4V.__call__`. Default: all visible.

  Returns:
    [batch, max_new_tokens] int32.
  """
  if (uncond_prompt is None) != (uncond_prompt_mask is None):
    raise ValueError("uncond_prompt and uncond_prompt_mask go together.")
  settings = (jnp.float32(temperature), jnp.int32(top_k), jnp.float32(top_p),
              jnp.float32(cfg_scale))
  if allowed_tokens is None:
    # An all-True mask rather than a second compiled variant without one.
    allowed_tokens = jnp.ones(model.decoder.vocab_size, bool)
  if image_mask is None:
    image_mask = jnp.full(prompt.shape[0], images is not None)
  return _sample(model, params, rng, images, prompt, prompt_mask,
                 max_new_tokens, eos_id, pad_id, settings, allowed_tokens,
                 uncond_prompt, uncond_prompt_mask, image_mask)


@functools.partial(jax.jit, static_argnums=(0, 6))
def _sample(model, params, rng, images, prompt, prompt_mask, max_new_tokens,
            eos_id, pad_id, settings, allowed_tokens, uncond_prompt,
            uncond_prompt_mask, image_mask):
  temperature, top_k, top_p, cfg_scale = settings
  variables = {"params": nn.unbox(params)}

  def choose(logits, step):
    return choose_tokens(jax.random.fold_in(rng, step), logits, temperature,
                         top_k, top_p, allowed_tokens)

  if uncond_prompt is None:
    logits, step_fn, carry = decode.cached_steps(
        model, variables, images, prompt, prompt_mask, max_new_tokens,
        image_mask)
    return decode.token_loop(logits, step_fn, carry, choose, max_new_tokens,
                             eos_id, pad_id)

  length = max(prompt.shape[1], uncond_prompt.shape[1])
  cond = _pad_to(prompt, prompt_mask, length)
  uncond = _pad_to(uncond_prompt, uncond_prompt_mask, length)
  logits, step_fn, carry = decode.cached_steps(
      model, variables, None if images is None else jnp.concatenate([images, images]),
      jnp.concatenate([cond[0], uncond[0]]),
      jnp.concatenate([cond[1], uncond[1]]), max_new_tokens,
      jnp.concatenate([image_mask, image_mask]))

  def guided_step(prev, step, carry):
    # Both branches continue with the token chosen from the guided logits.
    logits, carry = step_fn(jnp.concatenate([prev, prev]), step, carry)
    return guide(logits, cfg_scale), carry

  return decode.token_loop(guide(logits, cfg_scale), guided_step, carry,
                           choose, max_new_tokens, eos_id, pad_id)
