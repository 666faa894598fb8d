"""Prefix-LM examples and loss, shared by every objective that predicts text after a prompt.

One text row of length `max_len` is laid out as

  [BOS] prompt...  target... [EOS] [PAD]...
  ar:    0   0...   1...      1     0...      (0 = prefix: full attention with the image)
  loss:  predicts the next token only where that next token is target or EOS.

The image tokens come before the text inside the model and are prefix too.
"""
import jax
import jax.numpy as jnp
import numpy as np


def make_row(prompt_ids: list[int], target_ids: list[int], *, bos_id: int, eos_id: int,
             pad_id: int, max_len: int) -> tuple[dict[str, np.ndarray], bool]:
  """Token ids -> one padded training row, and whether the target had to be truncated.

  Returns dict of `[max_len]` arrays: text int32, ar_mask int32, input_mask bool,
  targets int32 (text shifted left by one), loss_mask float32 (aligned with targets).
  """
  prefix = [bos_id] + list(prompt_ids)
  if len(prefix) >= max_len:
    raise ValueError(f"prompt of {len(prompt_ids)} tokens does not fit max_text_len={max_len}")
  target = list(target_ids) + [eos_id]
  truncated = len(prefix) + len(target) > max_len
  target = target[:max_len - len(prefix)]
  n = len(prefix) + len(target)
  text = np.full(max_len, pad_id, np.int32)
  text[:n] = prefix + target
  ar = np.zeros(max_len, np.int32)
  ar[len(prefix):n] = 1
  targets = np.append(text[1:], pad_id).astype(np.int32)
  loss_mask = np.append(ar[1:], 0).astype(np.float32)
  return dict(text=text, ar_mask=ar, input_mask=np.arange(max_len) < n,
              targets=targets, loss_mask=loss_mask), truncated


def make_prompt(prompt_ids: list[int], *, bos_id: int, pad_id: int,
                max_len: int) -> dict[str, np.ndarray]:
  """Decoding input: `[BOS] prompt` right-padded to `[max_len]`, with its validity mask."""
  ids = [bos_id] + list(prompt_ids)
  if len(ids) > max_len:
    raise ValueError(f"prompt of {len(prompt_ids)} tokens does not fit max_prompt_len={max_len}")
  prompt = np.full(max_len, pad_id, np.int32)
  prompt[:len(ids)] = ids
  return dict(prompt=prompt, prompt_mask=np.arange(max_len) < len(ids))


def next_token_loss(logits: jax.Array, targets: jax.Array,
                    loss_mask: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Mean cross-entropy over target tokens of the whole (global) batch.

  Args:
    logits: [batch, text_len, vocab] float32.
    targets: [batch, text_len] int32, the next token at each position.
    loss_mask: [batch, text_len] float32, 1 where the next token is a target token.
  """
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
  num_tokens = jnp.maximum(loss_mask.sum(), 1.0)
  loss = (nll * loss_mask).sum() / num_tokens
  correct = (jnp.argmax(logits, -1) == targets) * loss_mask
  return loss, dict(token_accuracy=correct.sum() / num_tokens, target_tokens=loss_mask.sum())
