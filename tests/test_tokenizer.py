import numpy as np
import pytest

from gpt4v_jax.data import tokenizer as tok


def test_byte_round_trip_and_specials():
  t = tok.ByteTokenizer()
  text = "a small red circle, héllo!"
  ids = t.encode(text)
  assert min(ids) >= tok.NUM_RESERVED and max(ids) < t.vocab_size
  assert t.decode(ids) == text
  # Decoding stops at EOS and skips PAD/BOS.
  assert t.decode([t.bos_id] + ids + [t.eos_id] + t.encode("junk")) == text
  assert t.decode(np.array([t.pad_id] + ids, np.int32)) == text
  # Ids past the tokenizer's (vocabulary padding, image codes) are dropped, not a crash.
  assert t.decode(ids[:2] + [t.vocab_size, 383] + ids[2:]) == text


def test_sentencepiece_satisfies_the_interface(tmp_path):
  spm = pytest.importorskip("sentencepiece")
  corpus = tmp_path / "corpus.txt"
  words = ["small", "large", "red", "green", "blue", "circle", "square", "triangle"]
  rng = np.random.default_rng(0)
  corpus.write_text("\n".join(" ".join(rng.choice(words, 6)) for _ in range(300)))
  spm.SentencePieceTrainer.train(
      input=str(corpus), model_prefix=str(tmp_path / "sp"), vocab_size=24,
      model_type="unigram", minloglevel=2)
  t = tok.get_tokenizer(f"sentencepiece:{tmp_path / 'sp.model'}")
  ids = t.encode("a small red circle")
  assert min(ids) >= tok.NUM_RESERVED and max(ids) < t.vocab_size
  assert t.decode(ids + [t.eos_id, 20]) == "a small red circle"


def test_unknown_spec_names_the_key():
  with pytest.raises(ValueError, match="config.tokenizer"):
    tok.get_tokenizer("wordpiece")
