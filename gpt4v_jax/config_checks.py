"""Checks a config before anything is built or compiled; each error names the setting."""
import json
import os

import jax
import ml_collections

from gpt4v_jax import sharding
from gpt4v_jax.data import datasets, pipeline
from gpt4v_jax.data.tokenizer import get_tokenizer
from gpt4v_jax.objectives import kinds

# What may differ from the config of the run a workdir holds when it resumes: how long it
# trains (a longer train.steps also stretches the cosine schedule from here on), how often it
# logs, saves and evaluates, what it evaluates, where the data are read from, how the same
# computation is laid out over devices, and the fault policies (the fixes an error suggests).
RESUMABLE_CHANGES = ("train.steps", "train.log_every", "train.checkpoint_every",
                     "train.keep_checkpoints", "train.skip_nonfinite_updates", "evals.",
                     "data.data_dir", "data.num_threads", "data.on_bad_example", "mesh.",
                     "sharding_rules")


# Keys added to the configs after runs were saved without them, with the values that give
# those runs' behaviour: `load_saved_config` fills them in, so old workdirs still resume and
# still serve as image tokenizers or initialisations.
_ADDED_KEYS = {
    # Before the data seam every run read shapes' 64x64 PNGs as they are.
    "data.name": "shapes", "data.path": "", "data.image_size": 64, "data.resize": "squash",
    "data.resample": "bicubic",
    "data.normalize": "minus_one_to_one", "data.max_pixels": 64_000_000,
    "data.random_resized_crop": [], "data.hflip": False,
    "optimizer.frozen": [],
    "train.microbatches": 1,
    "init": {"workdir": "", "params": ["vit"]},
}
_ADDED_MODEL_KEYS = {  # GPT4V models only.
    "scan_layers": False, "fusion": "prefix", "cross_attention_every": 1, "encoder": "vit",
    "resampler_latents": 0, "resampler_depth": 1, "vision_checkpoint": "",
    "language_checkpoint": "", "image_positions": "none",
}


def load_saved_config(workdir: str) -> dict:
  """The config.json a run in `workdir` saved, with keys added since filled in (a bool
  `model.remat` becomes its policy name)."""
  with open(os.path.join(workdir, "config.json")) as f:
    saved = json.load(f)
  for key, value in _ADDED_KEYS.items():
    section, _, name = key.partition(".")
    if name:
      saved[section].setdefault(name, value)
    else:
      saved.setdefault(section, value)
  objective = saved["objective"]
  if objective["kind"] != "vqvae":
    for name, value in _ADDED_MODEL_KEYS.items():
      saved["model"].setdefault(name, value)
    if isinstance(saved["model"].get("remat"), bool):
      saved["model"]["remat"] = "full" if saved["model"]["remat"] else "none"
  parts = objective.get("mixture", {}) if objective["kind"] == "mixture" else {
      objective["kind"]: objective}
  if objective["kind"] == "vqvae":  # Before local_encoder: every encoder saw neighbours.
    saved["model"].setdefault("local_encoder", False)
  if "text_to_image" in parts:  # Before code_order, code_positions, code_embedding_init:
    parts["text_to_image"].setdefault("code_order", "rows")  # raster order, no code
    parts["text_to_image"].setdefault("code_positions", False)  # position embeddings,
    parts["text_to_image"].setdefault("code_embedding_init", "random")  # random init.
  if objective["kind"] == "mixture" and "max_text_len" in objective:  # Before each part had
    for part in parts.values():  # its own row length, every part's rows shared one.
      part.setdefault("max_text_len", objective["max_text_len"])
    del objective["max_text_len"]
  if "vqa" in parts:  # Before these keys: one question per row, prompts as long as the row.
    max_text_len = parts["vqa"]["max_text_len"]
    parts["vqa"].setdefault("questions_per_row", 1)
    parts["vqa"].setdefault("max_question_len", max_text_len - 4)
    parts["vqa"].setdefault("relations_as", "asked")  # Before the relation curriculum.
  return saved


