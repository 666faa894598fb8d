"""The on-disk form of a user's dataset, shared by the image-folder, COCO and VQAv2 builders.

Each builder turns a folder of images and annotations into array_record files once (under
`data_dir`, reused after) and reads them back without TensorFlow. `load(Builder, data_dir, path)`
returns {split: ExampleSource}; `source[i]` is a STANDARD EXAMPLE:

  id:             str
  image:          bytes, the image file exactly as stored (never re-encoded); b"" if none
  image_path:     str, the file it came from ("" for a text-only example)
  captions:       list of C texts
  questions:      list of Q texts
  answers:        list of Q lists of texts (>= 1 each)
  question_types: list of Q str ("" if unknown); answer_types: likewise
  prompts:        list of P texts; targets: list of P texts (prompt -> target pairs)

Texts are UTF-8 `bytes`, as TFDS returns them (decode with `pipeline.decode_text`). Example i of
a split is the i-th example the builder generated (`disable_shuffling`).

A missing image file is not a build error: its example has image b"" and a non-empty image_path
(image b"" with a non-empty image_path = a missing file), for which the image step
(`datasets.example_image`) raises BadExample naming the path, so the pipeline counts it. A corrupt
file is stored as is and found the same way.

On disk (`features()`), the per-question answer lists are flattened: `answers` holds every
answer of every question in order and `answer_counts[q]` says how many belong to question q.

Identity and staleness: a prepared copy lives in
`data_dir/<builder name>/src_<hash>/<version>/`, the hash taken over the absolute source path and
the builder's options, so two folders never share a copy. The copy's metadata.json records each
annotation file's size and mtime (`RecordBuilder.source_files`); `prepare` rebuilds the copy when
any of them changed, appeared or vanished. Image files are not checked (stat-ing a million
files on every start is too slow): after replacing an image in place, touch the annotation file
or delete the copy. If the source folder is gone, the copy is reused as is (with a warning).
"""
from __future__ import annotations

import abc
import collections
import concurrent.futures
import dataclasses
import hashlib
import json
import os
from typing import Any, Callable, Iterable, Iterator, Sequence

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

TEXT_FIELDS = ("captions", "questions", "prompts", "targets")
LABEL_FIELDS = ("question_types", "answer_types")


def features() -> tfds.features.FeaturesDict:
  """The schema every builder writes; see the module docstring."""
  text = tfds.features.Text
  texts = lambda: tfds.features.Sequence(text())
  return tfds.features.FeaturesDict({
      "id": text(),
      # A scalar string Tensor stores the file's bytes and returns them unchanged (b"" and
      # trailing NULs included); tfds.features.Image would need TensorFlow to read them back.
      "image": tfds.features.Tensor(shape=(), dtype=np.object_),
      "image_path": text(),
      "captions": texts(),
      "questions": texts(),
      "answers": texts(),
      "answer_counts": tfds.features.Sequence(tfds.features.Tensor(shape=(), dtype=np.int32)),
      "question_types": texts(),
      "answer_types": texts(),
      "prompts": texts(),
      "targets": texts(),
  })


def _to_bytes(text: str | bytes) -> bytes:
  # "surrogatepass": a lone surrogate from a broken JSON escape ("\ud83d") is kept as invalid
  # UTF-8, so decode_text rejects that one example later instead of failing the whole build.
  return text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")


def _to_str(text: bytes | str) -> str:
  return text.decode("utf-8", "replace") if isinstance(text, bytes) else text


def to_record(example: dict) -> dict:
  """A standard example (texts as str or bytes) -> the encodable form of `features()`."""
  n = len(example["questions"])
  for key in ("answers", *LABEL_FIELDS):
    if len(example[key]) != n:
      raise ValueError(f"example {example['id']!r}: {len(example[key])} {key} for {n} "
                       "questions; need one per question")
  if len(example["prompts"]) != len(example["targets"]):
    raise ValueError(f"example {example['id']!r}: {len(example['prompts'])} prompts but "
                     f"{len(example['targets'])} targets")
  if not isinstance(example["image"], bytes):
    raise ValueError(f"example {example['id']!r}: image must be the file's bytes, got "
                     f"{type(example['image']).__name__}")
  record = {key: [_to_bytes(t) for t in example[key]] for key in TEXT_FIELDS + LABEL_FIELDS}
  record.update(
      id=_to_bytes(example["id"]), image=example["image"],
      image_path=_to_bytes(example["image_path"]),
      answers=[_to_bytes(a) for answers in example["answers"] for a in answers],
      answer_counts=np.array([len(a) for a in example["answers"]], np.int32))
  return record


