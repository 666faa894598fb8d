"""Predict with a trained model from the command line, one JSON line per input:

  python -m gpt4v_jax.predict --model=models/shapes_caption --image=a.jpg --image='photos/*.png'
  python -m gpt4v_jax.predict --model=models/shapes_vqa --image=a.jpg --question="what color?"
  python -m gpt4v_jax.predict --model=models/shapes_t2i --prompt="a red circle" --out_dir=png
  python -m gpt4v_jax.predict --model=models/shapes_summarize --prompt="..." --out=out.jsonl

--model is a model directory (`python -m gpt4v_jax.export`) or a training workdir. What runs:
  --image                 caption each image          {"image": path, "caption": ...}
  --image --question=Q    answer Q of each image      {"image": path, "question": Q, "answer": ...}
  --prompt (text-to-image model)  draw each to a PNG  {"prompt": ..., "image_path": png}
  --prompt (prompt model)  continue (summarize) each  {"prompt": ..., "text": ...}
An --image value is a path or a glob pattern (quote it); --image and --prompt may repeat.
An input that cannot be used (a missing or undecodable file, a too-long prompt) gets
{..., "error": "..."} on its line and the run goes on; the exit status is 1 only when no input
could be used. Lines are written in input order to --out (default stdout; everything else the
run prints goes to stderr), a progress line per batch to stderr.
"""
import contextlib
import glob
import json
import os
import re
import sys
import time

from absl import app, flags, logging

_MODEL = flags.DEFINE_string("model", None, "Model directory or training workdir.")
_IMAGE = flags.DEFINE_multi_string("image", [], "An image path or glob pattern; repeatable.")
_QUESTION = flags.DEFINE_string("question", None, "Ask this of every image (a VQA model).")
_PROMPT = flags.DEFINE_multi_string(
    "prompt", [], "A text-only prompt (text-to-image or prompt model); repeatable.")
_OUT = flags.DEFINE_string("out", None, "The JSON lines file to write (default: stdout).")
_OUT_DIR = flags.DEFINE_string(
    "out_dir", None, "Where text-to-image PNGs go (default: --out's directory, or "
    "./predictions when writing to stdout).")
_MAX_NEW_TOKENS = flags.DEFINE_integer("max_new_tokens", None,
                                       "Tokens to generate at most (default: the task's).")
_NUM_BEAMS = flags.DEFINE_integer("num_beams", 1, "Beam search with this many beams if > 1.")
_TEMPERATURE = flags.DEFINE_float(
    "temperature", None, "Sampling temperature (default: greedy text; the run's for images).")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed: the same seed, the same samples.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Inputs per generation call.")


def expand_images(values: list[str]) -> list[tuple[str, str | None]]:
  """--image values -> [(path, error or None)]: a glob pattern is its sorted matches, or one
  error entry when it matches nothing; a plain path is itself (read later)."""
  out = []
  for value in values:
    if glob.has_magic(value):
      matches = sorted(glob.glob(value, recursive=True))
      out += [(m, None) for m in matches] or [(value, "no file matches this pattern")]
    else:
      out.append((value, None))
  return out


class Progress:
  """'predict: 128/1000 images, 35.2 img/s' on stderr after each batch (in place on a
  terminal, one line per batch in a log)."""

  def __init__(self, total: int, what: str, unit: str):
    self.total, self.what, self.unit = total, what, unit
    self.start, self.tty = time.perf_counter(), sys.stderr.isatty()

  def update(self, done: int) -> None:
    rate = done / max(time.perf_counter() - self.start, 1e-9)
    line = f"predict: {done}/{self.total} {self.what}, {rate:.1f} {self.unit}/s"
    sys.stderr.write(("\r" + line if self.tty else line + "\n"))
    if self.tty and done == self.total:
      sys.stderr.write("\n")
    sys.stderr.flush()


def _generate_kwargs(*, for_images: bool) -> dict:
  """The decoding flags given, as Model's task methods take them."""
  if for_images:  # text_to_image samples with the run's settings unless told otherwise.
    if _NUM_BEAMS.value != 1 or _MAX_NEW_TOKENS.value is not None:
      raise app.UsageError("--num_beams and --max_new_tokens are for text; text-to-image "
                           "takes --temperature and --seed.")
    kwargs = dict(seed=_SEED.value)
  else:
    kwargs = dict(num_beams=_NUM_BEAMS.value, seed=_SEED.value,
                  max_new_tokens=_MAX_NEW_TOKENS.value, batch_size=_BATCH_SIZE.value)
  if _TEMPERATURE.value is not None:
    kwargs["temperature"] = _TEMPERATURE.value
  return kwargs


def predict_images(model, paths: list[tuple[str, str | None]], question: str | None,
                   write) -> int:
  """Captions (or answers `question` of) each image, in batches of --batch_size; `write`s
  one record per path in order. Images are preprocessed one by one, so a bad file is its
  own line's error and not its batch's. Returns how many images were used."""
  import numpy as np
  from gpt4v_jax.data.pipeline import BadExample
  kwargs = _generate_kwargs(for_images=False)
  key = "caption" if question is None else "answer"
  progress = Progress(len(paths), "images", "img")
  records, good, pixels, used = [], [], [], 0  # The batch's records; the usable ones.
  for done, (path, error) in enumerate(paths, start=1):
    record = dict(image=path) if question is None else dict(image=path, question=question)
    records.append(record)
    try:
      if error is not None:
        raise BadExample(error)
      pixels.append(model.image(path))
      good.append(record)
    except BadExample as e:
      record["error"] = str(e)
    if len(good) < _BATCH_SIZE.value and done < len(paths):
      continue
    if good:  # One call for the batch, on the preprocessed float32 [b, S, S, 3].
      batch = dict(kwargs, seed=kwargs["seed"] + used)
      texts = (model.caption(np.stack(pixels), **batch) if question is None
               else model.answer(np.stack(pixels), question, **batch))
      for r, text in zip(good, texts):
        r[key] = text
      used += len(good)
    for r in records:
      write(r)
    progress.update(done)
    records, good, pixels = [], [], []
  return used


