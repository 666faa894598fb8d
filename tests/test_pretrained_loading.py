"""The Hugging Face loader itself: streaming onto a mesh, shards, dtypes, and the errors a bad
directory gets (the families' numerics are tests/test_pretrained_{vision,language}.py's)."""
import json
import os
import shutil
import subprocess
import sys
import weakref

import jax
import jax.numpy as jnp
import numpy as np
import pytest

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

# pylint: disable=wrong-import-position
from conftest import FAST_COMPILE
from gpt4v_jax import sharding
from gpt4v_jax.pretrained import CheckpointError, UnsupportedCheckpoint, hf_dir, load_hf
from gpt4v_jax.pretrained.hf_dir import write_safetensors


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> str:
  """A small random Llama (GQA, untied), saved in 3 safetensors shards with an index."""
  torch.manual_seed(0)
  model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
      vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
      num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=False))
  path = tmp_path_factory.mktemp("llama")
  model.save_pretrained(path, max_shard_size="100KB")
  assert os.path.exists(path / hf_dir.INDEX)
  return str(path)


def _copy(src, dst) -> str:
  shutil.copytree(src, dst)
  return str(dst)


def _loss(module, params, tokens):
  logits = module.apply({"params": params}, tokens)
  logp = jax.nn.log_softmax(logits[:, :-1])
  return -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1).mean()


TOKENS = np.random.default_rng(0).integers(0, 256, size=(8, 12)).astype(np.int32)


@pytest.mark.parametrize("mesh_shape", [(8, 1, 1), (1, 8, 1), (1, 4, 2), (2, 1, 4)],
                         ids=["data", "fsdp", "fsdp_tensor", "data_tensor"])
def test_sharded_load_streams_tensors_and_gives_one_devices_loss(llama_dir, mesh_shape,
                                                                 monkeypatch):
  module, single = load_hf(llama_dir)
  reference = float(jax.jit(lambda p: _loss(module, p, TOKENS))(single))
  # Count the checkpoint tensors alive at once while loading onto the mesh.
  alive, peak = [0], [0]
  read = hf_dir.HFDir.read

  def counted_read(self, key):
    x = read(self, key)
    alive[0] += 1
    peak[0] = max(peak[0], alive[0])
    weakref.finalize(x, lambda: alive.__setitem__(0, alive[0] - 1))
    return x

  monkeypatch.setattr(hf_dir.HFDir, "read", counted_read)
  mesh = jax.make_mesh(mesh_shape, sharding.MESH_AXES,
                       axis_types=(jax.sharding.AxisType.Auto,) * 3)
  module, params = load_hf(llama_dir, mesh=mesh)
  assert peak[0] == 1  # One tensor on the host at a time (beyond the devices' own shards).
  query = params["block_0"]["attn"]["query"]
  assert query.sharding.mesh.shape == mesh.shape
  expected = sharding.logical_to_shardings(
      jax.eval_shape(module.init, jax.random.PRNGKey(0), TOKENS[:1])["params"], mesh,
      sharding.DEFAULT_RULES)
  assert jax.tree.map(lambda a: a.sharding, params) == expected
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(single)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  with jax.set_mesh(mesh):
    loss = float(jax.jit(lambda p: _loss(module, p, TOKENS))(params))
  assert abs(loss - reference) <= 1e-5


def test_bfloat16_params(llama_dir):
  module, params = load_hf(llama_dir, dtype="bfloat16")
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}
  _, f32 = load_hf(llama_dir)
  np.testing.assert_array_equal(
      np.asarray(params["embedding"]),
      np.asarray(f32["embedding"]).astype(jnp.bfloat16))
  logits = module.apply({"params": params}, TOKENS[:2])
  assert logits.dtype == jnp.float32 and np.isfinite(np.asarray(logits)).all()


def test_scanned_layers_load_the_same_model(llama_dir):
  module, params = load_hf(llama_dir)
  scanned_module, scanned = load_hf(llama_dir, scan_layers=True)
  assert scanned["blocks"]["attn"]["query"].shape[0] == 2
  np.testing.assert_allclose(np.asarray(scanned_module.apply({"params": scanned}, TOKENS[:2])),
                             np.asarray(module.apply({"params": params}, TOKENS[:2])),
                             atol=1e-5, rtol=0)


