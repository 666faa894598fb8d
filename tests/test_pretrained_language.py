"""Hugging Face causal LMs as our Decoder (gpt4v_jax/pretrained/language.py), against
transformers itself: for GPT-2, Llama 3 (llama3 RoPE scaling, untied), a tied Llama with
biases (SmolLM2-like), Mistral (a sliding window shorter than the sequences), Qwen2 and Gemma,
a small random model saved with save_pretrained loads with `load_hf` and gives transformers'
logits and greedy tokens.

Weights are redrawn wider than transformers' init (std 0.3; norm scales and biases, which
start at 1 or 0, get noise): the logits then spread over several units, so a wrong switch
moves them far past the tolerance, and greedy decoding visits many tokens, not one repeated.
"""
import json

import numpy as np
import pytest

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

import flax.linen as nn  # pylint: disable=wrong-import-position
import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
from safetensors.numpy import load_file  # pylint: disable=wrong-import-position

from gpt4v_jax import sharding  # pylint: disable=wrong-import-position
from gpt4v_jax.pretrained import (  # pylint: disable=wrong-import-position
    families, family_of, language, load_hf)

_SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2)
# name -> (config class, its arguments).
CASES = {
    "gpt2": ("GPT2Config", dict(vocab_size=128, n_positions=64, n_embd=32, n_layer=2,
                                n_head=4)),
    # head_dim 16: RoPE's wavelengths 6.3, 20, 63, 199, ... fall in all three bands of the
    # llama3 remap (short < 64 / 4, medium, long > 64 / 1).
    "llama3": ("LlamaConfig", dict(_SMALL, vocab_size=160, hidden_size=64, rope_theta=10000.0,
                                   tie_word_embeddings=False, max_position_embeddings=256,
                                   rope_scaling=dict(rope_type="llama3", factor=8.0,
                                                     low_freq_factor=1.0, high_freq_factor=4.0,
                                                     original_max_position_embeddings=64))),
    "llama_tied": ("LlamaConfig", dict(_SMALL, vocab_size=144, num_key_value_heads=1,
                                       tie_word_embeddings=True, attention_bias=True,
                                       mlp_bias=True)),
    "mistral": ("MistralConfig", dict(_SMALL, vocab_size=136, sliding_window=5,
                                      tie_word_embeddings=False)),
    "qwen2": ("Qwen2Config", dict(_SMALL, vocab_size=152, tie_word_embeddings=False)),
    # head_dim 16 with width 32 and 4 heads: independent of the width.
    "gemma": ("GemmaConfig", dict(_SMALL, vocab_size=120, head_dim=16, num_key_value_heads=1)),
}
LENGTH, PROMPT, NEW = 12, 6, 20


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, tuple[str, object]]:
  """{case: (checkpoint dir, the transformers model it was saved from)}."""
  root = tmp_path_factory.mktemp("hf_language")
  out = {}
  for name, (config_class, kwargs) in CASES.items():
    torch.manual_seed(0)
    config = getattr(transformers, config_class)(**kwargs)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
      for p in model.parameters():
        if p.ndim >= 2:
          p.normal_(0.0, 0.3)
        else:
          p.add_(0.1 * torch.randn_like(p))
    # Greedy decoding runs its NEW steps: no stop token.
    model.generation_config.eos_token_id = None
    model.save_pretrained(root / name)
    out[name] = (str(root / name), model)
  return out


def _tokens(name, shape, seed=0):
  return np.random.default_rng(seed).integers(0, CASES[name][1]["vocab_size"], shape)


@pytest.mark.parametrize("name", list(CASES))
def test_logits_and_greedy_tokens_match_transformers(checkpoints, name):
  path, model = checkpoints[name]
  module, params = load_hf(path)
  assert isinstance(module, language.LanguageModel)
  tokens = _tokens(name, (2, LENGTH))
  ours = np.asarray(jax.jit(module.apply)({"params": params}, jnp.asarray(tokens)))
  with torch.no_grad():
    want = model(torch.tensor(tokens)).logits.numpy()
  assert ours.shape == want.shape == (2, LENGTH, CASES[name][1]["vocab_size"])
  np.testing.assert_allclose(ours, want, rtol=0, atol=1e-4)

  prompt = tokens[:, :PROMPT]
  got = np.asarray(language.greedy_generate(module, params, prompt, NEW))
  with torch.no_grad():
    prompt_t = torch.tensor(prompt)
    want = model.generate(prompt_t, attention_mask=torch.ones_like(prompt_t), max_new_tokens=NEW,
                          do_sample=False, pad_token_id=0).numpy()
  assert want.shape == (2, PROMPT + NEW)
  np.testing.assert_array_equal(got, want[:, PROMPT:])


