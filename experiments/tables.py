"""Result tables shared by the sweep runner, the experiments and the benchmarks."""
import glob
import json
import os


def final_eval(workdir: str, split: str) -> dict:
  """The eval JSON of `split` at the run's last step."""
  paths = glob.glob(os.path.join(workdir, f"eval_{split}_step*.json"))
  if not paths:
    raise FileNotFoundError(f"No eval_{split}_step*.json in {workdir}.")
  path = max(paths, key=lambda p: int(p.rsplit("step", 1)[1].split(".")[0]))
  with open(path) as f:
    return json.load(f)


def markdown_table(rows: list[dict]) -> str:
  """Rows of one set of keys -> a markdown table; floats to 4 significant digits."""
  columns = list(rows[0])
  fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
  return "\n".join(["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
                   + ["| " + " | ".join(fmt(r[c]) for c in columns) + " |" for r in rows])
