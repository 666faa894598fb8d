"""Prefix-LM examples and loss, shared by every objective that predicts text after a prompt.

One text row of length `max_len` is laid out as

  [BOS] prompt...  target... [EOS] [PAD]...
  ar:    0   0...   1...      1     0...      (0 = prefix: full attention with the image)
  loss:  predicts the next token only where that next token is target or EOS.

The image tokens come before the text inside the model and are prefix too.

`PrefixLMObjective` is what every such objective shares with the train loop and the
evaluator: the GPT4V model, the batch layout, the loss, greedy decoding of predictions.
"""
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gpt4v_jax import decode
from gpt4v_jax.models.gpt4v import build_model
from gpt4v_jax.objectives.base import SingleObjective


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


def make_dialogue_row(turns: list[tuple[list[int], list[int]]], *, bos_id: int, eos_id: int,
                      pad_id: int, max_len: int) -> tuple[dict[str, np.ndarray], bool]:
  """Several (prompt, target) turns about one image -> one row, as `make_row` lays out one:

    [BOS] prompt_1 target_1 [EOS] prompt_2 target_2 [EOS] ... [PAD]...
    ar:    0   0...  1...     1     1...     1...     1

  The first turn is `make_row`'s (its prefix attends fully); later prompts are causal and carry
  no loss, later targets and EOS do. A later turn that does not fit whole is left out (not
  counted as truncated): every target in the row is complete unless the first one is cut.
  """
  row, truncated = make_row(*turns[0], bos_id=bos_id, eos_id=eos_id, pad_id=pad_id,
                            max_len=max_len)
  text, ar = row["text"], row["ar_mask"]
  is_target = ar.astype(bool)
  n = int(row["input_mask"].sum())
  for prompt_ids, target_ids in turns[1:]:
    turn = list(prompt_ids) + list(target_ids) + [eos_id]
    if truncated or n + len(turn) > max_len:
      break
    text[n:n + len(turn)] = turn
    ar[n:n + len(turn)] = 1
    is_target[n + len(prompt_ids):n + len(turn)] = True
    n += len(turn)
  return dict(text=text, ar_mask=ar, input_mask=np.arange(max_len) < n,
              targets=np.append(text[1:], pad_id).astype(np.int32),
              loss_mask=np.append(is_target[1:], False).astype(np.float32)), truncated


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


class PrefixLMObjective(SingleObjective):
  """The train loop's and evaluator's interface, for objectives that predict tokens after an
  image and a prompt with `GPT4V`. A subclass sets `name`, `tokenizer`, `preprocess` (the
  `images.Preprocess` its images go through), `max_text_len`, `prompt_len` and
  `max_new_tokens`, and defines `train_example` (data-source example -> one
  row of `batch_spec`'s fields), `eval_items` (example -> [(decode inputs, info)]) and `score`
  (infos, predictions -> metrics, records).
  """
  log_keys = ("token_accuracy",)  # Train metrics printed beside the loss.
  # Whether the loss runs the model with images (text-to-image alone runs it without).
  runs_images = True

  def build_model(self, model_config) -> Any:
    return build_model(model_config, image_size=self.preprocess.size)

  def batch_spec(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    """Shapes of one training batch: `train_example`'s rows stacked, plus the pipeline's
    `skipped`."""
    b, t, s = batch_size, self.max_text_len, self.preprocess.size
    return dict(image=jax.ShapeDtypeStruct((b, s, s, 3), jnp.float32),
                truncated=jax.ShapeDtypeStruct((b,), jnp.int32),
                skipped=jax.ShapeDtypeStruct((b,), jnp.int32),
                text=jax.ShapeDtypeStruct((b, t), jnp.int32),
                ar_mask=jax.ShapeDtypeStruct((b, t), jnp.int32),
                input_mask=jax.ShapeDtypeStruct((b, t), jnp.bool_),
                targets=jax.ShapeDtypeStruct((b, t), jnp.int32),
                loss_mask=jax.ShapeDtypeStruct((b, t), jnp.float32))

  def train_flops_per_example(self, model, frozen: tuple[str, ...] = ()) -> float:
    """Model FLOPs of one row's forward and backward pass (3x the forward's matmuls, 1x for
    the `frozen` param trees, which get no backward pass; causal attention counted over half
    its pairs), for MFU."""
    forward = model.forward_flops(self.max_text_len, images=self.runs_images)
    return sum(flops * (1 if name in frozen else 3) for name, flops in forward.items())

  def init_variables(self, model, rng: jax.Array) -> dict:
    """The model's variables (boxed, with logical axis names), from dummy inputs."""
    t, s = self.max_text_len, self.preprocess.size
    return model.init({"params": rng}, jnp.zeros((1, s, s, 3)), jnp.zeros((1, t), jnp.int32),
                      jnp.zeros((1, t), jnp.int32), jnp.ones((1, t), bool))

  def loss(self, model, params, model_state: dict, batch: dict, rng: jax.Array,
           deterministic: bool) -> tuple[jax.Array, dict, dict]:
    """(mean next-token loss over target tokens, metrics, model_state unchanged)."""
    logits = model.apply({"params": params}, batch["image"], batch["text"], batch["ar_mask"],
                         batch["input_mask"], deterministic=deterministic,
                         rngs={"dropout": rng})
    loss, aux = next_token_loss(logits, batch["targets"], batch["loss_mask"])
    return loss, aux, model_state

  def predict(self, model, params, model_state: dict, inputs: dict) -> jax.Array:
    """Greedy continuations of `eval_items`' inputs: [batch, max_new_tokens] int32."""
    del model_state
    t = self.tokenizer
    return decode.greedy_decode(model, params, inputs["image"], inputs["prompt"],
                                inputs["prompt_mask"], max_new_tokens=self.max_new_tokens,
                                eos_id=t.eos_id, pad_id=t.pad_id)

  def to_predictions(self, outputs: np.ndarray) -> list[str]:
    """`predict`'s outputs, gathered to the host -> what `score` takes: one text per row."""
    return [self.tokenizer.decode(row) for row in outputs]
