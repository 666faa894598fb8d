"""A PaliGemma/LLaVA-style model from two pretrained checkpoints, trained in LLaVA's two
stages by configs/pretrained_caption.py, exported back to Hugging Face format.

The checkpoints are small random transformers models (a SigLIP vision tower and a Llama
decoder with a word-level tokenizer over shapes' language), saved with save_pretrained.
"""
import json
import os
import shutil

import jax
import numpy as np
import pytest

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

from gpt4v_jax import export, main, runs  # pylint: disable=wrong-import-position
from gpt4v_jax.pretrained import load_hf  # pylint: disable=wrong-import-position


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, str]:
  """{"vision": dir, "language": dir} of two random checkpoints; the language one holds a
  tokenizer.json of shapes' words."""
  import tokenizers  # pylint: disable=import-outside-toplevel
  from gpt4v_jax.data import shapes  # pylint: disable=import-outside-toplevel
  root = tmp_path_factory.mktemp("hf")
  torch.manual_seed(0)
  vision = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(
      hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
      image_size=32, patch_size=8))
  vision.save_pretrained(root / "vision")
  words = shapes.vocabulary()
  tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel(
      {"<unk>": 0, **{w: i + 1 for i, w in enumerate(words)}}, unk_token="<unk>"))
  tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  language = transformers.LlamaForCausalLM(transformers.LlamaConfig(
      vocab_size=len(words) + 1, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False))
  language.save_pretrained(root / "language")
  tokenizer.save(str(root / "language" / "tokenizer.json"))
  return {"vision": str(root / "vision"), "language": str(root / "language")}


def _config(checkpoints, stage, data_dir, **init):
  """configs/pretrained_caption.py:<stage>,tiny on the two checkpoints."""
  from configs import pretrained_caption  # pylint: disable=import-outside-toplevel
  config = pretrained_caption.get_config(f"{stage},tiny")
  config.model.update(vision_checkpoint=checkpoints["vision"],
                      language_checkpoint=checkpoints["language"], vocab_size=128)
  config.tokenizer = "hf:" + checkpoints["language"]
  config.data.update(image_size=32, data_dir=data_dir)
  config.init.update(init)
  return config


@pytest.fixture(scope="module")
def stages(checkpoints, tiny_data_dir, tmp_path_factory) -> tuple[str, str]:
  """Workdirs of the tiny stage-1 run and the stage-2 run that starts from it (trained in this
  process, as from a notebook: a process start per run is most of a tiny run's time)."""
  root = tmp_path_factory.mktemp("stages")
  stage1 = _config(checkpoints, "stage1", tiny_data_dir)
  stage1.evals.update(during_splits=(), final_splits=())  # Stage 2 evaluates.
  main.train(stage1, str(root / "stage1"))
  main.train(_config(checkpoints, "stage2", tiny_data_dir, workdir=str(root / "stage1")),
             str(root / "stage2"))
  return str(root / "stage1"), str(root / "stage2")


def _params(workdir):
  return jax.device_get(runs.restore_run(workdir, "run")[2].params)


def _equal(a, b) -> bool:
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_two_stages_train_what_the_config_says(checkpoints, stages):
  """Stage 1 leaves both pretrained trees as loaded and trains the projector; stage 2 starts
  from stage 1 and trains the decoder too, the tower still frozen."""
  _, vision = load_hf(checkpoints["vision"])
  _, language = load_hf(checkpoints["language"])
  stage1, stage2 = _params(stages[0]), _params(stages[1])
  assert _equal(stage1["vit"], jax.device_get(vision))
  # The decoder's vocabulary grew from the checkpoint's 59 ids to 128: our special ids (and
  # the padding) follow, their rows the mean of the checkpoint's.
  embedding = stage1["decoder"]["embedding"]
  np.testing.assert_array_equal(embedding[:59], np.asarray(language["embedding"]))
  np.testing.assert_allclose(embedding[59:], np.broadcast_to(
      np.asarray(language["embedding"]).mean(0), (128 - 59, 32)), rtol=1e-6)
  assert _equal(stage2["vit"], stage1["vit"])
  assert not _equal(stage2["decoder"], stage1["decoder"])
  assert not _equal(stage2["projector"], stage1["projector"])


def test_exported_decoder_and_tower_run_in_transformers_with_our_outputs(stages, tmp_path):
  vision_dir, language_dir = export.export_hf(stages[1], str(tmp_path / "hf"))
  params = _params(stages[1])
  module, decoder = load_hf(language_dir)
  assert _equal(jax.device_get(decoder), params["decoder"])  # The round trip is exact.
  with open(os.path.join(language_dir, "config.json")) as f:
    assert json.load(f)["vocab_size"] == 128
  tokens = np.array([[1, 5, 9, 64, 2, 127, 40, 3]])
  ours = np.asarray(module.apply({"params": decoder}, tokens))
  theirs = transformers.AutoModelForCausalLM.from_pretrained(language_dir)(
      torch.tensor(tokens)).logits.detach().numpy()
  np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)
  tower, vit = load_hf(vision_dir)
  assert _equal(jax.device_get(vit), params["vit"])
  pixels = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
  theirs = transformers.SiglipVisionModel.from_pretrained(vision_dir)(
      torch.tensor(pixels.transpose(0, 3, 1, 2))).last_hidden_state.detach().numpy()
  np.testing.assert_allclose(np.asarray(tower.apply({"params": vit}, pixels)), theirs,
                             atol=1e-4, rtol=0)


def test_images_must_be_prepared_as_the_towers_processor_does(checkpoints, tmp_path):
  """config.data's resolution, resize, resample and normalisation are checked against the
  vision checkpoint's preprocessor_config.json before anything is built."""
  from gpt4v_jax import config_checks  # pylint: disable=import-outside-toplevel
  vision = str(tmp_path / "vision")
  shutil.copytree(checkpoints["vision"], vision)
  transformers.SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(vision)
  config = _config(dict(checkpoints, vision=vision), "stage1", str(tmp_path / "data"))
  config.data.update(image_size=32, normalize="clip")
  with pytest.raises(ValueError, match="config.data.normalize='clip', but the vision tower's "
                     "processor .* 'minus_one_to_one': set --config.data.normalize="):
    config_checks.check(config, str(tmp_path / "run"))
  config.data.update(normalize="minus_one_to_one", image_size=64)
  with pytest.raises(ValueError, match="config.data.image_size=64.*--config.data.image_size=32"):
    config_checks.check(config, str(tmp_path / "run"))
  config.data.image_size = 32
  config_checks.check(config, str(tmp_path / "run"))
