"""Scalars to stdout and to TensorBoard event files (tensorboardX: no TensorFlow needed)."""
import jax
from tensorboardX import SummaryWriter


class MetricWriter:
  """Writes on process 0 only, so a multi-host run produces one set of event files."""

  def __init__(self, logdir: str):
    self._tb = SummaryWriter(logdir) if jax.process_index() == 0 else None

  def scalars(self, step: int, scalars: dict[str, float], prefix: str = "") -> None:
    if self._tb is None:
      return
    for k, v in scalars.items():
      self._tb.add_scalar(f"{prefix}{k}", float(v), step)
    self._tb.flush()

  def text(self, step: int, tag: str, text: str) -> None:
    if self._tb is not None:
      self._tb.add_text(tag, text, step)

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def log(msg: str) -> None:
  """One line to stdout, process 0 only."""
  if jax.process_index() == 0:
    print(msg, flush=True)
