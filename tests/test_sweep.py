"""experiments/sweep.py: runs each variant once, skips finished ones, tabulates the same
numbers on a rerun, and prints one command per variant for a cluster."""
import csv
import subprocess
import sys

from conftest import ROOT
from experiments import sweep

SWEEP_CONFIG = '''
from configs import shapes_caption

def get_config(arg=None):
  return shapes_caption.get_config(arg)

def get_sweep(arg=None):
  return {"prefix": {"model.fusion": "prefix"},
          "xattn": {"model.fusion": "cross_attention", "optimizer.frozen": ("vit",)}}

def sweep_metrics(arg=None):
  return ["test/object_f1", "test/cider_d"]
'''


def _sweep(tmp_path, tiny_data_dir, *flags):
  return subprocess.run(
      [sys.executable, "-m", "experiments.sweep", f"--config={tmp_path / 'sweep.py'}:tiny",
       f"--workdir={tmp_path / 'runs'}", f"--override=data.data_dir={tiny_data_dir}", *flags],
      cwd=ROOT, capture_output=True, text=True, timeout=900,
      env={"PATH": "", "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"})


def test_sweep_runs_skips_and_tabulates(tmp_path, tiny_data_dir, tiny_run):
  assert tiny_run[0].returncode == 0  # The tiny dataset is built.
  (tmp_path / "sweep.py").write_text(SWEEP_CONFIG)
  printed = _sweep(tmp_path, tiny_data_dir, "--print_only")
  assert printed.returncode == 0, printed.stderr[-3000:]
  lines = printed.stdout.strip().splitlines()
  assert len(lines) == 2 and "--config.model.fusion=cross_attention" in lines[1]
  assert "'--config.optimizer.frozen=('\"'\"'vit'\"'\"',)'" in lines[1]

  first = _sweep(tmp_path, tiny_data_dir)
  assert first.returncode == 0, first.stderr[-3000:]
  results = tmp_path / "runs" / "results"
  with open(results / "sweep.csv") as f:
    rows = list(csv.DictReader(f))
  assert [r["variant"] for r in rows] == ["prefix", "xattn"]
  assert set(rows[0]) == {"variant", "test/object_f1", "test/cider_d", "params", "step_ms"}
  assert int(rows[1]["params"]) > int(rows[0]["params"])  # The cross-attention blocks.
  assert (results / "sweep.png").stat().st_size > 0
  table = (results / "sweep.md").read_text()

  again = _sweep(tmp_path, tiny_data_dir)
  assert again.returncode == 0, again.stderr[-3000:]
  assert again.stdout.count("finished, skipped") == 2
  assert (results / "sweep.md").read_text() == table


def test_flag_values_are_what_ml_collections_parses():
  assert sweep.flag_value("cross_attention") == "cross_attention"
  assert sweep.flag_value(("vit",)) == "('vit',)" and sweep.flag_value(3) == "3"
