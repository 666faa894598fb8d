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


# Text in several scripts: Chinese, Arabic, emoji (with a skin-tone modifier), precomposed and
# combining accents.
MULTI = "你好，世界 · مرحبا بالعالم · 🙂👍🏽 · café naïve cafe\u0301"
# The reserved layout of bytes, words and sentencepiece: trained checkpoints depend on it.
RESERVED = dict(pad_id=0, bos_id=1, eos_id=2, boi_id=6, eoi_id=7, task_ids=dict(
    caption=3, vqa=4, text_to_image=5, prompt=8, contrastive=9))


def _special_ids(t):
  return {name: getattr(t, name) for name in RESERVED}


def _hf_file(path, *, pad_and_truncate=False):
  """A tiny byte-level BPE (GPT-2 style, with its own "<|endoftext|>" and a post-processor
  that adds it) trained on a few English sentences, saved as tokenizer.json."""
  tokenizers = pytest.importorskip("tokenizers")
  from tokenizers import decoders, models, pre_tokenizers, processors, trainers
  tk = tokenizers.Tokenizer(models.BPE())
  tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tk.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tk.train_from_iterator(["a small red circle", "a large blue square above a circle",
                          "what color is the square?", "two triangles"] * 5, trainer)
  tk.post_processor = processors.TemplateProcessing(
      single="$A <|endoftext|>", special_tokens=[("<|endoftext|>", 0)])
  if pad_and_truncate:  # Settings a tokenizer.json may carry; ours must ignore them.
    tk.enable_truncation(max_length=3)
    tk.enable_padding(length=64, pad_id=0, pad_token="<|endoftext|>")
  tk.save(str(path))
  return tk


def test_hf_ids_unshifted_and_specials_after_the_file(tmp_path):
  ref = _hf_file(tmp_path / "tokenizer.json")
  v = len(ref.get_vocab(with_added_tokens=True))
  assert v == 300 and ref.token_to_id("<|endoftext|>") == 0
  t = tok.get_tokenizer(f"hf:{tmp_path / 'tokenizer.json'}")
  text = "a small red circle above two squares"
  ids = t.encode(text)
  # The file's own ids, without its post-processor's "<|endoftext|>".
  assert ids == ref.encode(text, add_special_tokens=False).ids
  assert ref.encode(text).ids == ids + [0]
  assert t.decode(ids) == text
  assert _special_ids(t) == dict(pad_id=v, bos_id=v + 1, eos_id=v + 2, boi_id=v + 6,
                                 eoi_id=v + 7, task_ids=dict(caption=v + 3, vqa=v + 4,
                                 text_to_image=v + 5, prompt=v + 8,
                                 contrastive=v + 9))
  assert t.vocab_size == v + 16
  # Decoding stops at our EOS; skips our specials and ids past the tokenizer (image codes,
  # vocabulary padding).
  noisy = ([t.bos_id, t.task_ids["caption"]] + ids[:3] + [t.boi_id, t.vocab_size, v + 15]
           + ids[3:] + [t.eoi_id, t.pad_id, t.eos_id] + ids)
  assert t.decode(noisy) == text
  assert t.decode(np.array(ids + [t.eos_id, 5], np.int32)) == text
  # A directory holding tokenizer.json names it too.
  assert tok.get_tokenizer(f"hf:{tmp_path}").encode(text) == ids


def test_hf_ignores_file_padding_and_truncation_and_pickles(tmp_path):
  import pickle
  ref = _hf_file(tmp_path / "tokenizer.json", pad_and_truncate=True)
  assert len(ref.encode("a small red circle").ids) == 64
  t = pickle.loads(pickle.dumps(tok.get_tokenizer(f"hf:{tmp_path / 'tokenizer.json'}")))
  ids = t.encode("a small red circle above two squares")
  assert 3 < len(ids) < 64 and max(ids) < 300
  assert t.decode(ids) == "a small red circle above two squares"


def test_hf_bad_file_names_the_setting(tmp_path):
  (tmp_path / "tokenizer.json").write_text("{not json")
  with pytest.raises(ValueError, match="config.tokenizer='hf:.*tokenizer.json"):
    tok.get_tokenizer(f"hf:{tmp_path}")


