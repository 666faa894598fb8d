"""Scalars to stdout and to TensorBoard event files (tensorboardX: no TensorFlow needed), and
back out of them (`read_scalars`, for notebooks and reports)."""
import collections
import glob
import os
import struct
import sys

import jax


def _import_tensorboardx():
  """(SummaryWriter, event_pb2). tensorboardX imports torch whenever it is installed, only to
  accept torch tensors: over a second per process where torch is there (the test environment:
  the pretrained tests' oracle). Hidden for that import; it stays importable after."""
  hide = "torch" not in sys.modules
  if hide:
    sys.modules["torch"] = None  # `import torch` raises ImportError, which tensorboardX handles.
  try:
    from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
    from tensorboardX.proto import event_pb2  # pylint: disable=import-outside-toplevel
  finally:
    if hide:
      del sys.modules["torch"]
  return SummaryWriter, event_pb2


SummaryWriter, event_pb2 = _import_tensorboardx()


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


def read_scalars(logdir: str) -> dict[str, list[tuple[int, float]]]:
  """{tag: [(step, value), ...] in step order} of every event file in `logdir` (a workdir's
  tb/). Event files are TFRecords: [length u64][crc u32][Event proto][crc u32]."""
  scalars = collections.defaultdict(dict)
  for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
    with open(path, "rb") as f:
      data = f.read()
    offset = 0
    while offset + 12 <= len(data):
      (length,) = struct.unpack("<Q", data[offset:offset + 8])
      event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
      offset += 12 + length + 4
      for value in event.summary.value:
        scalars[value.tag][event.step] = value.simple_value  # A resumed run's rewrite wins.
  return {tag: sorted(steps.items()) for tag, steps in scalars.items()}
