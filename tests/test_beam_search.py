"""Beam search against a brute-force search over every sequence; stop sets in the shared
decoding loop.

A tiny random GPT4V with a 5-token vocabulary and 3 new tokens has few enough sequences
(5^3) to score them all with the teacher-forced forward pass.
"""
import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import shapes_caption
from gpt4v_jax import beam_search, decode, sampling
from gpt4v_jax.models import gpt4v

V = 5  # Vocabulary.
L = 3  # max_new_tokens.
STOP = 3
PAD = -1  # Not a token id, so padding is unambiguous in the outputs.
PROMPT_LEN = 4
PROMPT_LENGTHS = (4, 1)
# K beyond every step's V * (V - 1)^(L - 1) candidates: every candidate ranks among the K
# best, so the search keeps every alive prefix and every finished hypothesis.
EXHAUSTIVE = V * (V - 1) ** (L - 1)


def _model():
  cfg = shapes_caption.get_config().model
  # Untied unembedding: a tied random model mostly repeats its last input token.
  cfg.update(vit_variant="nano/16", width=32, depth=2, mlp_dim=64, num_heads=2,
             num_kv_heads=1, vocab_size=V, tie_embeddings=False, projector="linear",
             mlp_type="gated")
  return gpt4v.build_model(cfg, image_size=32)


@pytest.fixture(scope="module")
def model():
  return _model()


@pytest.fixture(scope="module")
def inputs():
  """images [2, 32, 32, 3], prompt [2, PROMPT_LEN] right-padded, prompt_mask."""
  rng = np.random.default_rng(0)
  b = len(PROMPT_LENGTHS)
  images = jnp.asarray(rng.uniform(-1, 1, (b, 32, 32, 3)), jnp.float32)
  mask = np.arange(PROMPT_LEN)[None] < np.array(PROMPT_LENGTHS)[:, None]
  prompt = np.where(mask, rng.integers(0, V, (b, PROMPT_LEN)), 0)
  return images, jnp.asarray(prompt, jnp.int32), jnp.asarray(mask)


@pytest.fixture(scope="module")
def params(model, inputs):
  """Random weights of the init's shapes: normal(0, 1 / sqrt(leading dim)), unit norm
  scales, and an unembedding scaled up so the next-token distribution is far from flat."""
  images, prompt, mask = inputs
  shapes = jax.eval_shape(model.init, jax.random.key(0), images, prompt,
                          jnp.zeros_like(mask), mask)["params"]
  rng = np.random.default_rng(0)

  def draw(path, leaf):
    name = jax.tree_util.keystr(path)
    if "scale" in name:
      return jnp.ones(leaf.shape, leaf.dtype)
    std = (1.5 if "unembedding" in name else 1.0) / np.sqrt(leaf.shape[0])
    return jnp.asarray(rng.normal(0, std, leaf.shape), leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, nn.unbox(shapes))


@pytest.fixture(scope="module")
def sequence_logp(model, params, inputs):
  """[B, V^L, L] log-probs of every token of every length-L sequence after each prompt,
  from one teacher-forced forward pass, and the sequences [V^L, L]."""
  images, prompt, _ = inputs
  seqs = np.array(list(itertools.product(range(V), repeat=L)), np.int32)
  b, n = len(PROMPT_LENGTHS), len(seqs)
  width = PROMPT_LEN + L - 1  # The last token is predicted, never fed.
  lengths = np.repeat(PROMPT_LENGTHS, n)
  text = np.zeros((b * n, width), np.int32)
  for row, (example, seq) in enumerate(itertools.product(range(b), seqs)):
    text[row, :lengths[row]] = prompt[example, :lengths[row]]
    text[row, lengths[row]:lengths[row] + L - 1] = seq[:-1]
  idx = np.arange(width)[None]
  logits = jax.jit(model.apply)({"params": params}, jnp.repeat(images, n, axis=0),
                                jnp.asarray(text), idx >= lengths[:, None],
                                idx < (lengths + L - 1)[:, None])
  logp = np.asarray(jax.nn.log_softmax(logits, axis=-1))
  # Position lengths - 1 + i predicts new token i.
  at = lengths[:, None] - 1 + np.arange(L)[None]
  tokens = np.tile(seqs, (b, 1))
  picked = np.take_along_axis(logp[np.arange(b * n)[:, None], at], tokens[..., None], -1)
  return picked[..., 0].reshape(b, n, L), seqs


