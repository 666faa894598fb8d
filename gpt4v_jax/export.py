"""Export a run as a self-contained model directory (`model_dir.py` describes it):

  python -m gpt4v_jax.export --workdir=workdirs/shapes_caption --out=models/shapes_caption \
      [--params_format=safetensors]

or, for a run that started from Hugging Face checkpoints, its vision tower and decoder back in
that format (`--format=hf`: OUT/vision and OUT/language, which transformers loads).

The directory holds the config, the params (no optimizer state), the tokenizer's file, the
image preprocessing and, for text-to-image, its VQ-VAE; `Model.from_pretrained(out)` loads it
on any machine and device count, without the workdir or the dataset.
"""
import os
import tempfile

import ml_collections
from absl import app, flags

from gpt4v_jax import model_dir, runs
from gpt4v_jax.data import datasets
from gpt4v_jax.data.tokenizer import get_tokenizer
from gpt4v_jax.metric_writer import log


def export(workdir: str, out_dir: str, *, params_format: str = "orbax") -> str:
  """Writes the newest checkpoint of the run in `workdir` to the model directory `out_dir`
  (replaced if it exists); returns its absolute path."""
  workdir, out_dir = os.path.abspath(workdir), os.path.abspath(out_dir)
  config, _, state, step = runs.restore_run(workdir, "Run to export")
  config = ml_collections.ConfigDict(config.to_dict())
  variables = {"params": state.params,
               **{k: v for k, v in state.model_state.items() if k != "image_tokenizer"}}
  image_tokenizers = []
  parts = config.objective.mixture.values() if config.objective.kind == "mixture" else [
      config.objective]
  for keys in parts:
    if keys.get("image_tokenizer"):
      image_tokenizers.append(keys.image_tokenizer)
      keys.image_tokenizer = "image_tokenizer"
  config.init.workdir = ""  # What it started from is in the params now.
  with tempfile.TemporaryDirectory() as tmp:
    files = {}
    for key in model_dir.CHECKPOINT_KEYS:  # Their architecture; the weights are the params.
      if config.get("model", {}).get(key):
        files[f"{key}/config.json"] = os.path.join(config.model[key], "config.json")
        config.model[key] = key
    if "tokenizer" in config:  # A VQ-VAE has none.
      config.tokenizer, tokenizer_files = _tokenizer_files(config.tokenizer, tmp)
      files.update(tokenizer_files)
    model_dir.write(out_dir, config, variables, preprocess=datasets.preprocess(config.data),
                    params_format=params_format, files=files,
                    info=dict(source_workdir=workdir, step=step,
                              objective=config.objective.kind))
  for source in image_tokenizers[:1]:  # Every part names the same one.
    export(source, os.path.join(out_dir, "image_tokenizer"), params_format=params_format)
  log(f"Exported step {step} of {workdir} to {out_dir} ({params_format}).")
  return out_dir


def export_hf(workdir: str, out_dir: str) -> list[str]:
  """Writes the pretrained parts of the run in `workdir` (its vision tower and decoder, where
  config.model names a Hugging Face checkpoint for them) as Hugging Face directories
  out_dir/vision and out_dir/language, which transformers loads; a run of one whole
  vision-language checkpoint (PaliGemma, LLaVA) as one such directory, out_dir. Returns their
  paths."""
  from gpt4v_jax.pretrained import compose, hf_export  # pylint: disable=import-outside-toplevel
  config, _, state, step = runs.restore_run(os.path.abspath(workdir), "Run to export")
  written = []
  if compose.gpt4v_settings(config.model):  # One whole vision-language checkpoint.
    source = config.model.vision_checkpoint
    written.append(hf_export.save_hf(
        state.params, compose.read_config(source, "config.model.vision_checkpoint"), out_dir,
        copy_from=source))
  for tree, key, name in ([] if written else (("vit", "vision_checkpoint", "vision"),
                          ("decoder", "language_checkpoint", "language"))):
    source = config.model.get(key)
    if source:
      written.append(hf_export.save_hf(
          state.params[tree], compose.read_config(source, f"config.model.{key}"),
          os.path.join(out_dir, name), copy_from=source))
  if not written:
    raise ValueError(f"{workdir}: the run starts from no Hugging Face checkpoint "
                     "(config.model.vision_checkpoint, language_checkpoint), so no Hugging Face "
                     "architecture describes it; export it with --format=model_dir.")
  log(f"Exported step {step} of {workdir} as Hugging Face directories {', '.join(written)}.")
  return written


def _tokenizer_files(spec: str, tmp: str) -> tuple[str, dict[str, str]]:
  """(the tokenizer spec inside the model directory, {relative path: file to copy})."""
  if spec == "bytes":
    return spec, {}
  kind, _, path = spec.partition(":")
  if kind == "words":  # The word list itself, also for the built-in "shapes" one.
    words = os.path.join(tmp, "words.txt")
    tokenizer = get_tokenizer(spec)
    with open(words, "w", encoding="utf-8") as f:
      f.write("\n".join(tokenizer.words) + "\n")
    return "words:tokenizer/words.txt", {"tokenizer/words.txt": words}
  if kind == "hf" and os.path.isdir(path):
    path = os.path.join(path, "tokenizer.json")
  rel = f"tokenizer/{os.path.basename(path)}"
  return f"{kind}:{rel}", {rel: path}


def main(argv):
  del argv
  if flags.FLAGS.format == "hf":
    export_hf(flags.FLAGS.workdir, flags.FLAGS.out)
  else:
    export(flags.FLAGS.workdir, flags.FLAGS.out, params_format=flags.FLAGS.params_format)


if __name__ == "__main__":
  # Defined here, not on import: `predict` (imported beside this module) has an --out too.
  flags.DEFINE_string("workdir", None, "The training run to export.", required=True)
  flags.DEFINE_string("out", None, "The model directory to write (replaced).", required=True)
  flags.DEFINE_enum("params_format", "orbax", model_dir.PARAMS_FORMATS,
                    "How the params are stored.")
  flags.DEFINE_enum("format", "model_dir", ("model_dir", "hf"),
                    "model_dir: our model directory (Model.from_pretrained); hf: the vision "
                    "tower and decoder as Hugging Face directories (OUT/vision, OUT/language) "
                    "for runs that started from Hugging Face checkpoints.")
  app.run(main)
