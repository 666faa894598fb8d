"""Whole vision-language checkpoints (PaliGemma, LLaVA-1.5) load as our GPT4V with
transformers' logits on image + text inputs; small random configs saved with save_pretrained."""
import os
import shutil

import numpy as np
import pytest

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

import jax.numpy as jnp  # pylint: disable=wrong-import-position

# pylint: disable=wrong-import-position
from gpt4v_jax import export, main, runs
from gpt4v_jax.model import Model
from gpt4v_jax.pretrained import load_hf

IMAGE_TOKEN = 127
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
              image_size=32, patch_size=8)


def _paligemma():
  return transformers.PaliGemmaForConditionalGeneration(transformers.PaliGemmaConfig(
      vision_config=transformers.SiglipVisionConfig(**VISION),
      text_config=transformers.GemmaConfig(
          hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
          num_key_value_heads=1, head_dim=16, vocab_size=128),
      image_token_index=IMAGE_TOKEN, projection_dim=32))


def _llava():
  return transformers.LlavaForConditionalGeneration(transformers.LlavaConfig(
      vision_config=transformers.CLIPVisionConfig(**VISION, projection_dim=16),
      text_config=transformers.LlamaConfig(
          hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
          num_key_value_heads=2, vocab_size=128),
      image_token_index=IMAGE_TOKEN, vision_feature_layer=-2))


def _perturbed(model):
  """Weights wider than transformers' init, so that every setting shows in the logits."""
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.3 * torch.randn_like(p) if p.ndim >= 2 else 0.1 * torch.randn_like(p))
  return model


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, tuple[str, object]]:
  """{"paligemma" | "llava": (dir, the transformers model saved there)}."""
  out = {}
  for name, build in (("paligemma", _paligemma), ("llava", _llava)):
    torch.manual_seed(0)
    model = _perturbed(build().eval())
    path = tmp_path_factory.mktemp(name)
    model.save_pretrained(path)
    out[name] = (str(path), model)
  return out


NUM_IMAGE_TOKENS = (32 // 8) ** 2
PREFIX_LEN = 4  # PaliGemma: image + 4 prefix tokens see each other; the rest is causal.


def transformers_logits(model, pixels, text):
  """transformers' logits at the text positions of [image tokens, text]."""
  ids = np.concatenate([np.full((len(text), NUM_IMAGE_TOKENS), IMAGE_TOKEN), text], axis=1)
  kwargs = {}
  if "PaliGemma" in type(model).__name__:
    # With labels, transformers builds PaliGemma's training mask: the prefix (type 0) seen by
    # every token, the suffix causal (without, the whole input is one prefix).
    kwargs["labels"] = torch.tensor(ids)
    kwargs["token_type_ids"] = torch.tensor(np.broadcast_to(
        np.arange(ids.shape[1]) >= NUM_IMAGE_TOKENS + PREFIX_LEN, ids.shape).astype(np.int64))
  with torch.no_grad():
    return model(input_ids=torch.tensor(ids), pixel_values=torch.tensor(pixels),
                 attention_mask=torch.ones(ids.shape, dtype=torch.long),
                 **kwargs).logits.numpy()[:, NUM_IMAGE_TOKENS:]


def our_logits(module, params, pixels, text):
  ar_mask = np.broadcast_to(np.arange(text.shape[1]) >= PREFIX_LEN, text.shape)
  return np.asarray(module.apply({"params": params}, jnp.asarray(pixels.transpose(0, 2, 3, 1)),
                                 jnp.asarray(text, jnp.int32), jnp.asarray(ar_mask, jnp.int32),
                                 jnp.ones(text.shape, bool)))


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(2, 3, 32, 32)).astype(np.float32),
          rng.integers(0, 60, size=(2, 7)))


@pytest.mark.parametrize("name", ["paligemma", "llava"])
def test_logits_equal_transformers(name, checkpoints):
  path, theirs_model = checkpoints[name]
  module, params = load_hf(path)
  pixels, text = _inputs()
  theirs = transformers_logits(theirs_model, pixels, text)
  np.testing.assert_allclose(our_logits(module, params, pixels, text), theirs, atol=1e-4,
                             rtol=0)
  # The prefix's attention is part of what is compared: the other kind is far off.
  other = our_logits(module.clone(causal_prefix=not module.causal_prefix), params, pixels, text)
  assert np.abs(other - theirs).max() > 1e-2


def test_finetune_sample_and_export_a_paligemma_checkpoint(checkpoints, tiny_data_dir, tmp_path,
                                                           capsys):
  """Our loop finetunes a whole PaliGemma checkpoint (all three trees from it), our inference
  API captions with the result, and transformers runs its export with our logits."""
  import tokenizers  # pylint: disable=import-outside-toplevel
  from configs import shapes_caption  # pylint: disable=import-outside-toplevel
  from gpt4v_jax.data import shapes  # pylint: disable=import-outside-toplevel
  path = str(tmp_path / "paligemma")
  shutil.copytree(checkpoints["paligemma"][0], path)
  words = shapes.vocabulary()
  tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel(
      {"<unk>": 0, **{w: i + 1 for i, w in enumerate(words)}}, unk_token="<unk>"))
  tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  tokenizer.save(os.path.join(path, "tokenizer.json"))
  config = shapes_caption.get_config("tiny")
  config.model.update(vision_checkpoint=path, language_checkpoint=path, vocab_size=128)
  config.tokenizer = "hf:" + path
  config.data.update(image_size=32, data_dir=tiny_data_dir)
  config.train.update(steps=4, checkpoint_every=4)
  # Captioning is checked through Model below; the evaluator's run on a composed model is
  # test_pretrained_compose's.
  config.evals.update(every=4, during_splits=(), final_splits=())
  workdir = str(tmp_path / "run")
  main.train(config, workdir)  # In this process: a process start is most of a tiny run.
  assert "Initialised projector from" in capsys.readouterr().out

  # Our own model directory carries the checkpoint's config.json (the architecture), so it
  # captions without the checkpoint directory.
  model_dir = export.export(workdir, str(tmp_path / "model"))
  shutil.rmtree(path)
  captions = Model.from_pretrained(model_dir).caption([np.zeros((32, 32, 3), np.uint8)])
  assert isinstance(captions[0], str)

  shutil.copytree(checkpoints["paligemma"][0], path)  # export_hf reads it (and its tokenizer).
  tokenizer.save(os.path.join(path, "tokenizer.json"))
  (out,) = export.export_hf(workdir, str(tmp_path / "hf"))
  params = runs.restore_run(workdir, "run")[2].params
  module, _ = load_hf(out)
  pixels, text = _inputs(1)
  theirs = transformers_logits(
      transformers.PaliGemmaForConditionalGeneration.from_pretrained(out).eval(), pixels, text)
  np.testing.assert_allclose(our_logits(module, params, pixels, text), theirs, atol=1e-4,
                             rtol=0)
