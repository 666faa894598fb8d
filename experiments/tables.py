"""Result tables shared by the sweep runner and the benchmarks."""


def markdown_table(rows: list[dict]) -> str:
  """Rows of one set of keys -> a markdown table; floats to 4 significant digits."""
  columns = list(rows[0])
  fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
  return "\n".join(["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
                   + ["| " + " | ".join(fmt(r[c]) for c in columns) + " |" for r in rows])
