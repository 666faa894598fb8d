"""Text tokenizers.

Four satisfy one interface, none downloads anything: bytes (any text, no files), words (a
closed word list: a synthetic dataset's whole language in a few dozen ids, so rows are 4-5x
shorter than in bytes), a SentencePiece model file (larger vocabularies; train one on your text
with `python -m gpt4v_jax.data.train_tokenizer`) and a Hugging Face `tokenizers` file
(`tokenizer.json`, e.g. a pretrained language model's).

Every tokenizer has one block of `NUM_RESERVED` = 16 special ids, laid out the same way within
the block (offsets 0 PAD, 1 BOS, 2 EOS, 3.. task tokens `TASK_IDS`, 6 BOI, 7 EOI, up to 15 spare),
and exposes them as attributes: `pad_id`, `bos_id`, `eos_id`, `task_ids`, `boi_id`, `eoi_id`.
`vocab_size` counts every id it can produce, specials included; callers place image codes from
`vocab_size` on. Where the block sits:
  bytes, words, sentencepiece: first, ids 0..15; the tokenizer's own pieces from 16 on (bytes
    0..255 for `ByteTokenizer`). Trained checkpoints depend on this layout: keep it.
  hf: last, ids V..V+15 after the file's V ids, which keep their values so that a pretrained
    language model's embedding rows line up.
"""
import os
import re
from typing import Mapping, Protocol, Sequence

PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
NUM_RESERVED = 16  # Size of the special block; room for task and image tokens.
# The first prompt token names the task, so one decoder can serve several objectives with a
# one-token prompt (cheaper than spelling "caption:" in bytes). "prompt" is a generic
# prompt -> target task. New tasks take spare offsets (9..15); existing ones never move.
TASK_IDS = {"caption": 3, "vqa": 4, "text_to_image": 5, "prompt": 8, "contrastive": 9}
# Begin and end of an image's code tokens (text-to-image); the codes themselves take the ids
# from the tokenizer's vocab_size on.
BOI_ID, EOI_ID = 6, 7
# The module constants above are the ids of the bytes, words and sentencepiece tokenizers (their
# block starts at 0). Code that may meet an hf tokenizer uses the tokenizer's attributes.


class Tokenizer(Protocol):
  """What the objectives need from a tokenizer."""
  pad_id: int
  bos_id: int
  eos_id: int
  task_ids: Mapping[str, int]  # Task name ("caption", "vqa", ...) -> its prompt's first id.
  boi_id: int  # Begins an image's codes.
  eoi_id: int  # Ends them.
  vocab_size: int  # Every id the tokenizer produces, specials included.

  def encode(self, text: str) -> list[int]:
    """Text -> piece ids, without BOS/EOS."""

  def decode(self, ids: Sequence[int]) -> str:
    """Piece ids -> text; stops at the first EOS, skips other special ids."""


class _SpecialIds:
  """The special-id attributes of a block of NUM_RESERVED ids from `first_special` on, and
  decoding's filter for the `num_pieces` own ids from `first_piece` on."""

  def _set_layout(self, *, first_special: int, first_piece: int, num_pieces: int) -> None:
    s = first_special
    self.pad_id, self.bos_id, self.eos_id = s + PAD_ID, s + BOS_ID, s + EOS_ID
    self.boi_id, self.eoi_id = s + BOI_ID, s + EOI_ID
    self.task_ids = {name: s + i for name, i in TASK_IDS.items()}
    self.vocab_size = num_pieces + NUM_RESERVED
    self._first_piece, self._num_pieces = first_piece, num_pieces

  def _own_pieces(self, ids: Sequence[int]) -> list[int]:
    """Ids up to the first EOS, shifted back to the tokenizer's own range. Special ids are
    dropped, and so are ids past the tokenizer's (a model's vocabulary is padded, and holds
    image codes for text-to-image): a decoder may emit them."""
    pieces = []
    for i in map(int, ids):
      if i == self.eos_id:
        break
      if 0 <= i - self._first_piece < self._num_pieces:
        pieces.append(i - self._first_piece)
    return pieces


class ByteTokenizer(_SpecialIds):
  """UTF-8 bytes shifted past the special ids: vocab 16 + 256 = 272."""

  def __init__(self):
    self._set_layout(first_special=0, first_piece=NUM_RESERVED, num_pieces=256)

  def encode(self, text: str) -> list[int]:
    return [b + NUM_RESERVED for b in text.encode("utf-8")]

  def decode(self, ids: Sequence[int]) -> str:
    return bytes(self._own_pieces(ids)).decode("utf-8", errors="replace")