def to_example(record: dict) -> dict:
  """A record read from a TFDS data source -> a standard example.

  Texts stay bytes; id, image_path and the question/answer types become str; the flat answers
  are regrouped into one list per question by answer_counts.
  """
  answers, start = [], 0
  for count in record["answer_counts"]:
    answers.append(list(record["answers"][start:start + int(count)]))
    start += int(count)
  return {
      "id": _to_str(record["id"]),
      "image": record["image"],
      "image_path": _to_str(record["image_path"]),
      **{key: list(record[key]) for key in TEXT_FIELDS},
      "answers": answers,
      **{key: [_to_str(t) for t in record[key]] for key in LABEL_FIELDS},
  }


class ExampleSource:
  """Random access to one split's standard examples (len(src), src[i]; grain-compatible).

  Wraps a TFDS data source of records (`builder.as_data_source()[split]`), each turned into a
  standard example by `convert`: `to_example` for this module's schema (shapes passes its own).
  """

  def __init__(self, records: Sequence[dict], convert: Callable[[dict], dict] = to_example):
    self.records = records
    self._convert = convert

  def __len__(self) -> int:
    return len(self.records)

  def __getitem__(self, index: int) -> dict:
    return self._convert(self.records[index])

  def __getitems__(self, indices: Sequence[int]) -> list[dict]:
    """Batched reads (one array_record lookup for many records), as grain and PyTorch use."""
    return [self._convert(r) for r in self.records.__getitems__(indices)]

  def __repr__(self) -> str:
    return f"ExampleSource({self.records!r})"


# ----------------------------------------------------------------------------
# Reading image files.
# ----------------------------------------------------------------------------


def _read_file(path: str) -> tuple[bytes, str]:
  """(the file's bytes, "") or (b"", why) when there is no path or it cannot be read."""
  if not path:
    return b"", ""
  try:
    with open(path, "rb") as f:
      return f.read(), ""
  except OSError as e:  # Missing, a directory, no permission: a bad example, not a build error.
    return b"", f"{type(e).__name__}: {e}"


def with_images(examples: Iterable[dict], threads: int = 8,
                ahead: int = 64) -> Iterator[tuple[dict, str]]:
  """Yields (example with "image" = the bytes of its image_path, why unreadable or ""), in order.

  Files are read by `threads` threads (reading is I/O-bound; threads overlap the waits), at most
  `ahead` examples ahead of the consumer, so memory stays bounded however many images there are.
  """
  with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    pending = collections.deque()
    for example in examples:
      pending.append((example, pool.submit(_read_file, example["image_path"])))
      if len(pending) >= ahead:
        example, future = pending.popleft()
        image, why = future.result()
        yield {**example, "image": image}, why
    while pending:
      example, future = pending.popleft()
      image, why = future.result()
      yield {**example, "image": image}, why


# ----------------------------------------------------------------------------
# Builders.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class SourceConfig(tfds.core.BuilderConfig):
  """Where a builder reads from: `path` (absolute) and builder-specific `options`."""
  path: str = ""
  options: dict = dataclasses.field(default_factory=dict)


def fingerprint(root: str, files: Iterable[str]) -> dict[str, Any]:
  """{path relative to root: [size, mtime_ns], or None if absent}: changes when a file does."""
  out = {}
  for path in sorted(files):
    try:
      stat = os.stat(path)
      out[os.path.relpath(path, root)] = [stat.st_size, stat.st_mtime_ns]
    except FileNotFoundError:
      out[os.path.relpath(path, root)] = None
  return out


