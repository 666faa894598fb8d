"""Trains a SentencePiece tokenizer on your own text, for `config.tokenizer`.

  python -m gpt4v_jax.data.train_tokenizer --text_file=captions.txt --vocab_size=8000 \\
      --out=/tmp/my_sp
  python -m gpt4v_jax.data.train_tokenizer --data=folder:/data/my_images --vocab_size=4000 \\
      --out=/tmp/my_sp --model_type=bpe

Inputs (any number, read in the order given): `--text_file`, UTF-8 text with one text per line
(empty lines skipped); `--data=folder:DIR`, a Hugging Face imagefolder-style dataset, from
whose `DIR/metadata.jsonl` and `DIR/<split>/metadata.jsonl` every caption, question, answer,
prompt and target is read (fields `caption`, `captions`, `question`, `answer`, `answers`,
`prompt`, `target`: a text or a list of texts, lists nested at most as deep as VQA's answers).
Writes PREFIX.model and PREFIX.vocab and prints how to use them:
`--config.tokenizer=sentencepiece:PREFIX.model`.

The text is streamed to SentencePiece (which keeps it in memory to train). The model has no
<s>/</s> pieces: the tokenizer module adds its own special ids. The same input and flags give
the same model bytes; unigram's scores depend on --num_threads (floating-point sums are split
per thread), so keep that flag fixed to reproduce a model.
"""
import argparse
import glob
import json
import os
import sys
from typing import Callable, Iterable, Iterator, Sequence

# Fields of a metadata.jsonl row that hold texts (the image folder's own names).
TEXT_FIELDS = ("caption", "captions", "question", "answer", "answers", "prompt", "target")
SPECIAL_IDS = 16  # The tokenizer module's special block (tokenizer.NUM_RESERVED), not imported
# so that this tool depends on nothing else of the package.


def text_file_texts(path: str) -> Iterator[str]:
  """The non-empty lines of a UTF-8 text file, without their line breaks."""
  with open(path, encoding="utf-8") as f:
    try:
      for line in f:
        line = line.rstrip("\r\n")
        if line.strip():
          yield line
    except UnicodeDecodeError as e:
      raise ValueError(f"--text_file={path} is not UTF-8 ({e}); re-encode it, e.g. "
                       "`iconv -t UTF-8`.") from e


def _metadata_files(root: str) -> list[str]:
  files = sorted(glob.glob(os.path.join(glob.escape(root), "metadata.jsonl")) +
                 glob.glob(os.path.join(glob.escape(root), "*", "metadata.jsonl")))
  if not files:
    raise ValueError(f"--data=folder:{root}: found no {root}/metadata.jsonl nor "
                     f"{root}/<split>/metadata.jsonl; an image folder holds one per split.")
  return files


def _flatten(value, where: str) -> Iterator[str]:
  """A field's texts: a text, or a (nested) list of texts; None is no text."""
  if value is None:
    return
  if isinstance(value, str):
    if value.strip():
      yield value
  elif isinstance(value, list):
    for v in value:
      yield from _flatten(v, where)
  else:
    raise ValueError(f"{where}: expected a text or a list of texts, got {value!r}.")


def folder_texts(root: str) -> Iterator[str]:
  """Every text of an image folder's metadata.jsonl files, split by split, row by row."""
  for path in _metadata_files(root):
    with open(path, encoding="utf-8") as f:
      for n, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          row = json.loads(line)
        except json.JSONDecodeError as e:
          raise ValueError(f"{path}:{n} is not a JSON object ({e}).") from e
        if not isinstance(row, dict):
          raise ValueError(f"{path}:{n} is not a JSON object.")
        for field in TEXT_FIELDS:
          yield from _flatten(row.get(field), f"{path}:{n} field {field!r}")


def input_texts(text_files: Sequence[str], data: Sequence[str]) -> Iterator[str]:
  """All inputs' texts, in the order given: text files first, then datasets."""
  for path in text_files:
    yield from text_file_texts(path)
  for spec in data:
    yield from folder_texts(spec.split(":", 1)[1])


class _Guarded:
  """Iterates `texts`, but keeps an error instead of raising it: SentencePiece would turn it
  into an unreadable RuntimeError. The caller re-raises it after training (`error`)."""

  def __init__(self, texts: Iterable[str]):
    self._texts, self.count, self.error = iter(texts), 0, None

  def __iter__(self):
    return self

  def __next__(self) -> str:
    try:
      text = next(self._texts)
    except StopIteration:
      raise
    except Exception as e:  # Re-raised by the caller, unchanged.
      self.error = e
      raise StopIteration from e
    self.count += 1
    return text


