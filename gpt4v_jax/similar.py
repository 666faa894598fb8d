"""Find the images most similar to query images, by a trained model's image embeddings:

  python -m gpt4v_jax.similar --model=runs/contrastive --index=photos/ --query=a.png -k 5
  python -m gpt4v_jax.similar --model=runs/contrastive --index=photos/ \
      --save_index=photos_index --query=a.png --query=b.png
  python -m gpt4v_jax.similar --model=runs/contrastive --index=photos_index --query=a.png \
      --backend=faiss --json=hits.json

--model is a model directory (`python -m gpt4v_jax.export`) or a training workdir; its
`Model.embed` is the embedding (a contrastive model's joint image embedding; any other model's
mean-pooled encoder output), and scores are cosine similarities. --index is a saved index (a directory with index.json, from --save_index) or a
folder of images, embedded now (recursively; unreadable images are skipped with a message).
Prints per query a table of rank, score and path, best first; --json also writes
[{"query": path, "results": [{"rank": 1, "score": s, "path": p}, ...]}, ...]. A query that is
not a readable image stops the run with a one-line error naming it (exit status 1).

In-process (tests, notebooks): main(["similar", "--model=...", "--index=...", "--query=..."]).
"""
import contextlib
import json
import os
import sys

from absl import flags, logging

# The command's own flag set, not absl's global one: gpt4v_jax.predict also defines --model and
# --batch_size, and both modules may be imported into one process (tests, notebooks).
FLAGS = flags.FlagValues()

_MODEL = flags.DEFINE_string("model", None, "Model directory or training workdir.",
                            flag_values=FLAGS)
_INDEX = flags.DEFINE_string(
    "index", None, "A saved index directory (with index.json) or a folder of images to index.",
    flag_values=FLAGS)
_QUERY = flags.DEFINE_multi_string("query", [], "A query image path; repeatable.",
                                   flag_values=FLAGS)
_K = flags.DEFINE_integer("k", 5, "Results per query.", flag_values=FLAGS)
_SAVE_INDEX = flags.DEFINE_string(
    "save_index", None, "Save the index built from an image folder to this directory.",
    flag_values=FLAGS)
_BACKEND = flags.DEFINE_enum("backend", "exact", ["exact", "faiss"],
                             "exact: JAX on the devices; faiss: the FAISS library.",
                             flag_values=FLAGS)
_FAISS_INDEX = flags.DEFINE_enum(
    "faiss_index", "flat", ["flat", "hnsw"],
    "With --backend=faiss: flat (exact) or hnsw (approximate, for millions of images).",
    flag_values=FLAGS)
_JSON = flags.DEFINE_string("json", None, "Also write the results to this JSON file.",
                           flag_values=FLAGS)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 256, "Images per embedding call when indexing.",
                                   flag_values=FLAGS)
_HELP = flags.DEFINE_bool("help", False, "Show this help and exit.", short_name="h",
                          flag_values=FLAGS)
_OWN_FLAGS = (_MODEL, _INDEX, _QUERY, _K, _SAVE_INDEX, _BACKEND, _FAISS_INDEX, _JSON, _BATCH_SIZE,
              _HELP)


def format_table(query: str, hits: list[tuple[str, float]]) -> str:
  """A query's hits as text: a header line, then one 'rank  score  path' line per hit."""
  lines = [f"query: {query}", f"{'rank':>4}  {'score':>7}  path"]
  lines += [f"{rank:>4}  {score:7.4f}  {path}" for rank, (path, score) in enumerate(hits, 1)]
  return "\n".join(lines)


def _usage_errors() -> str | None:
  """What is wrong with the flags, before anything is loaded (None: nothing)."""
  if not _MODEL.value:
    return "--model is required: a model directory (python -m gpt4v_jax.export) or workdir."
  if not os.path.isdir(_MODEL.value):
    return (f"--model={_MODEL.value}: no such directory; pass a model directory (python -m "
            "gpt4v_jax.export) or a training workdir.")
  if not _INDEX.value:
    return "--index is required: a saved index directory or a folder of images."
  if not os.path.isdir(_INDEX.value):
    return f"--index={_INDEX.value}: no such directory (a saved index or a folder of images)."
  if not _QUERY.value:
    return "Nothing to search for: pass --query=IMAGE (repeatable)."
  if _K.value < 1:
    return f"-k={_K.value} must be >= 1."
  if _BATCH_SIZE.value < 1:
    return f"--batch_size={_BATCH_SIZE.value} must be >= 1."
  return None


def _load_index(embed):
  """The Index of --index: loaded if saved, else built from its images (and --save_index)."""
  from gpt4v_jax.similarity import INDEX_FILE, Index
  if os.path.isfile(os.path.join(_INDEX.value, INDEX_FILE)):
    index = Index.load(_INDEX.value)
  else:
    index = Index.from_folder(embed, _INDEX.value, batch_size=_BATCH_SIZE.value,
                              model=_MODEL.value, on_bad="skip")
  if _SAVE_INDEX.value:
    index.save(_SAVE_INDEX.value)
    print(f"similar: saved the index of {len(index)} images to {_SAVE_INDEX.value}")
  return index


def main(argv: list[str]) -> None:
  """The command, argv as sys.argv (program name first); flags not given take their defaults,
  also in a second in-process call. Exits with a one-line message (status 1) on an error."""
  for holder in _OWN_FLAGS:
    FLAGS[holder.name].unparse()
  try:
    rest = FLAGS(argv)
  except flags.Error as e:
    sys.exit(f"similar: {e} (see --help)")
  if _HELP.value:
    print(__doc__ + "\nFlags:\n" + FLAGS.get_help())
    return
  if len(rest) > 1:
    sys.exit(f"similar: unexpected arguments {rest[1:]}: every input is a flag (see --help).")
  problem = _usage_errors()
  if problem:
    sys.exit(f"similar: {problem}")
  logging.set_verbosity(logging.WARNING)
  # Only the result tables go to stdout: the model's and the index's messages go to stderr.
  with contextlib.redirect_stdout(sys.stderr):
    from gpt4v_jax.data.pipeline import BadExample
    from gpt4v_jax.model import Model  # After flag parsing, so XLA_FLAGS set by callers apply.
    try:
      model = Model.from_pretrained(_MODEL.value)
    except (FileNotFoundError, ValueError) as e:
      sys.exit(f"similar: --model={_MODEL.value}: {e}")
    try:
      index = _load_index(model.embed)
    except (FileNotFoundError, ValueError) as e:
      sys.exit(f"similar: --index={_INDEX.value}: {e}")
    try:  # Model.embed names the query it cannot read.
      queries = model.embed(_QUERY.value)
    except BadExample as e:
      sys.exit(f"similar: --query: not a readable image: {e}")
    k = _K.value
    if k > len(index):
      print(f"similar: -k={k} but the index has {len(index)} images: showing all of them.")
      k = len(index)
    try:
      results = index.search(queries, k, backend=_BACKEND.value, faiss_index=_FAISS_INDEX.value)
    except (ImportError, ValueError) as e:
      sys.exit(f"similar: --index={_INDEX.value}: {e}")
  print("\n\n".join(format_table(q, hits) for q, hits in zip(_QUERY.value, results)))
  if _JSON.value:
    records = [dict(query=q, results=[dict(rank=r, score=s, path=p)
                                      for r, (p, s) in enumerate(hits, 1)])
               for q, hits in zip(_QUERY.value, results)]
    with open(_JSON.value, "w", encoding="utf-8") as f:
      json.dump(records, f, indent=1)


if __name__ == "__main__":
  main(sys.argv)
