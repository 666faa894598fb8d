"""How long `gpt4v_jax.pretrained.load_hf` takes to bring a ~1B-parameter checkpoint onto the
devices, and how much host memory it needs for it.

  python -m experiments.benchmarks.load_hf [--dtypes=float32,bfloat16] [--mesh=data]

The checkpoint is random, written once under --checkpoint_dir in the Llama layout transformers
saves (config.json, 5 GB-capped safetensors shards with an index; TinyLlama-1.1B's shape:
width 2048, 22 layers, MLP 5632, 32 heads, 4 KV heads, 32k vocabulary, untied), stored in
bfloat16 as released checkpoints are. Each row is one cold `load_hf` call (the OS file cache
dropped where the machine allows, else warm: the column says), timed to the last array being
ready on its devices; peak RSS is the process's high-water mark over the load.
"""
import json
import os
import resource
import time

import jax
import ml_dtypes
import numpy as np
from absl import app, flags

from experiments.benchmarks import common
from gpt4v_jax import sharding
from gpt4v_jax.pretrained import load_hf
from gpt4v_jax.pretrained.hf_export import MAX_SHARD_BYTES
from gpt4v_jax.pretrained.hf_dir import INDEX, write_safetensors

_DTYPES = flags.DEFINE_list("dtypes", ["float32", "bfloat16"], "Param dtypes to load into.")
_CHECKPOINT_DIR = flags.DEFINE_string("checkpoint_dir", "/tmp/gpt4v_jax_llama_1b",
                                      "Where the random checkpoint is written (once).")
_MESH = flags.DEFINE_enum("mesh", "fsdp", ["data", "fsdp"],
                          "data: params replicated on every device; fsdp: split over them.")

CONFIG = dict(model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=32000,
              hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
              num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048,
              rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
              hidden_act="silu", torch_dtype="bfloat16")


def llama_tensors(c: dict) -> dict[str, tuple[int, ...]]:
  """Name -> shape of every tensor LlamaForCausalLM saves for config `c`."""
  w, m, d = c["hidden_size"], c["intermediate_size"], c["hidden_size"] // c["num_attention_heads"]
  kv = c["num_key_value_heads"] * d
  shapes = {"model.embed_tokens.weight": (c["vocab_size"], w), "model.norm.weight": (w,),
            "lm_head.weight": (c["vocab_size"], w)}
  for i in range(c["num_hidden_layers"]):
    p = f"model.layers.{i}."
    shapes.update({p + "self_attn.q_proj.weight": (w, w), p + "self_attn.k_proj.weight": (kv, w),
                   p + "self_attn.v_proj.weight": (kv, w), p + "self_attn.o_proj.weight": (w, w),
                   p + "mlp.gate_proj.weight": (m, w), p + "mlp.up_proj.weight": (m, w),
                   p + "mlp.down_proj.weight": (w, m), p + "input_layernorm.weight": (w,),
                   p + "post_attention_layernorm.weight": (w,)})
  return shapes


def write_checkpoint(path: str) -> int:
  """Writes the random checkpoint (unless there); returns its parameter count."""
  shapes = llama_tensors(CONFIG)
  count = sum(int(np.prod(s)) for s in shapes.values())
  if os.path.exists(os.path.join(path, INDEX)):
    return count
  os.makedirs(path, exist_ok=True)
  rng = np.random.default_rng(0)
  shards, size, weight_map = [{}], 0, {}
  for name, shape in shapes.items():
    x = (rng.standard_normal(shape, np.float32) * 0.02).astype(ml_dtypes.bfloat16)
    if shards[-1] and size + x.nbytes > MAX_SHARD_BYTES:
      shards.append({})
      size = 0
    shards[-1][name] = x
    size += x.nbytes
  for i, shard in enumerate(shards):
    file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
    write_safetensors(os.path.join(path, file), shard)
    weight_map.update(dict.fromkeys(shard, file))
  with open(os.path.join(path, INDEX), "w") as f:
    json.dump(dict(metadata={}, weight_map=weight_map), f)
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(CONFIG, f)
  return count


def drop_file_cache(path: str) -> bool:
  """Asks the OS to forget the checkpoint's pages (Linux, root); whether it could."""
  try:
    for name in os.listdir(path):
      fd = os.open(os.path.join(path, name), os.O_RDONLY)
      os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
      os.close(fd)
    return True
  except (OSError, AttributeError):
    return False


def main(argv):
  del argv
  path = _CHECKPOINT_DIR.value
  count = write_checkpoint(path)
  axes = dict(data=-1, fsdp=1, tensor=1) if _MESH.value == "data" else dict(
      data=1, fsdp=-1, tensor=1)
  mesh = sharding.make_mesh(axes)
  rows = []
  for dtype in _DTYPES.value:
    cold = drop_file_cache(path)
    t0 = time.perf_counter()
    _, params = load_hf(path, mesh=mesh, dtype=dtype)
    jax.block_until_ready(params)
    seconds = time.perf_counter() - t0
    nbytes = sum(x.nbytes for x in jax.tree.leaves(params))
    rows.append(dict(params_m=round(count / 1e6, 1), stored="bfloat16", loaded=dtype,
                     mesh=_MESH.value, devices=jax.device_count(), file_cache="cold" if cold
                     else "warm", seconds=round(seconds, 2),
                     gb_per_s=round(nbytes / seconds / 1e9, 2),
                     peak_rss_gb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                       / 1e6, 2)))
    del params
  common.report("load_hf", rows, notes=f"random {count / 1e9:.2f}B-param Llama checkpoint; "
                "peak RSS is the process's high-water mark so far (the first row's is the "
                "load's own)")


if __name__ == "__main__":
  app.run(main)
