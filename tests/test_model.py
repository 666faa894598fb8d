"""The front door: export a run, load it on other meshes and dtypes, generate in buckets."""
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpt4v_jax import export, model_dir, runs
from gpt4v_jax.model import Model


@pytest.fixture(scope="module")
def caption_dir(tiny_run, tmp_path_factory) -> str:
  r, workdir = tiny_run
  assert r.returncode == 0, r.stderr[-3000:]
  return export.export(str(workdir), str(tmp_path_factory.mktemp("export") / "caption"))


@pytest.fixture(scope="module")
def model(caption_dir) -> Model:
  return Model.from_pretrained(caption_dir)


@pytest.fixture(scope="module")
def test_images(tiny_sources) -> list[bytes]:
  return [tiny_sources["test"][i]["image"] for i in range(8)]


def test_export_is_self_contained_and_loads_on_any_mesh(tiny_run, caption_dir, tmp_path,
                                                        test_images):
  # The directory keeps working once the run and its workdir are gone: copy it elsewhere.
  moved = str(tmp_path / "moved")
  shutil.copytree(caption_dir, moved)
  assert sorted(os.listdir(moved)) == ["config.json", "model_info.json", "preprocess.json",
                                       "tokenizer", "variables"]
  info = json.loads(open(os.path.join(moved, "model_info.json")).read())
  assert info["step"] == 6 and info["params_format"] == "orbax"
  _, _, state, _ = runs.restore_run(str(tiny_run[1]), "run")
  reference = jax.device_get(state.params)
  captions = None
  for mesh in (dict(data=8, fsdp=1, tensor=1), dict(data=2, fsdp=2, tensor=2),
               dict(data=1, fsdp=1, tensor=1)):
    m = Model.from_pretrained(moved, mesh=mesh)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(m.params), reference)
    if mesh["fsdp"] == 2:  # Sharded by the logical rules: the embedding's "embed" axis split.
      embedding = m.params["decoder"]["embedding"]
      assert embedding.sharding.spec != jax.sharding.PartitionSpec()
    out = m.caption(test_images[:4])
    captions = captions or out
    assert out == captions


def test_safetensors_export_and_bfloat16(tiny_run, tmp_path, model, test_images):
  path = export.export(str(tiny_run[1]), str(tmp_path / "st"), params_format="safetensors")
  assert os.path.exists(os.path.join(path, "variables.safetensors"))
  m = Model.from_pretrained(path)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(m.params),
               jax.device_get(model.params))
  half = Model.from_pretrained(path, dtype="bfloat16")
  assert {x.dtype for x in jax.tree.leaves(half.params)} == {jnp.dtype(jnp.bfloat16)}
  assert len(half.caption(test_images[:2])) == 2


def test_mismatched_model_directory_is_a_clear_error(caption_dir, tmp_path):
  broken = str(tmp_path / "broken")
  shutil.copytree(caption_dir, broken)
  config_path = os.path.join(broken, "config.json")
  config = json.loads(open(config_path).read())
  config["model"]["mlp_dim"] *= 2
  open(config_path, "w").write(json.dumps(config))
  with pytest.raises(ValueError, match="do not fit the model its config builds.*mlp"):
    Model.from_pretrained(broken)
  with pytest.raises(FileNotFoundError, match="neither a model directory"):
    Model.from_pretrained(str(tmp_path))
  with pytest.raises(ValueError, match=r"trained on \['caption'\], not 'vqa'"):
    Model.from_pretrained(caption_dir).answer([b""], ["what?"])


def _prompts(model, extra_words):
  caption = model.part("caption")
  words = ["small", "red", "circle", "a", "large", "blue", "square"]
  return [caption.prompt_ids(" ".join(words[:k])) if k else caption.prompt_ids()
          for k in extra_words]


def test_batched_prompts_of_different_lengths_equal_each_alone(model, test_images):
  prompts = _prompts(model, [0, 3, 1, 6])
  for kwargs in (dict(), dict(num_beams=3, length_penalty=0.5)):
    together = model.generate(test_images[:4], prompts, max_new_tokens=6, **kwargs)
    alone = [model.generate([image], [prompt], max_new_tokens=6, **kwargs)[0]
             for image, prompt in zip(test_images[:4], prompts)]
    assert [g.tokens for g in together] == [g.tokens for g in alone]
    if kwargs:
      np.testing.assert_allclose([g.score for g in together], [g.score for g in alone],
                                 rtol=1e-5)