class RecordBuilder(tfds.core.GeneratorBasedBuilder):
  """Base of the builders of user data: array_record, nothing downloaded, generation order kept.

  A subclass sets `name` and `LAYOUT` (a short example of the expected layout, shown in errors)
  and implements `source_files` and `read_splits`.
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  LAYOUT = ""

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    # As in shapes.Shapes: TFDS would look for a checksums.tsv of download URLs next to the
    # module via importlib_resources (not installed); we download nothing.
    return None

  @classmethod
  def make_config(cls, path: str, **options: str) -> SourceConfig:
    """The config of the data at `path`: named by a hash of the absolute path and options.

    Options named *_dir are paths, made absolute; None options are left out (= the default).
    """
    path = os.path.abspath(os.path.expanduser(path))
    options = {k: os.path.abspath(os.path.expanduser(v)) if k.endswith("_dir") else v
               for k, v in options.items() if v is not None}
    key = json.dumps([path, sorted(options.items())])
    name = "src_" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]
    description = f"{cls.name} of {path}" + (f" {options}" if options else "")
    return SourceConfig(name=name, description=description, path=path, options=options)

  @property
  def path(self) -> str:
    return self.builder_config.path

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.builder_config.description,
        features=features(),
        # Record i of a split is the i-th generated example.
        disable_shuffling=True,
        # Holds "source_fingerprint", saved with the prepared copy (see `prepare`).
        metadata=tfds.core.MetadataDict())

  @abc.abstractmethod
  def source_files(self) -> list[str]:
    """The annotation files whose change (size, mtime, presence) means the copy is stale."""

  @abc.abstractmethod
  def read_splits(self) -> dict[str, Sequence[dict]]:
    """Parses the annotations: {split: standard examples without "image" (image_path set)}.

    Raises ValueError, naming the file (and line) and showing LAYOUT, for malformed input. All
    of it is parsed before any example is written, so errors come before a long build.
    """

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    # Taken before reading: a file changed during the build makes the next load rebuild.
    self.info.metadata["source_fingerprint"] = fingerprint(self.path, self.source_files())
    splits = self.read_splits()
    return {split: self._generate_examples(split, examples)
            for split, examples in splits.items()}

  def _generate_examples(self, split: str, examples: Sequence[dict]):
    logging.info("Writing %d %s examples of %s", len(examples), split, self.path)
    unreadable, first = 0, ""
    for index, (example, why) in enumerate(with_images(examples)):
      if why:
        unreadable += 1
        first = first or f"{example['image_path']} ({why})"
      yield index, to_record(example)
    if unreadable:
      logging.warning(
          "%s split %s: %d of %d image files could not be read (first: %s). Their examples "
          "keep image b'' with their image_path, and count as bad examples in training.",
          self.path, split, unreadable, len(examples), first)


def prepare(builder_cls: type[RecordBuilder], data_dir: str, path: str,
            **options: str) -> RecordBuilder:
  """The prepared builder of the data at `path`: built on first use, rebuilt when stale.

  Args:
    builder_cls: a RecordBuilder subclass (image_folder.ImageFolder, coco.CocoCaptions, ...).
    data_dir: where prepared copies live (one per source path and options).
    path: the source folder.
    **options: builder options (e.g. VQAv2's images_dir); part of the copy's identity.
  """
  config = builder_cls.make_config(path, **options)
  builder = builder_cls(config=config, data_dir=data_dir, file_format="array_record")
  mode = tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
  if builder.data_path.exists() and builder.is_prepared():
    if not os.path.exists(config.path):
      logging.warning("%s does not exist; reusing its prepared copy %s as is.", config.path,
                      builder.data_dir)
      return builder
    stored = builder.info.metadata.get("source_fingerprint")
    if stored == fingerprint(config.path, builder.source_files()):
      return builder
    logging.warning("The annotation files of %s changed since %s was prepared: rebuilding it.",
                    config.path, builder.data_dir)
    mode = tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS  # Deletes the stale copy first.
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      # Never look for a prepared copy on GCS: there is none, and the machine may be offline.
      try_download_gcs=False, download_mode=mode))
  return builder


def load(builder_cls: type[RecordBuilder], data_dir: str, path: str,
         **options: str) -> dict[str, ExampleSource]:
  """{split: ExampleSource of standard examples} of the data at `path` (see `prepare`)."""
  builder = prepare(builder_cls, data_dir, path, **options)
  return {split: ExampleSource(records) for split, records in builder.as_data_source().items()}


def layout_error(message: str, layout: str) -> ValueError:
  """A ValueError: the message, then the expected layout."""
  return ValueError(f"{message}\nExpected layout:\n{layout}")
