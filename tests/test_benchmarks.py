"""The benchmarks run (smallest settings) and write their JSON: they are not timed here, only
kept from rotting."""
import json
import subprocess
import sys

import jax
import pytest

from conftest import ROOT
from experiments.benchmarks import common
from gpt4v_jax import runs


def _run(module: str, flags: list[str], results_dir) -> dict:
  """Runs `experiments.benchmarks.<module>` with flags; returns the JSON it wrote."""
  r = subprocess.run([sys.executable, "-m", f"experiments.benchmarks.{module}", *flags,
                      f"--results_dir={results_dir}"], cwd=ROOT, capture_output=True, text=True,
                     timeout=600, env={"PATH": "", "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT})
  assert r.returncode == 0, r.stderr[-3000:]
  assert f"{module} on cpu" in r.stdout and "|---|" in r.stdout
  return json.loads((results_dir / f"{module}.json").read_text())


@pytest.mark.parametrize("module, flags", [
    ("train_step", ["--models=default", "--variants=float32", "--batch=2", "--repeats=1"]),
    ("decode", ["--model=default", "--batch=2", "--lengths=4", "--repeats=1"]),
    ("fault_tolerance", ["--models=default", "--batch=2", "--steps=1"]),
])
def test_benchmark_prints_a_table_and_writes_json(tmp_path, module, flags):
  result = _run(module, flags, tmp_path)
  assert result["machine"]["platform"] == "cpu" and result["rows"]
  if module == "decode":  # One compile per decoder and length, none per token.
    assert result["rows"][0]["cache_compiles"] == result["rows"][0]["recompute_compiles"] == 1


def test_generate_benchmark_runs(tmp_path):
  """Model.generate at tiny sizes: the speedup is the ratio of the two rates, every asked
  bucket has a compile time, warm calls reuse their bucket's program, and the params counted
  are the default model's (counted here from shapes alone)."""
  row = _run("generate", ["--models=default", "--batches=1,2", "--max_new_tokens=2",
                          "--first_token_batches=1", "--repeats=1",
                          "--compile_buckets=1x8,2x16"], tmp_path)["rows"][0]
  assert row["model"] == "default" and row["new_tokens"] == 2
  assert row["b2_over_b1"] == pytest.approx(row["tokens_per_s_b2"] / row["tokens_per_s_b1"])
  assert row["first_token_ms_b1"] > 0 and {"compile_s_b1_l8", "compile_s_b2_l16"} <= set(row)
  assert row["warm_compiles"] == 0
  config = common.model_config("default")
  objective = runs.make_objective(config)
  shapes = jax.eval_shape(lambda: objective.init_variables(
      objective.build_model(config.model), jax.random.PRNGKey(0)))
  assert row["params_M"] == pytest.approx(
      sum(x.size for x in jax.tree.leaves(shapes["params"])) / 1e6)


def test_input_pipeline_benchmark_runs(tmp_path, tiny_data_dir):
  row = _run("input_pipeline", ["--objectives=caption", "--batches=2", "--builder_config=tiny",
                                 f"--data_dir={tiny_data_dir}"], tmp_path)["rows"][0]
  assert row["objective"] == "caption" and row["headroom"] > 0


def test_own_data_benchmark_runs(tmp_path):
  """4 tiny JPEGs through the builder, the pipeline (with and without the random crop) and the
  tiny config's step; the JSON's headroom is the pipeline's rate over the step's."""
  rows = _run("own_data", ["--images=4", "--image_width=64", "--image_height=48",
                           "--pipeline_batch=2", "--batches=1", "--warmup_batches=1",
                           "--threads=1", "--step_batch=2", "--step_repeats=1",
                           "--config_arg=tiny", "--vit_variant="], tmp_path)["rows"]
  assert [r["stage"] for r in rows] == ["build", "reuse", "pipeline", "pipeline", "train step"]
  assert rows[0]["examples"] == 4 and rows[0]["examples_per_s"] == pytest.approx(
      4 / rows[0]["seconds"])
  assert "random_resized_crop" not in rows[2]["setting"]
  assert "random_resized_crop" in rows[3]["setting"]
  step_rate = rows[4]["examples_per_s"]
  assert step_rate == pytest.approx(2 / rows[4]["seconds"])
  for row in rows[2:4]:
    assert row["examples"] == 2 and row["headroom"] == pytest.approx(
        row["examples_per_s"] / step_rate)

def test_1b_benchmark_model_has_about_a_billion_params():
  """The accelerator benchmark's "1b" model, counted from shapes alone (nothing allocated)."""
  config = common.model_config("1b")
  objective = runs.make_objective(config)
  model = objective.build_model(config.model)
  shapes = jax.eval_shape(lambda: objective.init_variables(model, jax.random.PRNGKey(0)))
  params = sum(x.size for x in jax.tree.leaves(shapes["params"]))
  assert 1.0e9 < params < 1.2e9, params


def test_similarity_benchmark_runs(tmp_path):
  """top_k (host keys and a memmap, several chunks) at a tiny size: every exact method returns
  the same indices as top_k, HNSW's recall is a fraction, and the memmap scratch file is gone."""
  try:
    import faiss  # The benchmark leaves the faiss rows out without it.
    del faiss
    faiss_rows = ["faiss flat", "faiss hnsw M=32 ef=128"]
  except ImportError:
    faiss_rows = []
  rows = _run("similarity", ["--sizes=1000", "--queries=3", "--chunk_rows=256", "--repeats=1",
                             f"--dir={tmp_path / 'keys'}"], tmp_path)["rows"]
  assert [r["method"] for r in rows] == ["top_k host", "top_k memmap", "numpy"] + faiss_rows
  for row in rows:
    assert row["n"] == 1000 and row["queries_per_s"] == pytest.approx(3 / row["search_s"],
                                                                       rel=1e-2)
    if "hnsw" in row["method"]:
      assert 0 <= row["recall_at_10"] <= 1
    else:
      assert row["same_indices"] and row["recall_at_10"] == 1
  assert not list((tmp_path / "keys").iterdir())