@pytest.mark.parametrize("name", list(CASES))
def test_to_hf_inverts_to_ours_exactly(checkpoints, name):
  """Every checkpoint tensor a source reads comes back bitwise from our params (GPT-2's
  fused c_attn from its three parts); the others are the family's ignored ones."""
  path, _ = checkpoints[name]
  tensors = load_file(f"{path}/model.safetensors")
  with open(f"{path}/config.json") as f:
    config = json.load(f)
  family = family_of(config)
  sources = family.sources(config)
  params = families.params_from(sources, tensors.__getitem__)

  def leaf(path_):
    node = params
    for key in path_:
      node = node[key]
    return node

  back = families.hf_tensors(sources, leaf)
  assert set(back) == {key for source in sources.values() for key in source.keys}
  assert all(key in back or family.ignored(key, config) for key in tensors)
  for key, x in back.items():
    assert x.dtype == tensors[key].dtype and x.shape == tensors[key].shape, key
    np.testing.assert_array_equal(x, tensors[key], err_msg=key)


def test_sharded_scanned_remat_model_is_the_same(checkpoints):
  """GPT-2 has every new param (learned positions, LayerNorm biases, q/k/v/out/MLP biases):
  they carry logical names, so loaded FSDP x TP over the 8 devices into a scan_layers + remat
  model they give the single-device logits and greedy tokens."""
  name = "gpt2"
  path, _ = checkpoints[name]
  module, params = load_hf(path)
  mesh = sharding.make_mesh(dict(data=1, fsdp=4, tensor=2))
  scanned, sharded = load_hf(path, mesh=mesh, scan_layers=True, remat="full")
  assert sharded["blocks"]["attn"]["query_bias"].sharding.spec[1] == "tensor"
  tokens = jnp.asarray(_tokens(name, (2, LENGTH), seed=1))
  want = jax.jit(module.apply)({"params": params}, tokens)
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.DEFAULT_RULES):
    got = jax.jit(scanned.apply)({"params": sharded}, tokens)
    got_tokens = language.greedy_generate(scanned, sharded, tokens[:, :PROMPT], 4)
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
  np.testing.assert_array_equal(got_tokens,
                                language.greedy_generate(module, params, tokens[:, :PROMPT], 4))


def _config(name, **changes):
  config_class, kwargs = CASES[name]
  return {**getattr(transformers, config_class)(**kwargs).to_dict(), **changes}


@pytest.mark.parametrize("name,changes,match", [
    ("llama3", dict(rope_scaling=dict(rope_type="yarn", factor=4.0)), "rope_scaling type 'yarn'"),
    ("llama3", dict(hidden_act="gelu_fast"), "hidden_act='gelu_fast'"),
    ("gemma", dict(final_logit_softcapping=30.0), "final_logit_softcapping"),
    ("gpt2", dict(scale_attn_by_inverse_layer_idx=True), "scale_attn_by_inverse_layer_idx"),
    ("qwen2", dict(use_sliding_window=True, sliding_window=4, max_window_layers=1,
                   layer_types=None), "layer_types"),
    ("llama3", dict(model_type="gemma2"), "gemma2"),
])
def test_unsupported_options_are_refused_before_reading(name, changes, match):
  config = _config(name, **changes)
  family = language.GEMMA if name == "gemma" else language.GPT2 if name == "gpt2" else (
      language.LLAMA)
  with pytest.raises(families.UnsupportedCheckpoint, match=match):
    family.module(config)
  with pytest.raises(families.UnsupportedCheckpoint, match=match):
    family.sources(config)


def test_families_table():
  assert {t for f in language.FAMILIES for t in f.model_types} == {
      "gpt2", "llama", "mistral", "qwen2", "gemma"}
  assert all(f.kind == "language" for f in language.FAMILIES)
  assert language.GPT2.ignored("transformer.h.3.attn.masked_bias", {})
  assert not language.GPT2.ignored("transformer.h.3.attn.c_attn.bias", {})
  assert language.LLAMA.ignored("model.layers.0.self_attn.rotary_emb.inv_freq", {})
