"""Whole vision-language checkpoints (PaliGemma, LLaVA-1.5) load as our GPT4V with
transformers' logits on image + text inputs; small random configs saved with save_pretrained."""
import numpy as np
import pytest

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

import jax.numpy as jnp  # pylint: disable=wrong-import-position

from gpt4v_jax.pretrained import load_hf  # pylint: disable=wrong-import-position

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


@pytest.mark.parametrize("build", [_paligemma, _llava], ids=["paligemma", "llava"])
def test_logits_equal_transformers(build, tmp_path):
  torch.manual_seed(0)
  theirs_model = build().eval()
  with torch.no_grad():  # Wider than transformers' init, so that every setting shows.
    for p in theirs_model.parameters():
      p.add_(0.3 * torch.randn_like(p) if p.ndim >= 2 else 0.1 * torch.randn_like(p))
  theirs_model.save_pretrained(tmp_path)
  module, params = load_hf(str(tmp_path))
  num_image_tokens = (32 // 8) ** 2
  rng = np.random.default_rng(0)
  pixels = rng.normal(size=(2, 3, 32, 32)).astype(np.float32)
  text = rng.integers(0, IMAGE_TOKEN, size=(2, 7))
  prefix_len = 4  # PaliGemma: image + 4 prefix tokens see each other; the rest is causal.
  ids = np.concatenate([np.full((2, num_image_tokens), IMAGE_TOKEN), text], axis=1)
  kwargs = {}
  if "PaliGemma" in type(theirs_model).__name__:
    # With labels, transformers builds PaliGemma's training mask: the prefix (type 0) seen by
    # every token, the suffix causal (without, the whole input is one prefix).
    kwargs["labels"] = torch.tensor(ids)
    kwargs["token_type_ids"] = torch.tensor(
        (np.arange(ids.shape[1]) >= num_image_tokens + prefix_len)[None].repeat(2, 0)
        .astype(np.int64))
  with torch.no_grad():
    theirs = theirs_model(input_ids=torch.tensor(ids), pixel_values=torch.tensor(pixels),
                          attention_mask=torch.ones(ids.shape, dtype=torch.long),
                          **kwargs).logits.numpy()[:, num_image_tokens:]
  ar_mask = (np.arange(7) >= prefix_len)[None].repeat(2, 0).astype(np.int32)
  ours = module.apply({"params": params}, jnp.asarray(pixels.transpose(0, 2, 3, 1)),
                      jnp.asarray(text, jnp.int32), jnp.asarray(ar_mask),
                      jnp.ones((2, 7), bool))
  np.testing.assert_allclose(np.asarray(ours), theirs, atol=1e-4, rtol=0)
  # The prefix's attention is part of what is compared: the other kind is far off.
  other = module.clone(causal_prefix=not module.causal_prefix).apply(
      {"params": params}, jnp.asarray(pixels.transpose(0, 2, 3, 1)), jnp.asarray(text, jnp.int32),
      jnp.asarray(ar_mask), jnp.ones((2, 7), bool))
  assert np.abs(np.asarray(other) - theirs).max() > 1e-2
