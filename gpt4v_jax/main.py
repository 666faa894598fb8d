"""Entry point: python -m gpt4v_jax.main --config=configs/X.py[:variant] --workdir=DIR; from
Python (a notebook), `main.train(config, workdir)`.

Config values are overridden with --config.key=value; unknown keys and wrong types are
rejected by ml_collections before anything runs. Multi-host: set --distributed (TPU pods need
nothing else; GPU clusters also pass --coordinator_address/--num_processes/--process_id or
the matching environment variables understood by `jax.distributed.initialize`). A process
silent for --heartbeat_timeout seconds counts as dead and JAX ends the others, so a lost host
never leaves the rest waiting; rerun the same commands (on any number of processes) to resume.

SIGTERM or SIGINT (Ctrl-C) stops the run after the current step, once its checkpoint is
committed, with exit status 128 + the signal number (143 / 130, as if killed by it, so
schedulers see an unfinished job); the same command resumes it. Sent to one process of a
multi-process run, it stops every process at the same step (they vote each step).
"""
import shlex
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_FLAGS = {}  # name -> FlagHolder, once `define_flags` ran.


def define_flags() -> None:
  """The command line's flags. Defined when the command runs, not on import: importing this
  module for `train` (a notebook) must not claim flag names other absl programs use."""
  if _FLAGS:
    return
  _FLAGS.update(
      config=config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                             lock_config=True),
      workdir=flags.DEFINE_string("workdir", None, "Checkpoints, logs and results go here."),
      distributed=flags.DEFINE_bool("distributed", False,
                                    "Call jax.distributed.initialize()."),
      coordinator_address=flags.DEFINE_string("coordinator_address", None,
                                               "host:port of process 0."),
      num_processes=flags.DEFINE_integer("num_processes", None, "Processes in the job."),
      process_id=flags.DEFINE_integer("process_id", None, "This process's index."),
      heartbeat_timeout=flags.DEFINE_integer(
          "heartbeat_timeout", 30,
          "Multi-process: seconds without a heartbeat after which a process counts as dead; "
          "the others then stop with an error naming it instead of waiting for it for ever."),
      allow_config_change=flags.DEFINE_bool(
          "allow_config_change", False,
          "Resume a workdir whose run used a config that differs in settings that change "
          "results."))
  flags.mark_flags_as_required(["config", "workdir"])


def train(config, workdir: str, *, allow_config_change: bool = False) -> dict:
  """Trains and evaluates `config` in `workdir` (resuming whatever it holds), as the command
  line does; returns the final metrics {split: metrics, "train": cost}. The one way to train
  from Python; a trained run is used through `gpt4v_jax.Model`."""
  from gpt4v_jax import train as loop  # Imports jax: after XLA_FLAGS and flags are set.
  return loop.train_and_evaluate(config, workdir, allow_config_change=allow_config_change)


def main(argv):
  del argv
  # Our progress lines go to stdout; keep library INFO chatter (Orbax, TFDS) out of the way.
  logging.set_verbosity(logging.WARNING)
  import jax  # After flag parsing, so XLA_FLAGS set by the caller apply.
  f = {name: holder.value for name, holder in _FLAGS.items()}
  if f["distributed"]:
    # CPU processes (tests, a laptop) exchange collectives over gloo; accelerators' own
    # collectives are unaffected.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f["coordinator_address"],
                               num_processes=f["num_processes"], process_id=f["process_id"],
                               heartbeat_timeout_seconds=f["heartbeat_timeout"])
  from gpt4v_jax import preemption
  try:
    train(f["config"], f["workdir"], allow_config_change=f["allow_config_change"])
  except preemption.Preempted as e:
    command = shlex.join([sys.executable, "-m", "gpt4v_jax.main", *sys.argv[1:]])
    print(f"{e}; its checkpoint is committed in {f['workdir']}/checkpoints. "
          f"Resume with the same command:\n  {command}", flush=True)
    sys.exit(128 + e.signum)


def run() -> None:
  """The command line: flags, then `main`."""
  define_flags()
  app.run(main)


if __name__ == "__main__":
  run()
