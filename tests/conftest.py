"""Test setup: 8 fake CPU devices, so every sharding test runs on a real mesh; and a runner
for end-to-end runs of main on the tiny config."""
import os
import subprocess
import sys

import pytest

# Two pytest workers share two cores, so one fake device's thread can reach a collective long
# after the others; XLA aborts a process whose collective waits past its terminate timeout
# (seen once: a tiny text-to-image run killed in an all-gather). Tests wait longer.
COLLECTIVE_TIMEOUTS = ("--xla_cpu_collective_call_terminate_timeout_seconds=600 "
                       "--xla_cpu_collective_timeout_seconds=600")
# The suite's programs are small and run a few steps: compiling them is most of its time, and
# LLVM without optimisation compiles them about a third faster (results stay within every
# test's tolerance; each comparison is between programs compiled alike).
FAST_COMPILE = "--xla_backend_optimization_level=0"
XLA_FLAGS = f"--xla_force_host_platform_device_count=8 {COLLECTIVE_TIMEOUTS} {FAST_COMPILE}"
# Must happen before jax is imported anywhere.
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " " + XLA_FLAGS
os.environ.setdefault("JAX_PLATFORMS", "cpu")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory) -> str:
  return str(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def run_main(tmp_path_factory, tiny_data_dir):
  """run_main(*flags, config=..., fault=(), cwd=ROOT) -> CompletedProcess of one run of main
  on a tiny config (`configs/<config>`, shapes_caption.py:tiny unless given).

  `fault=(FAULT, STEP)` runs it through tests/fault_injection.py instead. All runs share one
  persistent XLA compilation cache, so only the first run of a program pays for compiling it.
  """
  env = {**os.environ, "XLA_FLAGS": XLA_FLAGS,
         "PYTHONPATH": ROOT,
         "JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.mktemp("xla_cache")),
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
         "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}

  def run(*flags, config="shapes_caption.py:tiny", fault=(), cwd=ROOT):
    entry = ([os.path.join(ROOT, "tests", "fault_injection.py"), *map(str, fault)] if fault
             else ["-m", "gpt4v_jax.main"])
    cmd = [sys.executable, *entry, f"--config={ROOT}/configs/{config}",
           f"--config.data.data_dir={tiny_data_dir}", *flags]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600, env=env)

  return run


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, run_main):
  """(CompletedProcess, workdir) of one uninterrupted tiny run, with a relative --workdir as
  `make train` passes it. Shared by several tests: copy the workdir before changing it."""
  cwd = tmp_path_factory.mktemp("tiny_run")
  return run_main("--workdir=run", cwd=cwd), cwd / "run"


@pytest.fixture(scope="session")
def tiny_vqvae_run(tmp_path_factory, run_main):
  """(CompletedProcess, workdir) of one tiny VQ-VAE run (configs/shapes_vqvae.py:tiny), the
  image tokenizer of the tiny text-to-image runs. Copy the workdir before changing it."""
  workdir = tmp_path_factory.mktemp("tiny_vqvae") / "run"
  return run_main(f"--workdir={workdir}", config="shapes_vqvae.py:tiny"), workdir


@pytest.fixture(scope="session")
def vq_workdir(tiny_vqvae_run) -> str:
  """The workdir of the tiny VQ-VAE run, checked to have finished."""
  r, workdir = tiny_vqvae_run
  assert r.returncode == 0, r.stderr[-3000:]
  return str(workdir)


@pytest.fixture(scope="session")
def tiny_vqa_run(tmp_path_factory, run_main):
  """(CompletedProcess, workdir) of one tiny VQA run (configs/shapes_vqa.py:tiny). Copy the
  workdir before changing it."""
  workdir = tmp_path_factory.mktemp("tiny_vqa") / "run"
  return run_main(f"--workdir={workdir}", config="shapes_vqa.py:tiny"), workdir


@pytest.fixture(scope="session")
def tiny_t2i_run(tmp_path_factory, run_main, vq_workdir):
  """(CompletedProcess, workdir) of one tiny text-to-image run (configs/shapes_t2i.py:tiny) on
  the tiny VQ-VAE run. Copy the workdir before changing it."""
  workdir = tmp_path_factory.mktemp("tiny_t2i") / "run"
  return run_main(f"--workdir={workdir}", f"--config.objective.image_tokenizer={vq_workdir}",
                  config="shapes_t2i.py:tiny"), workdir


@pytest.fixture(scope="session")
def tiny_sources(tiny_data_dir):
  """{split: data source} of the tiny dataset (built on first use), examples as encoded."""
  from gpt4v_jax.data import shapes  # Imports jax: only after XLA_FLAGS is set above.
  return shapes.encoded_sources(shapes.load_builder(tiny_data_dir, "tiny"))


# A two-variant sweep of the tiny caption config (tests/test_sweep.py; the ablations notebook
# finds it finished and re-tabulates it).
SWEEP_CONFIG = """
from configs import shapes_caption

def get_config(arg=None):
  return shapes_caption.get_config(arg)

def get_sweep(arg=None):
  return {"prefix": {"model.fusion": "prefix"},
          "cross_attention": {"model.fusion": "cross_attention", "optimizer.frozen": ("vit",)}}

def sweep_metrics(arg=None):
  return ["test/object_f1", "test/cider_d"]
"""


@pytest.fixture(scope="session")
def tiny_sweep(tmp_path_factory, tiny_data_dir, tiny_run):
  """(run(*flags) -> CompletedProcess of `experiments.sweep` over SWEEP_CONFIG, its first
  run's CompletedProcess, the sweep's workdir). Copy the workdir before changing it."""
  assert tiny_run[0].returncode == 0  # The tiny dataset is built.
  root = tmp_path_factory.mktemp("sweep")
  (root / "sweep.py").write_text(SWEEP_CONFIG)

  def run(*flags):
    return subprocess.run(
        [sys.executable, "-m", "experiments.sweep", f"--config={root / 'sweep.py'}:tiny",
         f"--workdir={root / 'runs'}", f"--override=data.data_dir={tiny_data_dir}", *flags],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
        env={"PATH": "", "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"})

  return run, run(), root / "runs"