def check(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Raises ValueError naming the offending key and the fix."""
  parent = os.path.dirname(os.path.abspath(workdir))
  if not os.path.isdir(parent):
    raise ValueError(f"--workdir={workdir}: its parent directory {parent} does not exist; "
                     "create it first (the workdir itself is created for you).")
  sharding.mesh_shape(config.mesh, jax.device_count())  # Raises if the mesh does not fit.
  _check_objective(config.objective)
  for key in ("train.steps", "train.log_every", "train.checkpoint_every",
              "data.global_batch_size", "evals.batch_size"):
    section, name = key.split(".")
    if config[section][name] <= 0:
      raise ValueError(f"config.{key}={config[section][name]} must be positive.")
  if kinds.KINDS[config.objective.kind].language_model:
    _check_language_model(config)
  _check_data(config)
  _check_vision_checkpoint(config)
  if config.init.workdir and not _has_checkpoint(config.init.workdir):
    raise ValueError(f"config.init.workdir={config.init.workdir!r} holds no checkpoint to "
                     "initialise from.")
  if config.data.on_bad_example not in pipeline.ON_BAD_EXAMPLE:
    raise ValueError(f"config.data.on_bad_example={config.data.on_bad_example!r}: expected one "
                     f"of {pipeline.ON_BAD_EXAMPLE}.")


def _check_vision_checkpoint(config: ml_collections.ConfigDict) -> None:
  """A pretrained vision tower sees its images as its own processor prepared them: the
  resolution, resize, resample and normalisation of config.data must be the processor's."""
  path = config.get("model", {}).get("vision_checkpoint", "")
  if not path or not os.path.exists(os.path.join(path, "preprocessor_config.json")):
    return
  from gpt4v_jax.pretrained import vision  # pylint: disable=import-outside-toplevel
  theirs, ours = vision.preprocess_from(path), datasets.preprocess(config.data)
  for field, key in (("size", "image_size"), ("resize", "resize"), ("resample", "resample"),
                     ("normalize", "normalize")):
    if getattr(ours, field) != getattr(theirs, field):
      raise ValueError(f"config.data.{key}={getattr(ours, field)!r}, but the vision tower's "
                       f"processor ({path}/preprocessor_config.json) prepares its images with "
                       f"{getattr(theirs, field)!r}: set --config.data.{key}="
                       f"{getattr(theirs, field)}.")


def _check_data(config: ml_collections.ConfigDict) -> None:
  """The dataset exists where the config says, and its images can be preprocessed as said."""
  data = config.data
  if data.name not in datasets.NAMES:
    raise ValueError(f"config.data.name={data.name!r}: expected one of {datasets.NAMES}.")
  # Whether the path exists is the builder's to say: a prepared copy serves without it.
  if data.name != "shapes" and not data.path:
    raise ValueError(f"config.data.name={data.name!r} reads the dataset from "
                     "config.data.path, which is not set (README, 'Your own data').")
  datasets.preprocess(data)  # Raises ValueError naming a bad setting.
  scene_only = {k for k in kinds.part_configs(config.objective) if kinds.KINDS[k].scene_only}
  if scene_only and data.name != "shapes":
    raise ValueError(f"config.objective {sorted(scene_only)} is evaluated by reading the "
                     "scene back from generated pixels, which only the embedded shapes "
                     f"dataset allows; config.data.name={data.name!r}.")


def check_splits(config: ml_collections.ConfigDict, sources: dict) -> None:
  """The splits the config trains and evaluates on are splits of the opened dataset."""
  wanted = {"config.data.train_split": [config.data.train_split],
            "config.evals.during_splits": list(config.evals.during_splits),
            "config.evals.final_splits": list(config.evals.final_splits)}
  for key, splits in wanted.items():
    missing = [s for s in splits if s not in sources]
    if missing:
      raise ValueError(f"{key}: {missing} are not splits of the dataset "
                       f"config.data.name={config.data.name!r}, which has {sorted(sources)}.")


def _check_language_model(config: ml_collections.ConfigDict) -> None:
  objective = config.objective
  vocab = get_tokenizer(config.tokenizer).vocab_size
  parts = kinds.part_configs(objective)
  for kind, part in parts.items():
    key = "config.objective." + (f"mixture.{kind}." if objective.kind == "mixture" else "")
    if part.get("max_text_len", 1) <= 0:  # text_to_image derives its own.
      raise ValueError(f"{key}max_text_len={part.max_text_len} must be positive.")
  prefix = "config.objective." + ("mixture.text_to_image." if objective.kind == "mixture"
                                  else "")
  if "text_to_image" in parts:
    vocab += _image_tokenizer_codes(parts["text_to_image"].image_tokenizer, prefix)
  if config.model.get("language_checkpoint"):
    from gpt4v_jax.pretrained import compose  # pylint: disable=import-outside-toplevel
    if not config.tokenizer.startswith("hf:"):
      raise ValueError(f"config.tokenizer={config.tokenizer!r}: a pretrained decoder "
                       "(config.model.language_checkpoint) reads its own tokenizer's ids; set "
                       f"--config.tokenizer=hf:{config.model.language_checkpoint}.")
    pretrained = compose.checkpoint_vocab(config.model.language_checkpoint)
    if config.model.vocab_size < pretrained:
      raise ValueError(
          f"config.model.vocab_size={config.model.vocab_size} is smaller than the "
          f"{pretrained} embedding rows of config.model.language_checkpoint; use at least "
          f"{max(vocab, pretrained)} (the tokenizer's ids, our special ids and any image "
          "codes included; a multiple of 128 shards best).")
  if config.model.vocab_size < vocab:
    raise ValueError(f"config.model.vocab_size={config.model.vocab_size} is smaller than the "
                     f"{vocab} ids of the tokenizer" + (" and the image codes" if "text_to_image"
                                                        in parts else "") + ".")
  if "contrastive" in parts and config.train.microbatches > 1:
    raise ValueError(f"config.train.microbatches={config.train.microbatches} with a "
                     "contrastive objective: its loss pairs every image with every text of "
                     "the batch, so micro-batches would change it (fewer negatives); use 1.")
  if config.model.num_heads % config.model.num_kv_heads:
    raise ValueError(f"config.model.num_kv_heads={config.model.num_kv_heads} must divide "
                     f"config.model.num_heads={config.model.num_heads}.")


def _image_tokenizer_codes(workdir: str, prefix: str) -> int:
  """The codebook size of the finished vqvae run that text-to-image names (`{prefix}
  image_tokenizer`); raises if there is none."""
  key = prefix + "image_tokenizer"
  train_it = (f"train one first: python -m gpt4v_jax.main --config=configs/shapes_vqvae.py "
              f"--workdir={workdir}, or point {key} at the workdir of one")
  if not _has_checkpoint(workdir):
    raise ValueError(f"{key}={workdir!r} holds no VQ-VAE checkpoint; {train_it}.")
  with open(os.path.join(workdir, "config.json")) as f:
    vq_config = json.load(f)
  if vq_config["objective"]["kind"] != "vqvae":
    raise ValueError(f"{key}={workdir!r} is a {vq_config['objective']['kind']!r} run, not a "
                     f"VQ-VAE; {train_it}.")
  return vq_config["model"]["num_codes"]


def _has_checkpoint(workdir: str) -> bool:
  """Whether `workdir` holds a run's config and at least one committed checkpoint step."""
  ckpt_dir = os.path.join(workdir, "checkpoints")
  return (os.path.exists(os.path.join(workdir, "config.json")) and os.path.isdir(ckpt_dir)
          and any(name.isdigit() for name in os.listdir(ckpt_dir)))


def _check_objective(objective: ml_collections.ConfigDict) -> None:
  """config.objective.kind is in `kinds.KINDS`; a mixture's parts are mixable kinds with
  positive weights."""
  if objective.kind not in kinds.KINDS:
    raise ValueError(f"config.objective.kind={objective.kind!r}: expected one of "
                     f"{tuple(kinds.KINDS)}.")
  if objective.kind != "mixture":
    return
  if not objective.get("mixture"):
    raise ValueError("config.objective.kind='mixture' needs config.objective.mixture = "
                     "{kind: dict(weight=..., ...)} naming at least one objective.")
  for kind, part in objective.mixture.items():
    if kind not in kinds.MIXABLE:
      raise ValueError(f"config.objective.mixture.{kind}: not an objective a mixture can "
                       f"hold; expected one of {kinds.MIXABLE}.")
    if not part.get("weight", 0) > 0:
      raise ValueError(f"config.objective.mixture.{kind}.weight={part.get('weight')} must be "
                       "positive.")


def check_resume(config: ml_collections.ConfigDict, workdir: str, *,
                 allow_change: bool) -> None:
  """Raises ValueError if `workdir` holds checkpoints of a run whose config differs in a
  setting outside RESUMABLE_CHANGES, naming each such setting and both values."""
  if allow_change or not _has_checkpoint(workdir):
    return
  saved = _flatten(load_saved_config(workdir))
  new = _flatten(json.loads(config.to_json_best_effort()))
  changed = sorted(k for k in saved.keys() | new.keys()
                   if saved.get(k, "<absent>") != new.get(k, "<absent>")
                   and not k.startswith(RESUMABLE_CHANGES))
  if changed:
    diffs = "; ".join(f"config.{k}: {saved.get(k, '<absent>')!r} -> "
                      f"{new.get(k, '<absent>')!r}" for k in changed)
    raise ValueError(
        f"--workdir={workdir} holds checkpoints of a run with a different config ({diffs}); "
        "resuming would mix two experiments. Use a new --workdir, or pass "
        "--allow_config_change to resume this run with the new values.")


def _flatten(tree: dict, prefix: str = "") -> dict:
  """{"a": {"b": 1}} -> {"a.b": 1}; lists stay values."""
  flat = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      flat.update(_flatten(v, f"{prefix}{k}."))
    else:
      flat[f"{prefix}{k}"] = v
  return flat
