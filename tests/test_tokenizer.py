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


def test_words_round_trip_every_shapes_text():
  """Every caption, question and answer the generator writes (all splits) is in the word
  list and decodes back to itself; the rows it makes are 4-6x shorter than in bytes."""
  from gpt4v_jax.data import shapes
  t = tok.get_tokenizer("words:shapes")
  assert t.vocab_size == tok.NUM_RESERVED + 1 + len(shapes.vocabulary())
  unk = tok.NUM_RESERVED
  byte_len = word_len = 0
  for split in shapes.SPLITS:
    for i in range(200):
      ex = shapes.make_example(0, split, i)
      for text in [*ex["captions"], *ex["questions"], *ex["answers"]]:
        ids = t.encode(text)
        assert unk not in ids and min(ids) > unk and max(ids) < t.vocab_size, text
        assert t.decode(ids) == text
        byte_len, word_len = byte_len + len(text.encode()), word_len + len(ids)
  assert 4 < byte_len / word_len < 6


def test_words_unknown_specials_and_files(tmp_path):
  words = tmp_path / "words.txt"
  words.write_text("red\ncircle\n,\n.\n\n")
  t = tok.get_tokenizer(f"words:{words}")
  assert t.vocab_size == tok.NUM_RESERVED + 5
  ids = t.encode("red circle, blue circle.")
  assert ids == [17, 18, 19, 16, 18, 20]  # "blue" is <unk> (own piece 0).
  assert t.decode(ids) == "red circle, <unk> circle."
  # Stops at EOS; skips PAD/BOS/task ids and ids past the vocabulary (image codes).
  assert t.decode([t.bos_id, 3, 17, t.vocab_size + 5, 18, t.eos_id, 17]) == "red circle"
  assert t.decode([]) == ""
  with pytest.raises(ValueError, match="duplicates"):
    tok.WordTokenizer(["red", "red"])
  with pytest.raises(ValueError, match="words:/no/such/file"):
    tok.get_tokenizer("words:/no/such/file")