def _brute_force(sequence_logp, stop_ids, length_penalty, allowed=None):
  """(tokens [B, L], scores [B]): the best hypothesis per example over every sequence, each
  cut at its first stop id, scored as `beam_search` documents."""
  logp, seqs = sequence_logp
  allowed = np.ones(V, bool) if allowed is None else np.asarray(allowed)
  tokens, scores = [], []
  for example_logp in logp:
    best = (-np.inf, None)
    for seq, token_logp in zip(seqs, example_logp):
      hits = np.flatnonzero(np.isin(seq, stop_ids))
      n = hits[0] + 1 if len(hits) else L
      if not allowed[seq[:n]].all():
        continue
      score = token_logp[:n].sum() / n ** length_penalty
      if score > best[0]:
        best = (score, np.concatenate([seq[:n], np.full(L - n, PAD)]))
    scores.append(best[0])
    tokens.append(best[1])
  return np.array(tokens), np.array(scores, np.float32)


def _search(model, params, inputs, num_beams, stop_ids=STOP, **kwargs):
  tokens, scores = beam_search.beam_search(model, params, *inputs, L, stop_ids, PAD,
                                           num_beams=num_beams, **kwargs)
  assert tokens.shape == (inputs[1].shape[0], L) and tokens.dtype == jnp.int32
  assert scores.shape == (inputs[1].shape[0],) and scores.dtype == jnp.float32
  return np.asarray(tokens), np.asarray(scores)


@pytest.mark.parametrize("stop_ids", [[STOP], [1, STOP]], ids=["one_stop", "two_stops"])
def test_exhaustive_search_matches_brute_force(model, params, inputs, sequence_logp,
                                               stop_ids):
  answers = []
  for length_penalty in (1.0, 0.0, 2.0):
    expected = _brute_force(sequence_logp, stop_ids, length_penalty)
    tokens, scores = _search(model, params, inputs, EXHAUSTIVE, jnp.array(stop_ids),
                             length_penalty=length_penalty)
    np.testing.assert_array_equal(tokens, expected[0], err_msg=f"lp={length_penalty}")
    np.testing.assert_allclose(scores, expected[1], atol=1e-4, rtol=1e-5)
    answers.append(expected[0])
  # The penalty changes the winner somewhere, so the length-penalty cases test something.
  assert not all(np.array_equal(a, answers[0]) for a in answers[1:])


def test_allowed_tokens_restrict_the_search(model, params, inputs, sequence_logp):
  allowed = np.array([True, False, True, True, False])
  expected = _brute_force(sequence_logp, [STOP], 1.0, allowed)
  tokens, scores = _search(model, params, inputs, EXHAUSTIVE,
                           allowed_tokens=jnp.asarray(allowed))
  np.testing.assert_array_equal(tokens, expected[0])
  np.testing.assert_allclose(scores, expected[1], atol=1e-4, rtol=1e-5)
  assert not np.array_equal(expected[0], _brute_force(sequence_logp, [STOP], 1.0)[0])
  tokens, _ = _search(model, params, inputs, 2, allowed_tokens=jnp.asarray(allowed))
  assert np.all((tokens == PAD) | allowed[tokens])


def test_batch_rows_equal_each_example_alone(model, params, inputs):
  """num_beams=2 prunes: rows must still not mix. Alone, the prompt is cut to its valid
  tokens, so the cache layout differs too."""
  images, prompt, mask = inputs
  for length_penalty in (1.0, 2.0):
    tokens, scores = _search(model, params, inputs, 2, length_penalty=length_penalty)
    for row, n in enumerate(PROMPT_LENGTHS):
      alone = (images[row:row + 1], prompt[row:row + 1, :n], mask[row:row + 1, :n])
      one_tokens, one_scores = _search(model, params, alone, 2,
                                       length_penalty=length_penalty)
      np.testing.assert_array_equal(tokens[row], one_tokens[0])
      np.testing.assert_allclose(scores[row], one_scores[0], atol=1e-5, rtol=1e-5)