def train(texts: Callable[[], Iterable[str]], *, out: str, vocab_size: int,
          model_type: str = "unigram", character_coverage: float = 0.9995,
          byte_fallback: bool = False, normalization: str = "nmt_nfkc",
          num_threads: int = 16) -> dict:
  """Trains on `texts()` (called twice: to train, then to measure) and writes out.model and
  out.vocab. Returns the model's size and its token counts on the input."""
  import sentencepiece  # Imported here: `--help` needs no extension module.
  if os.path.dirname(out):
    os.makedirs(os.path.dirname(out), exist_ok=True)
  stream = _Guarded(texts())
  try:
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=stream, model_prefix=out, vocab_size=vocab_size,
        model_type=model_type, character_coverage=character_coverage,
        byte_fallback=byte_fallback, normalization_rule_name=normalization,
        # No <s>/</s>/<pad> pieces: the tokenizer module brings its own special ids.
        unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1,
        num_threads=num_threads, minloglevel=2)
  except RuntimeError as e:
    if stream.error is not None:
      raise stream.error from None
    if stream.count == 0:
      raise ValueError("train_tokenizer: the inputs hold no text (every line or field is "
                       "empty).") from None
    message = str(e).split("]", 1)[-1].strip()  # Drop SentencePiece's source location.
    fix = " Lower --vocab_size or give more text." if "ocabulary size" in message else ""
    raise ValueError(f"SentencePiece training failed: {message}{fix}") from None
  if stream.error is not None:
    raise stream.error
  sp = sentencepiece.SentencePieceProcessor(model_file=out + ".model")
  num_texts = num_tokens = num_chars = 0
  for text in texts():
    num_texts, num_chars = num_texts + 1, num_chars + len(text)
    num_tokens += len(sp.encode(text))
  return dict(pieces=sp.get_piece_size(), texts=num_texts, tokens=num_tokens, chars=num_chars)


def _parse(argv: Sequence[str]) -> argparse.Namespace:
  p = argparse.ArgumentParser(
      prog="python -m gpt4v_jax.data.train_tokenizer",
      description="Train a SentencePiece tokenizer for config.tokenizer.")
  p.add_argument("--text_file", action="append", default=[],
                 help="UTF-8 text, one text per line; repeat for several files.")
  p.add_argument("--data", action="append", default=[],
                 help="folder:DIR, an image folder's metadata.jsonl texts; repeatable.")
  p.add_argument("--vocab_size", type=int, required=True,
                 help="pieces of the model (the tokenizer adds 16 special ids).")
  p.add_argument("--out", required=True, help="writes OUT.model and OUT.vocab.")
  p.add_argument("--model_type", choices=("unigram", "bpe"), default="unigram")
  p.add_argument("--character_coverage", type=float, default=0.9995,
                 help="share of characters the pieces cover; the rarest become <unk> (1.0 for "
                      "small alphabets, 0.9995 for Chinese or Japanese).")
  p.add_argument("--byte_fallback", action="store_true",
                 help="spell uncovered characters in UTF-8 byte pieces instead of <unk> "
                      "(costs 256 pieces).")
  p.add_argument("--normalization", default="nmt_nfkc",
                 choices=("nmt_nfkc", "nfkc", "nmt_nfkc_cf", "nfkc_cf", "identity"),
                 help="SentencePiece's text normalization; 'identity' keeps text byte-exact "
                      "(NFKC composes accents and folds full-width forms).")
  p.add_argument("--num_threads", type=int, default=16,
                 help="training threads; unigram models differ slightly per thread count.")
  args = p.parse_args(argv)
  if not args.text_file and not args.data:
    p.error("give at least one --text_file=F or --data=folder:DIR.")
  for spec in args.data:
    if not spec.startswith("folder:"):
      p.error(f"--data={spec}: expected folder:DIR (an image folder's metadata.jsonl).")
  for path in args.text_file:
    if not os.path.isfile(path):
      p.error(f"--text_file={path}: no such file.")
  if args.vocab_size < 2:
    p.error(f"--vocab_size={args.vocab_size}: expected at least 2.")
  return args


def main(argv: Sequence[str] | None = None) -> None:
  args = _parse(sys.argv[1:] if argv is None else argv)
  try:
    stats = train(lambda: input_texts(args.text_file, args.data), out=args.out,
                  vocab_size=args.vocab_size, model_type=args.model_type,
                  character_coverage=args.character_coverage, byte_fallback=args.byte_fallback,
                  normalization=args.normalization, num_threads=args.num_threads)
  except ValueError as e:
    raise SystemExit(f"train_tokenizer: {e}") from None
  ids = stats["pieces"] + SPECIAL_IDS
  print(f"Wrote {args.out}.model and {args.out}.vocab: {stats['pieces']} pieces, "
        f"{ids} tokenizer ids with the {SPECIAL_IDS} special ids.")
  print(f"On the input: {stats['tokens']} tokens for {stats['texts']} texts "
        f"({stats['tokens'] / max(stats['texts'], 1):.2f} tokens per text, "
        f"{stats['chars'] / max(stats['tokens'], 1):.2f} characters per token).")
  print(f"Use it with: --config.tokenizer=sentencepiece:{args.out}.model "
        f"(config.model.vocab_size >= {ids}, plus the image codes for text_to_image).")


if __name__ == "__main__":
  main()