class SentencePieceTokenizer(_SpecialIds):
  """A SentencePiece model file, with its ids shifted past the special ids.

  The model's own control pieces (<unk>, <s>, </s>) keep their shifted ids but are never
  produced by `encode` with our BOS/EOS: the objectives add ours.
  """

  def __init__(self, model_path: str):
    import sentencepiece  # Imported here: only this tokenizer needs it.
    try:
      self._sp = sentencepiece.SentencePieceProcessor(model_file=model_path)
    except (OSError, RuntimeError) as e:
      raise ValueError(f"config.tokenizer='sentencepiece:{model_path}': not a readable "
                       f"SentencePiece model ({e}). Train one with `python -m "
                       "gpt4v_jax.data.train_tokenizer`.") from e
    self._set_layout(first_special=0, first_piece=NUM_RESERVED,
                     num_pieces=self._sp.get_piece_size())

  def encode(self, text: str) -> list[int]:
    return [i + NUM_RESERVED for i in self._sp.encode(text)]

  def decode(self, ids: Sequence[int]) -> str:
    return self._sp.decode(self._own_pieces(ids))


class HFTokenizer(_SpecialIds):
  """A Hugging Face `tokenizers` file (`tokenizer.json`), its ids unshifted: 0..V-1 as in the
  file (V = its largest id + 1, added tokens included), our special block at V..V+15.

  The block is ours even where the file names its own pad/bos/eos (e.g. GPT-2's
  "<|endoftext|>"): a PAD must never be a real token, and `tokenizers` matches a file's special
  tokens inside plain text, so a caption containing "<|endoftext|>" would otherwise end its row
  early. The file's specials stay ordinary ids: `encode` produces them only where the text
  spells them, never adds them (no post-processor: the objectives add our BOS/EOS), and
  `decode` drops them. A pretrained language model's embedding needs 16 new rows (plus codes).
  """

  def __init__(self, path: str):
    import tokenizers  # Imported here: only this tokenizer needs it.
    file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
    try:
      self._tk = tokenizers.Tokenizer.from_file(file)
    except Exception as e:  # `tokenizers` raises plain Exception for unreadable files.
      raise ValueError(f"config.tokenizer='hf:{path}': {file} is not a readable Hugging Face "
                       f"tokenizer file ({e}); give a tokenizer.json or a directory that holds "
                       "one.") from e
    # A file may ask for truncation or padding to a fixed length; rows are the objectives' job.
    self._tk.no_truncation()
    self._tk.no_padding()
    num_pieces = max(self._tk.get_vocab(with_added_tokens=True).values(), default=-1) + 1
    self._set_layout(first_special=num_pieces, first_piece=0, num_pieces=num_pieces)

  def encode(self, text: str) -> list[int]:
    return self._tk.encode(text, add_special_tokens=False).ids

  def decode(self, ids: Sequence[int]) -> str:
    return self._tk.decode(self._own_pieces(ids), skip_special_tokens=True)


class WordTokenizer(_SpecialIds):
  """One id per word or punctuation mark of a fixed word list; anything else is `<unk>`.

  Text splits into words (`\\w+`) and single punctuation marks; decoding joins words with
  spaces and attaches punctuation to the word before it, so single-spaced text whose
  punctuation follows a word ("a red circle, a blue square.") round-trips exactly.
  Id layout: the special ids, then `<unk>`, then the words in list order.
  """
  UNK = "<unk>"
  _SPLIT = re.compile(r"\w+|[^\w\s]")

  def __init__(self, words: Sequence[str]):
    self.words = list(words)  # The list it was built from (what a model export writes).
    self._pieces = [self.UNK] + self.words
    if len(set(self._pieces)) != len(self._pieces):
      raise ValueError("WordTokenizer: the word list has duplicates or contains '<unk>'.")
    self._ids = {w: i for i, w in enumerate(self._pieces)}
    self._set_layout(first_special=0, first_piece=NUM_RESERVED, num_pieces=len(self._pieces))

  @classmethod
  def split(cls, text: str) -> list[str]:
    """Text -> its words and punctuation marks."""
    return cls._SPLIT.findall(text)

  def encode(self, text: str) -> list[int]:
    return [self._ids.get(w, 0) + NUM_RESERVED for w in self.split(text)]

  def decode(self, ids: Sequence[int]) -> str:
    out = ""
    for i in self._own_pieces(ids):
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
  """The config's `tokenizer` value: `"bytes"`, `"words:shapes"`, `"words:/path/words.txt"`,
  `"sentencepiece:/path/to/model"` or `"hf:/path/to/tokenizer.json"` (or its directory)."""
  if spec == "bytes":
    return ByteTokenizer()
  kind, _, path = spec.partition(":")
  if kind == "words":
    return WordTokenizer(_word_list(path))
  if kind == "sentencepiece":
    return SentencePieceTokenizer(path)
  if kind == "hf":
    return HFTokenizer(path)
  raise ValueError(f"config.tokenizer={spec!r}: expected 'bytes', 'words:shapes', "
                   "'words:/path/to/words.txt', 'sentencepiece:/path/to/model' or "
                   "'hf:/path/to/tokenizer.json'.")