def predict_prompts(model, prompts: list[str], out_dir: str | None, write) -> int:
  """Draws each prompt (a text-to-image model) to a PNG in `out_dir`, or continues it (a
  prompt model), in batches of --batch_size; `write`s one record per prompt in order.
  Returns how many prompts were used."""
  import numpy as np
  import PIL.Image
  from gpt4v_jax.data.pipeline import BadExample
  draw = _part_error(model, "text_to_image") is None
  part = model.part("text_to_image" if draw else "prompt")
  kwargs = _generate_kwargs(for_images=draw)
  if draw:
    os.makedirs(out_dir, exist_ok=True)
  progress = Progress(len(prompts), "prompts", "prompts")
  used, size = 0, _BATCH_SIZE.value
  for start in range(0, len(prompts), size):
    records = [dict(prompt=p) for p in prompts[start:start + size]]
    good = {}  # Input index -> record, of the prompts the model takes.
    for i, record in enumerate(records, start=start):
      try:
        part.prompt_ids(record["prompt"])  # A too-long prompt is its own line's error.
        good[i] = record
      except (BadExample, ValueError) as e:
        record["error"] = str(e)
    texts, options = [r["prompt"] for r in good.values()], dict(kwargs, seed=_SEED.value + used)
    if draw and good:
      for (i, record), image in zip(good.items(), model.text_to_image(texts, **options)):
        path = os.path.join(out_dir, f"{i:05d}_{_slug(record['prompt'])}.png")
        PIL.Image.fromarray(np.asarray(image, np.uint8)).save(path)
        record["image_path"] = path
    elif good:
      for record, text in zip(good.values(), model.summarize(texts, **options)):
        record["text"] = text
    used += len(good)
    for record in records:
      write(record)
    progress.update(start + len(records))
  return used


def _part_error(model, kind: str) -> str | None:
  """Why `model` cannot do task `kind` (Model.part's message), or None if it can."""
  try:
    model.part(kind)
  except ValueError as e:
    return str(e)
  return None


def _slug(text: str) -> str:
  """A file-name-safe short form of `text`: 'a red circle' -> 'a_red_circle'."""
  return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")[:40] or "image"


def _usage_errors() -> str | None:
  """What is wrong with the flags' combination, before the model is loaded (None: nothing)."""
  if not _MODEL.value:
    return ("--model is required: a model directory (python -m gpt4v_jax.export) or a "
            "training workdir.")
  if not os.path.isdir(_MODEL.value):
    return (f"--model={_MODEL.value}: no such directory; pass a model directory (python -m "
            "gpt4v_jax.export) or a training workdir.")
  if not _IMAGE.value and not _PROMPT.value:
    return ("Nothing to predict: pass --image (to caption or, with --question, to ask about) "
            "or --prompt (for a text-to-image or prompt model).")
  if _IMAGE.value and _PROMPT.value:
    return ("Pass either --image or --prompt: --prompt is for text-only models (text-to-image, "
            "summarization); to ask about images use --question.")
  if _QUESTION.value is not None and not _IMAGE.value:
    return "--question is asked of images: pass --image too."
  if _BATCH_SIZE.value < 1:
    return f"--batch_size={_BATCH_SIZE.value} must be >= 1."
  return None


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments {argv[1:]}: every input is a flag.")
  problem = _usage_errors()
  if problem:
    sys.exit(f"predict: {problem}")
  logging.set_verbosity(logging.WARNING)
  stdout = sys.stdout
  out_dir = _OUT_DIR.value or (os.path.dirname(os.path.abspath(_OUT.value)) if _OUT.value
                               else "predictions")

  def write(record):
    out.write(json.dumps(record) + "\n")
    out.flush()

  # Only the JSON lines go to --out or stdout: the model's own messages go to stderr.
  with contextlib.redirect_stdout(sys.stderr):
    from gpt4v_jax.model import Model  # After flag parsing, so XLA_FLAGS set by callers apply.
    try:
      model = Model.from_pretrained(_MODEL.value)
    except (FileNotFoundError, ValueError) as e:
      sys.exit(f"predict: --model={_MODEL.value}: {e}")
    task = "vqa" if _QUESTION.value is not None else "caption"
    if _IMAGE.value and _part_error(model, task):
      sys.exit(f"predict: --model={_MODEL.value}: {_part_error(model, task)}")
    if _QUESTION.value is not None and not _part_error(model, "vqa"):
      try:  # One question for every image: too long is an error of the command.
        model.part("vqa").prompt_ids(_QUESTION.value)
      except ValueError as e:
        sys.exit(f"predict: --question: {e}")
    if _PROMPT.value and _part_error(model, "text_to_image") and _part_error(model, "prompt"):
      sys.exit(f"predict: --model={_MODEL.value}: --prompt needs a text-to-image or prompt "
               f"model; {_part_error(model, 'prompt')}")
    out = open(_OUT.value, "w", encoding="utf-8") if _OUT.value else stdout
    if _IMAGE.value:
      used = predict_images(model, expand_images(_IMAGE.value), _QUESTION.value, write)
    else:
      used = predict_prompts(model, _PROMPT.value, out_dir, write)
  if out is not stdout:
    out.close()
  if not used:
    sys.exit("predict: no input could be used (see the errors on each line).")


if __name__ == "__main__":
  app.run(main)
