"""experiments/sweep.py: runs each variant once, skips finished ones, tabulates the same
numbers on a rerun, and prints one command per variant for a cluster."""
import csv

from experiments import sweep

def test_sweep_runs_skips_and_tabulates(tiny_sweep):
  run, first, workdir = tiny_sweep
  printed = run("--print_only")
  assert printed.returncode == 0, printed.stderr[-3000:]
  lines = printed.stdout.strip().splitlines()
  assert len(lines) == 2 and "--config.model.fusion=cross_attention" in lines[1]
  assert "'--config.optimizer.frozen=('\"'\"'vit'\"'\"',)'" in lines[1]

  assert first.returncode == 0, first.stderr[-3000:]
  results = workdir / "results"
  with open(results / "sweep.csv") as f:
    rows = list(csv.DictReader(f))
  assert [r["variant"] for r in rows] == ["prefix", "cross_attention"]
  assert set(rows[0]) == {"variant", "test/object_f1", "test/cider_d", "params", "step_ms"}
  assert int(rows[1]["params"]) > int(rows[0]["params"])  # The cross-attention blocks.
  assert (results / "sweep.png").stat().st_size > 0
  table = (results / "sweep.md").read_text()

  again = run()
  assert again.returncode == 0, again.stderr[-3000:]
  assert again.stdout.count("finished, skipped") == 2
  assert (results / "sweep.md").read_text() == table


def test_flag_values_are_what_ml_collections_parses():
  assert sweep.flag_value("cross_attention") == "cross_attention"
  assert sweep.flag_value(("vit",)) == "('vit',)" and sweep.flag_value(3) == "3"