def _rewrite(path, edit):
  """Applies `edit(tensors)` to a one-file copy of the checkpoint at `path`."""
  d = hf_dir.HFDir(path)
  tensors = {k: np.array(d.read(k)) for k in d.keys()}
  edit(tensors)
  for name in os.listdir(path):
    if name.endswith(".safetensors") or name == hf_dir.INDEX:
      os.remove(os.path.join(path, name))
  write_safetensors(os.path.join(path, hf_dir.SINGLE), tensors)


def test_bad_directories_are_clear_errors(llama_dir, tmp_path):
  with pytest.raises(CheckpointError, match="no such directory"):
    load_hf(str(tmp_path / "nothing"))

  pickle = _copy(llama_dir, tmp_path / "pickle")
  for name in os.listdir(pickle):
    if name.endswith(".safetensors") or name == hf_dir.INDEX:
      os.remove(os.path.join(pickle, name))
  open(os.path.join(pickle, "pytorch_model.bin"), "wb").close()
  with pytest.raises(UnsupportedCheckpoint, match="pytorch_model.bin.*safe_serialization=True"):
    load_hf(pickle)

  missing = _copy(llama_dir, tmp_path / "missing")
  _rewrite(missing, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
  with pytest.raises(CheckpointError, match="missing tensor model.layers.1.mlp.up_proj.weight"):
    load_hf(missing)

  extra = _copy(llama_dir, tmp_path / "extra")
  _rewrite(extra, lambda t: t.update({"model.layers.2.mlp.up_proj.weight": np.zeros(3)}))
  with pytest.raises(CheckpointError,
                     match="model.safetensors: unexpected tensor model.layers.2.mlp.up_proj"):
    load_hf(extra)

  shape = _copy(llama_dir, tmp_path / "shape")
  _rewrite(shape, lambda t: t.update({"model.norm.weight": np.ones(65, np.float32)}))
  with pytest.raises(CheckpointError, match=r"model.norm.weight \[65\].*\[64\]"):
    load_hf(shape)

  dtype = _copy(llama_dir, tmp_path / "dtype")
  _rewrite(dtype, lambda t: t.update({"model.norm.weight": np.ones(64, np.int32)}))
  with pytest.raises(CheckpointError, match="model.norm.weight.*int32.*floating point"):
    load_hf(dtype)

  kind = _copy(llama_dir, tmp_path / "kind")
  with open(os.path.join(kind, "config.json")) as f:
    config = json.load(f)
  with open(os.path.join(kind, "config.json"), "w") as f:
    json.dump(dict(config, model_type="mamba"), f)
  with pytest.raises(UnsupportedCheckpoint, match="model_type 'mamba' is not supported"):
    load_hf(kind)


def test_loading_never_imports_torch_or_transformers(llama_dir):
  """torch and transformers are the tests' oracle only: loading, composing and exporting run
  without them."""
  code = ("import sys; from gpt4v_jax.pretrained import load_hf, compose, hf_export; "
          f"load_hf({llama_dir!r}); "
          "assert not {'torch', 'transformers'} & set(sys.modules), sorted(sys.modules)")
  r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                     env={**os.environ, "XLA_FLAGS": FAST_COMPILE}, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]


def test_base_model_checkpoints_load_without_the_head_prefix(tmp_path):
  """A checkpoint saved from the base model (GPT2Model: "wte.weight", "h.0...", as the
  original GPT-2 release is stored) loads as the LM-head model's ("transformer.wte.weight")."""
  torch.manual_seed(0)
  config = transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=2,
                                   n_positions=16)
  transformers.GPT2Model(config).save_pretrained(tmp_path / "base")
  lm = transformers.GPT2LMHeadModel(config)
  lm.transformer.load_state_dict(transformers.GPT2Model.from_pretrained(
      tmp_path / "base").state_dict())
  assert "wte.weight" in hf_dir.HFDir(str(tmp_path / "base")).keys()
  module, params = load_hf(str(tmp_path / "base"))
  with torch.no_grad():
    theirs = lm.eval()(torch.tensor(TOKENS[:2] % 64)).logits.numpy()
  ours = np.asarray(module.apply({"params": params}, TOKENS[:2] % 64))
  np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)
