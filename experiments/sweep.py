"""Runs every variant of a config's sweep and tabulates their results.

  python -m experiments.sweep --config=configs/shapes_ablation.py[:arg] --workdir=DIR
  python -m experiments.sweep ... --print_only    # one command per variant, for a cluster

The config file defines `get_sweep(arg)` -> {variant name: {"dotted.config.key": value}}
(overrides of `get_config(arg)`), and may define `sweep_metrics(arg)` -> ["split/metric", ...]
for the table (default: every metric of the first split). Variant `name` runs
`python -m gpt4v_jax.main --config=... --config.key=value ... --workdir=DIR/name`, one after
another; a variant whose DIR/name/results.json exists is finished and skipped, so rerunning
the command resumes a sweep (a killed variant resumes from its checkpoint). Then
DIR/results/ gets sweep.md (a markdown table), sweep.csv and sweep.png (one bar chart per
metric), from the variants' results.json: their metrics, params and median step time.
Same config and seed give the same metrics on a rerun (runs are deterministic).
"""
import csv
import importlib.util
import json
import os
import shlex
import subprocess
import sys

from absl import app, flags

from experiments.tables import markdown_table

_CONFIG = flags.DEFINE_string("config", None, "configs/X.py[:arg], defining get_sweep.")
_WORKDIR = flags.DEFINE_string("workdir", None, "One subdirectory per variant, and results/.")
_PRINT_ONLY = flags.DEFINE_bool("print_only", False, "Print the variants' commands and exit.")
_EXTRA = flags.DEFINE_multi_string("override", [], "key=value for every variant (e.g. a "
                                   "data_dir), passed as --config.key=value.")
flags.mark_flags_as_required(["config", "workdir"])


def load_sweep(config_arg: str) -> tuple[dict[str, dict], list[str] | None]:
  """({variant: overrides}, table metrics or None) of configs/X.py[:arg]."""
  path, _, arg = config_arg.partition(":")
  spec = importlib.util.spec_from_file_location("sweep_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_sweep"):
    raise ValueError(f"{path} defines no get_sweep(arg); nothing to sweep.")
  metrics = module.sweep_metrics(arg or None) if hasattr(module, "sweep_metrics") else None
  return module.get_sweep(arg or None), metrics


def flag_value(value) -> str:
  """A Python value as ml_collections' --config.key=value parses it."""
  return value if isinstance(value, str) else repr(value)


def command(config_arg: str, workdir: str, overrides: dict, extra: list[str]) -> list[str]:
  return ([sys.executable, "-m", "gpt4v_jax.main", f"--config={config_arg}",
           f"--workdir={workdir}"]
          + [f"--config.{k}={flag_value(v)}" for k, v in overrides.items()]
          + [f"--config.{kv}" for kv in extra])


def collect(root: str, names: list[str], metrics: list[str] | None) -> list[dict]:
  """One row per finished variant: name, the metrics, params and step_ms."""
  rows = []
  for name in names:
    path = os.path.join(root, name, "results.json")
    if not os.path.exists(path):
      continue
    with open(path) as f:
      results = json.load(f)
    train = results.pop("train", {})
    wanted = metrics or [f"{split}/{m}" for split in list(results)[:1] for m in results[split]
                         if m not in ("num_examples", "skipped_examples", "seconds")]
    row = dict(variant=name)
    for key in wanted:
      split, _, metric = key.partition("/")
      row[key] = results.get(split, {}).get(metric)
    rows.append(dict(row, params=train.get("params"), step_ms=train.get("step_ms")))
  return rows


def write_results(out_dir: str, rows: list[dict]) -> str:
  """sweep.md, sweep.csv and sweep.png in out_dir; returns the markdown table."""
  os.makedirs(out_dir, exist_ok=True)
  columns = list(rows[0])
  table = markdown_table(rows)
  with open(os.path.join(out_dir, "sweep.md"), "w") as f:
    f.write(table + "\n")
  with open(os.path.join(out_dir, "sweep.csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
  import matplotlib  # Only here: the runs themselves need no plotting.
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  values = [c for c in columns if c != "variant"]
  fig, axes = plt.subplots(1, len(values), figsize=(3.2 * len(values), 3.2), squeeze=False)
  for ax, column in zip(axes[0], values):
    ax.bar([r["variant"] for r in rows], [r[column] or 0 for r in rows], color="tab:blue")
    ax.set_title(column, fontsize=9)
    ax.tick_params(axis="x", labelrotation=45, labelsize=7)
  fig.tight_layout()
  fig.savefig(os.path.join(out_dir, "sweep.png"), dpi=100)
  plt.close(fig)
  return table


def main(argv):
  del argv
  variants, metrics = load_sweep(_CONFIG.value)
  root = os.path.abspath(_WORKDIR.value)
  commands = {name: command(_CONFIG.value, os.path.join(root, name), overrides, _EXTRA.value)
              for name, overrides in variants.items()}
  if _PRINT_ONLY.value:
    for cmd in commands.values():
      print(shlex.join(cmd))
    return
  os.makedirs(root, exist_ok=True)
  for name, cmd in commands.items():
    if os.path.exists(os.path.join(root, name, "results.json")):
      print(f"[sweep] {name}: finished, skipped", flush=True)
      continue
    print(f"[sweep] {name}: {shlex.join(cmd)}", flush=True)
    r = subprocess.run(cmd)
    if r.returncode != 0:
      sys.exit(f"[sweep] {name} failed with status {r.returncode}; rerun the same command to "
               "resume it (finished variants are skipped).")
  rows = collect(root, list(variants), metrics)
  table = write_results(os.path.join(root, "results"), rows)
  print(table, flush=True)


if __name__ == "__main__":
  app.run(main)