def test_scanned_decoder_matches_brute_force(model, params, inputs, sequence_logp):
  """The stacked cache's batch axis is 1: reordering it on axis 0 would mix layers."""
  scanned = model.clone(decoder=model.decoder.clone(scan_layers=True))
  decoder = dict(params["decoder"])
  blocks = [decoder.pop(f"block_{i}") for i in range(model.decoder.depth)]
  decoder["blocks"] = jax.tree.map(lambda *layers: jnp.stack(layers), *blocks)
  scanned_params = {**params, "decoder": decoder}
  tokens, scores = _search(scanned, scanned_params, inputs, EXHAUSTIVE)
  expected = _brute_force(sequence_logp, [STOP], 1.0)
  np.testing.assert_array_equal(tokens, expected[0])
  np.testing.assert_allclose(scores, expected[1], atol=1e-4, rtol=1e-5)
  unscanned = _search(model, params, inputs, EXHAUSTIVE)
  np.testing.assert_array_equal(tokens, unscanned[0])
  np.testing.assert_allclose(scores, unscanned[1], atol=1e-5, rtol=1e-5)


def test_traced_settings_do_not_recompile(model, params, inputs):
  jitted = beam_search._beam_search  # pylint: disable=protected-access
  _search(model, params, inputs, 2, stop_ids=STOP)
  compiled = jitted._cache_size()
  _search(model, params, inputs, 2, stop_ids=jnp.array([1]), length_penalty=0)
  _search(model, params, inputs, 2, stop_ids=4, allowed_tokens=jnp.arange(V) < 4,
          image_mask=jnp.array([True, False]))
  assert jitted._cache_size() == compiled


def test_bad_arguments_name_the_setting(model, params, inputs):
  with pytest.raises(ValueError, match="num_beams=0"):
    _search(model, params, inputs, 0)
  with pytest.raises(ValueError, match="eos_ids has shape"):
    _search(model, params, inputs, 2, stop_ids=jnp.zeros((2, 2), jnp.int32))


# ----------------------------------------------------------------------------
# Stop sets in `decode.token_loop` (greedy decoding and sampling).
# ----------------------------------------------------------------------------

NEW = 8


def _cut_at_stops(free, stop_ids):
  """The free-running rows [B, NEW], cut after their first stop id and padded with PAD."""
  out = np.full_like(free, PAD)
  for row, tokens in enumerate(free):
    hits = np.flatnonzero(np.isin(tokens, stop_ids))
    n = hits[0] + 1 if len(hits) else NEW
    out[row, :n] = tokens[:n]
  return out


def test_greedy_and_sampling_stop_at_any_stop_id(model, params, inputs):
  """Single ids are covered by tests/test_decode.py and tests/test_sampling.py; two-id sets
  share one compilation here."""
  runs = {"greedy": lambda stops: decode.greedy_decode(model, params, *inputs, NEW, stops, PAD),
          "sample": lambda stops: sampling.sample(model, params, jax.random.key(0), *inputs,
                                                  NEW, stops, PAD)}
  for name, run in runs.items():
    free = np.asarray(run(jnp.array([V, V + 1])))  # Ids the model cannot emit.
    # Two ids where each of them alone would cut some row elsewhere: both must count.
    stops = next([a, b] for a, b in itertools.combinations(range(V), 2)
                 if not np.array_equal(_cut_at_stops(free, [a, b]), _cut_at_stops(free, [a]))
                 and not np.array_equal(_cut_at_stops(free, [a, b]), _cut_at_stops(free, [b])))
    np.testing.assert_array_equal(run(jnp.array(stops)), _cut_at_stops(free, stops),
                                  err_msg=name)