def test_utf8_round_trips_in_any_script(tmp_path):
  """Bytes and a byte-level hf tokenizer (trained on English only) round-trip every script."""
  _hf_file(tmp_path / "tokenizer.json")
  for spec in ["bytes", f"hf:{tmp_path / 'tokenizer.json'}"]:
    t = tok.get_tokenizer(spec)
    ids = t.encode(MULTI)
    assert max(ids) < t.vocab_size and not {t.pad_id, t.bos_id, t.eos_id} & set(ids), spec
    assert t.decode([t.bos_id] + ids + [t.eos_id]) == MULTI, spec
  b = tok.ByteTokenizer()
  assert b.encode("é") == [0xC3 + 16, 0xA9 + 16]
  # A byte sequence cut mid-character decodes with a replacement mark, not an error.
  assert b.decode(b.encode("你")[:2]) == "\ufffd"


def test_words_non_ascii(tmp_path):
  words = tmp_path / "words.txt"
  words.write_text("你好\ncafé\nمرحبا\n,\n", encoding="utf-8")
  t = tok.get_tokenizer(f"words:{words}")
  assert t.encode("你好, café مرحبا") == [17, 20, 18, 19]
  assert t.decode([17, 20, 18, 19]) == "你好, café مرحبا"
  assert t.encode("世界 naïve café") == [16, 16, 18]  # Unknown words are <unk>.


def test_special_ids_of_the_reserved_tokenizers(tmp_path, sp_model):
  words = tmp_path / "words.txt"
  words.write_text("red\ncircle\n")
  cases = {"bytes": 272, f"words:{words}": 19,
           f"sentencepiece:{sp_model}": 16 + _sp_pieces(sp_model)}
  for spec, vocab_size in cases.items():
    t = tok.get_tokenizer(spec)
    assert _special_ids(t) == RESERVED, spec
    assert t.vocab_size == vocab_size, spec
  # The module constants are the same layout (until callers use the attributes).
  assert (tok.PAD_ID, tok.BOS_ID, tok.EOS_ID, tok.BOI_ID, tok.EOI_ID) == (0, 1, 2, 6, 7)
  assert tok.TASK_IDS == RESERVED["task_ids"] and tok.NUM_RESERVED == 16
  # Each tokenizer owns its dict: changing one does not move another's ids.
  a, b = tok.ByteTokenizer(), tok.ByteTokenizer()
  a.task_ids["caption"] = 99
  assert b.task_ids["caption"] == 3 and tok.TASK_IDS["caption"] == 3


# --- train_tokenizer ---

def _sp_pieces(model):
  import sentencepiece
  return sentencepiece.SentencePieceProcessor(model_file=str(model)).get_piece_size()


def _corpus(path, n=400):
  """Lines of English, Chinese, Arabic, accented words and emoji."""
  words = ["a", "small", "red", "circle", "blue", "square", "你好", "世界", "مرحبا", "بالعالم",
           "café", "naïve", "🙂", "👍"]
  rng = np.random.default_rng(0)
  path.write_text("\n".join(" ".join(rng.choice(words, 6)) for _ in range(n)) + "\n\n",
                  encoding="utf-8")
  return path


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
  pytest.importorskip("sentencepiece")
  from gpt4v_jax.data import train_tokenizer
  d = tmp_path_factory.mktemp("sp")
  train_tokenizer.main([f"--text_file={_corpus(d / 'c.txt')}", "--vocab_size=40",
                        f"--out={d / 'sp'}", "--character_coverage=1.0"])
  return d / "sp.model"


def test_train_tokenizer_on_text_files(tmp_path, capsys):
  pytest.importorskip("sentencepiece")
  from gpt4v_jax.data import train_tokenizer
  corpus = _corpus(tmp_path / "c.txt")
  extra = tmp_path / "d.txt"
  extra.write_text("a large green triangle\n", encoding="utf-8")
  out = tmp_path / "models" / "sp"  # The directory is created.
  argv = [f"--text_file={corpus}", f"--text_file={extra}", "--vocab_size=48", f"--out={out}",
          "--character_coverage=1.0"]
  train_tokenizer.main(argv)
  printed = capsys.readouterr().out
  assert f"--config.tokenizer=sentencepiece:{out}.model" in printed
  first = (tmp_path / "models" / "sp.model").read_bytes()
  t = tok.get_tokenizer(f"sentencepiece:{out}.model")
  assert t.vocab_size == 48 + 16 and "48 pieces, 64 tokenizer ids" in printed
  # The tokens-per-text figure, recomputed with the loaded tokenizer.
  lines = [l for l in corpus.read_text(encoding="utf-8").splitlines() if l] + [
      "a large green triangle"]
  per_text = sum(len(t.encode(l)) for l in lines) / len(lines)
  assert f"{per_text:.2f} tokens per text" in printed and f"for {len(lines)} texts" in printed
  text = "你好 مرحبا café 🙂 small circle"
  ids = t.encode(text)
  assert min(ids) > 16  # No <unk> (own piece 0): every character was covered.
  assert t.decode(ids + [t.eos_id, 20]) == text
  # Same input and flags: the same model, byte for byte.
  train_tokenizer.main(argv)
  assert (tmp_path / "models" / "sp.model").read_bytes() == first


