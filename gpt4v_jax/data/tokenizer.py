"""Text tokenizers.

Three satisfy one interface, none downloads anything: bytes (any text, no files), words (a
closed word list: a synthetic dataset's whole language in a few dozen ids, so rows are 4-5x
shorter than in bytes) and a SentencePiece model file (larger vocabularies).

Id layout shared by every tokenizer here:
  0 PAD, 1 BOS, 2 EOS, 3.. one task token per objective (`TASK_IDS`), up to 15 reserved for
  task and image marker tokens, 16.. the tokenizer's own pieces (bytes 0..255 for
  `ByteTokenizer`).
"""
import re
from typing import Protocol, Sequence

PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
NUM_RESERVED = 16  # Ids below this are special; room for task and image tokens.
# The first prompt token names the task, so one decoder can serve several objectives with a
# one-token prompt (cheaper than spelling "caption:" in bytes).
TASK_IDS = {"caption": 3, "vqa": 4, "text_to_image": 5}
# Begin and end of an image's code tokens (text-to-image); the codes themselves take the ids
# after the tokenizer's own pieces.
BOI_ID, EOI_ID = 6, 7


class Tokenizer(Protocol):
  """What the objectives need from a tokenizer."""
  pad_id: int
  bos_id: int
  eos_id: int
  vocab_size: int

  def encode(self, text: str) -> list[int]:
    """Text -> piece ids, without BOS/EOS."""

  def decode(self, ids: Sequence[int]) -> str:
    """Piece ids -> text; stops at the first EOS, skips other special ids."""


def _own_pieces(ids: Sequence[int], vocab_size: int) -> list[int]:
  """Ids up to the first EOS, shifted back to the tokenizer's own range. Special ids are
  dropped, and so are ids past the tokenizer's (a model's vocabulary is padded, and holds
  image codes for text-to-image): a decoder may emit them."""
  pieces = []
  for i in map(int, ids):
    if i == EOS_ID:
      break
    if NUM_RESERVED <= i < vocab_size:
      pieces.append(i - NUM_RESERVED)
  return pieces


class ByteTokenizer:
  """UTF-8 bytes shifted past the reserved ids: vocab 16 + 256 = 272."""
  pad_id, bos_id, eos_id = PAD_ID, BOS_ID, EOS_ID
  vocab_size = NUM_RESERVED + 256

  def encode(self, text: str) -> list[int]:
    return [b + NUM_RESERVED for b in text.encode("utf-8")]

  def decode(self, ids: Sequence[int]) -> str:
    return bytes(_own_pieces(ids, self.vocab_size)).decode("utf-8", errors="replace")


class SentencePieceTokenizer:
  """A SentencePiece model file, with its ids shifted past the reserved ids.

  The model's own control pieces (<unk>, <s>, </s>) keep their shifted ids but are never
  produced by `encode` with our BOS/EOS: the objectives add ours.
  """
  pad_id, bos_id, eos_id = PAD_ID, BOS_ID, EOS_ID

  def __init__(self, model_path: str):
    import sentencepiece  # Optional dependency: only needed for this tokenizer.
    self._sp = sentencepiece.SentencePieceProcessor(model_file=model_path)
    self.vocab_size = NUM_RESERVED + self._sp.get_piece_size()

  def encode(self, text: str) -> list[int]:
    return [i + NUM_RESERVED for i in self._sp.encode(text)]

  def decode(self, ids: Sequence[int]) -> str:
    return self._sp.decode(_own_pieces(ids, self.vocab_size))


class WordTokenizer:
  """One id per word or punctuation mark of a fixed word list; anything else is `<unk>`.

  Text splits into words (`\\w+`) and single punctuation marks; decoding joins words with
  spaces and attaches punctuation to the word before it, so single-spaced text whose
  punctuation follows a word ("a red circle, a blue square.") round-trips exactly.
  Id layout: the reserved ids, then `<unk>`, then the words in list order.
  """
  pad_id, bos_id, eos_id = PAD_ID, BOS_ID, EOS_ID
  UNK = "<unk>"
  _SPLIT = re.compile(r"\w+|[^\w\s]")

  def __init__(self, words: Sequence[str]):
    self._pieces = [self.UNK] + list(words)
    if len(set(self._pieces)) != len(self._pieces):
      raise ValueError("WordTokenizer: the word list has duplicates or contains '<unk>'.")
    self._ids = {w: i for i, w in enumerate(self._pieces)}
    self.vocab_size = NUM_RESERVED + len(self._pieces)

  @classmethod
  def split(cls, text: str) -> list[str]:
    """Text -> its words and punctuation marks."""
    return cls._SPLIT.findall(text)

  def encode(self, text: str) -> list[int]:
    return [self._ids.get(w, 0) + NUM_RESERVED for w in self.split(text)]

  def decode(self, ids: Sequence[int]) -> str:
    out = ""
    for i in _own_pieces(ids, self.vocab_size):
      piece = self._pieces[i]
      attach = not out or (len(piece) == 1 and not piece.isalnum())
      out += piece if attach else " " + piece
    return out


def _word_list(name: str) -> list[str]:
  """`"shapes"` (the dataset's own language) or a file with one word per line."""
  if name == "shapes":
    from gpt4v_jax.data import shapes  # Imported here: shapes pulls in TFDS.
    return shapes.vocabulary()
  try:
    with open(name, encoding="utf-8") as f:
      return [line.strip() for line in f if line.strip()]
  except OSError as e:
    raise ValueError(f"config.tokenizer='words:{name}': not 'shapes' and not a readable word "
                     f"list ({e}).") from e


def get_tokenizer(spec: str) -> Tokenizer:
  """The config's `tokenizer` value: `"bytes"`, `"words:shapes"`, `"words:/path/words.txt"`
  or `"sentencepiece:/path/to/model"`."""
  if spec == "bytes":
    return ByteTokenizer()
  if spec.startswith("words:"):
    return WordTokenizer(_word_list(spec.split(":", 1)[1]))
  if spec.startswith("sentencepiece:"):
    return SentencePieceTokenizer(spec.split(":", 1)[1])
  raise ValueError(f"config.tokenizer={spec!r}: expected 'bytes', 'words:shapes', "
                   "'words:/path/to/words.txt' or 'sentencepiece:/path/to/model'.")
