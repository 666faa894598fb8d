"""SIGTERM / SIGINT as a request to stop cleanly: the loop finishes its step, saves and exits.

Schedulers (Kubernetes, SLURM, Borg, spot VMs) send SIGTERM some seconds before killing a job;
Ctrl-C sends SIGINT. The first such signal is only recorded; the train loop polls it between
steps. A second one gets the default behaviour back (SIGINT raises KeyboardInterrupt, SIGTERM
kills), so an impatient user can still abort at once.
"""
import signal
import threading

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):
  """Raised by the train loop after it saved `step` and the checkpoint is committed."""

  def __init__(self, step: int, signum: int):
    super().__init__(f"{signal.Signals(signum).name} received: stopped after step {step}")
    self.step = step
    self.signum = signum


class StopRequest:
  """Context manager: while open, `received` is the first SIGTERM/SIGINT caught (or None)."""

  def __init__(self):
    self.received: int | None = None
    self._previous = {}

  def __enter__(self) -> "StopRequest":
    # Python only lets the main thread install handlers; elsewhere signals keep their defaults.
    if threading.current_thread() is threading.main_thread():
      self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
    return self

  def _handle(self, signum: int, frame) -> None:
    del frame
    self.received = signum
    signal.signal(signum, self._previous[signum])  # A second signal acts at once.

  def __exit__(self, *exc) -> None:
    for s, handler in self._previous.items():
      signal.signal(s, handler)
