"""SIGTERM / SIGINT as a request to stop cleanly: the loop finishes its step, saves and exits.

Schedulers (Kubernetes, SLURM, Borg, spot VMs) send SIGTERM some seconds before killing a job;
Ctrl-C sends SIGINT. The first such signal is only recorded; the train loop polls it between
steps. A second one gets the default behaviour back (SIGINT raises KeyboardInterrupt, SIGTERM
kills), so an impatient user can still abort at once.

On a pod the scheduler signals hosts one at a time, and a process that stopped alone would
leave the others waiting in the next step's collectives for ever. So the processes of a
multi-process run vote (`StopVote`): the decision to stop is one collective result, the same on
every process, and they all save the same step and exit with the same status.
"""
import signal
import threading

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

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


class StopVote:
  """The processes' agreed answer to "stop now?": 0 to go on, else a signal number.

  Each call casts this process's vote (the signal it received, or 0) into a global array with
  one entry per device, and a jitted max over it is the agreed value, identical on every
  process. `poll` is called once per step, after the step is dispatched; it returns the vote
  cast at the previous step, so the host waits only for the step before (as it already does
  for that step's finiteness) and every process stops after the same step: one step after the
  signal's. `now` votes and waits at once (between evals). Every process must make the same
  calls in the same order: each is a collective.

  One process alone needs no collective: its own signal is the answer, at once (`collective`
  forces the collective path, for the benchmark).
  """

  def __init__(self, request: StopRequest, mesh: jax.sharding.Mesh, *,
               collective: bool | None = None):
    self._request = request
    self._collective = jax.process_count() > 1 if collective is None else collective
    self._shape = (mesh.size,)
    self._sharding = NamedSharding(mesh, P(mesh.axis_names))
    self._any = jax.jit(jnp.max, out_shardings=NamedSharding(mesh, P()))
    self._pending = None  # The previous poll's vote, not yet read.

  def _cast(self) -> jax.Array:
    ballot = np.array([self._request.received or 0], np.int32)
    shards = [jax.device_put(ballot, d)
              for d in self._sharding.addressable_devices_indices_map(self._shape)]
    return self._any(jax.make_array_from_single_device_arrays(self._shape, self._sharding,
                                                              shards))

  def poll(self) -> int:
    """The vote of the previous call (0 at the first); casts this step's."""
    if not self._collective:
      return self._request.received or 0
    previous, self._pending = self._pending, self._cast()
    return 0 if previous is None else int(previous)

  def now(self) -> int:
    """Votes and waits for the result."""
    if not self._collective:
      return self._request.received or 0
    self._pending = None
    return int(self._cast())