def test_train_tokenizer_identity_normalization_keeps_combining_accents(tmp_path):
  pytest.importorskip("sentencepiece")
  from gpt4v_jax.data import train_tokenizer
  corpus = tmp_path / "c.txt"
  corpus.write_text("cafe\u0301 the cafe\u0301 is open\nna\u0308ive cafe\u0301\n" * 20)
  for normalization, expected in [("identity", "cafe\u0301"), ("nmt_nfkc", "café")]:
    train_tokenizer.main([f"--text_file={corpus}", "--vocab_size=20", f"--out={tmp_path / 'sp'}",
                          "--character_coverage=1.0", f"--normalization={normalization}",
                          "--model_type=bpe"])
    t = tok.get_tokenizer(f"sentencepiece:{tmp_path / 'sp.model'}")
    assert t.decode(t.encode("cafe\u0301")) == expected, normalization


def _write_jsonl(path, rows):
  import json
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n",
                  encoding="utf-8")


def test_train_tokenizer_on_an_image_folder(tmp_path, capsys):
  pytest.importorskip("sentencepiece")
  from gpt4v_jax.data import train_tokenizer
  root = tmp_path / "folder"
  _write_jsonl(root / "train" / "metadata.jsonl", [
      {"file_name": "a.png", "caption": "un petit cercle rouge", "extra": "not read"},
      {"file_name": "b.png", "captions": ["一个红色的圆", "دائرة حمراء"],
       "question": "de quelle couleur?", "answers": ["rouge", "rouge vif"]},
      {"file_name": "c.png", "questions": "not a field we read",
       "question": ["combien?", "où?"], "answers": [["deux", "2"], ["en haut"]]},
  ])
  _write_jsonl(root / "validation" / "metadata.jsonl", [
      {"file_name": "d.png", "prompt": "décris l'image", "target": "un carré bleu 🙂",
       "answer": "bleu", "caption": ""},
  ])
  expected = ["un petit cercle rouge", "一个红色的圆", "دائرة حمراء", "de quelle couleur?",
              "rouge", "rouge vif", "combien?", "où?", "deux", "2", "en haut",
              "bleu", "décris l'image", "un carré bleu 🙂"]
  assert list(train_tokenizer.input_texts([], [f"folder:{root}"])) == expected
  train_tokenizer.main([f"--data=folder:{root}", "--vocab_size=60", f"--out={tmp_path / 'sp'}",
                        "--character_coverage=1.0", "--model_type=bpe"])
  assert f"for {len(expected)} texts" in capsys.readouterr().out
  t = tok.get_tokenizer(f"sentencepiece:{tmp_path / 'sp.model'}")
  for text in expected:
    assert t.decode(t.encode(text)) == text


def test_train_tokenizer_errors_name_the_input(tmp_path):
  pytest.importorskip("sentencepiece")
  from gpt4v_jax.data import train_tokenizer
  out = f"--out={tmp_path / 'sp'}"
  _write_jsonl(tmp_path / "f" / "train" / "metadata.jsonl", [{"caption": 3}])
  with pytest.raises(SystemExit, match=r"metadata.jsonl:1 field 'caption'"):
    train_tokenizer.main([f"--data=folder:{tmp_path / 'f'}", "--vocab_size=10", out])
  with pytest.raises(SystemExit, match="found no"):
    train_tokenizer.main([f"--data=folder:{tmp_path / 'none'}", "--vocab_size=10", out])
  (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
  with pytest.raises(SystemExit, match="latin1.txt is not UTF-8"):
    train_tokenizer.main([f"--text_file={tmp_path / 'latin1.txt'}", "--vocab_size=10", out])
  with pytest.raises(SystemExit, match="--vocab_size"):
    train_tokenizer.main([f"--text_file={_corpus(tmp_path / 'c.txt')}", "--vocab_size=5000",
                          out])