def test_sampling_is_reproducible_with_a_seed(model, test_images):
  prompts = _prompts(model, [0, 2])
  sample = lambda seed: [g.tokens for g in model.generate(
      test_images[:2], prompts, max_new_tokens=8, temperature=1.5, top_k=20, seed=seed)]
  assert sample(3) == sample(3)
  assert sample(3) != sample(4)


def test_stop_tokens_and_strings_cut_the_output(model, test_images):
  full = model.generate(test_images[:1], _prompts(model, [0]), max_new_tokens=8)[0]
  assert len(full.tokens) >= 2, full
  stop = full.tokens[1]
  cut = model.generate(test_images[:1], _prompts(model, [0]), max_new_tokens=8,
                       stop_tokens=(stop,))[0]
  assert cut.tokens == full.tokens[:full.tokens.index(stop)]
  word = full.text.split()[-1]
  by_string = model.generate(test_images[:1], _prompts(model, [0]), max_new_tokens=8,
                             stop_strings=(word,))[0]
  assert by_string.text == full.text[:full.text.find(word)]


def test_one_compilation_per_bucket(model, test_images):
  compiles = []  # Programs lowered for XLA: one per jit cache miss, persistent cache or not.
  listener = lambda event, duration, **kw: compiles.append(kw.get("fun_name")) if (
      event == "/jax/core/compile/jaxpr_to_mlir_module_duration") else None
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    # 8 data-parallel devices: batches of 1..8 rows share bucket 8; prompts of up to 7 ids
    # after BOS share length bucket 8.
    model.generate(test_images[:3], _prompts(model, [0, 1, 2]), max_new_tokens=5)
    first = len(compiles)
    assert first >= 1
    model.generate(test_images[:5], _prompts(model, [4, 0, 5, 3, 1]), max_new_tokens=5)
    assert len(compiles) == first, f"a call within the same buckets compiled {compiles}"
    model.generate(test_images * 2, _prompts(model, [0] * 16), max_new_tokens=5)
    assert len(compiles) > first  # Batch bucket 16: a new program.
  finally:
    jax.monitoring.clear_event_listeners()


def test_score_is_the_targets_log_likelihood(model, test_images):
  caption = model.caption(test_images[:1])[0]
  prompts = [model.part("caption").prompt_ids()] * 3
  targets = [caption, "a", caption + " a red"]
  scores = model.score(test_images[1:2] + test_images[:1] * 2, prompts, targets)
  assert scores.shape == (3,) and np.all(scores < 0)
  # Each equals the sum of the per-token log-probs of target and EOS in a full forward pass.
  t = model.tokenizer
  forward = jax.jit(model.module.apply)  # Op by op, the sharded forward takes ~10 s here.
  for k, (image, target) in enumerate(zip(test_images[1:2] + test_images[:1] * 2, targets)):
    ids = [t.bos_id] + prompts[k] + t.encode(target) + [t.eos_id]
    n = 1 + len(prompts[k])
    text = jnp.asarray([ids])
    ar = jnp.asarray([[0] * n + [1] * (len(ids) - n)])
    logits = forward({"params": model.params}, jnp.asarray(model.images([image])), text, ar,
                     jnp.ones_like(text, bool))
    logp = jax.nn.log_softmax(logits[0, n - 1:-1])
    expected = float(jnp.sum(logp[jnp.arange(len(ids) - n), text[0, n:]]))
    np.testing.assert_allclose(scores[k], expected, rtol=1e-4)


def test_embed_pools_the_encoder_tokens(model, test_images):
  tokens = model.embed(test_images[:3], pool=False)
  pooled = model.embed(test_images[:3])
  assert tokens.shape[0] == 3 and tokens.ndim == 3
  np.testing.assert_allclose(pooled, tokens.mean(axis=1), rtol=1e-6)


def test_model_directory_format_is_checked(caption_dir, tmp_path):
  broken = str(tmp_path / "future")
  shutil.copytree(caption_dir, broken)
  info_path = os.path.join(broken, "model_info.json")
  info = json.loads(open(info_path).read())
  info["format_version"] = model_dir.FORMAT_VERSION + 1
  open(info_path, "w").write(json.dumps(info))
  with pytest.raises(ValueError, match="model directory format"):
    Model.from_pretrained(broken)
