"""Which code a result came from: the one place scripts that write results ask git.

Every results file names its commit; a script run with uncommitted changes to the code that
can move its numbers names HEAD with "+dirty", so a table never credits a commit with a number
it did not make (`short` keeps the mark in a table).
"""
import os
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What a result can depend on: the library, its install, the configs and the scripts here
# (wider than what experiments.reproduce stamps a run with: its CODE and config).
RESULT_CODE = ("gpt4v_jax", "setup.py", "configs", "experiments")
DIRTY = "+dirty"


def git(*args: str, repo: str = REPO) -> str:
  """stdout of `git ARGS` in `repo`; raises CalledProcessError when git fails."""
  return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True,
                        check=True).stdout


def commit(repo: str = REPO, paths: tuple[str, ...] = RESULT_CODE) -> str | None:
  """HEAD's full hash, plus "+dirty" when `paths` have changed, staged or untracked files;
  None outside a git checkout (a result from an unpacked archive names no commit)."""
  try:
    head = git("rev-parse", "HEAD", repo=repo).strip()
    dirty = git("status", "--porcelain", "--", *paths, repo=repo).strip()
  except (OSError, subprocess.CalledProcessError):
    return None
  return head + (DIRTY if dirty else "")


def short(commit: str | None) -> str:
  """A commit as tables show it: 7 hex digits, and the DIRTY mark when the run had
  uncommitted code."""
  if not commit:
    return "unrecorded"  # Run outside a git checkout.
  return commit[:7] + (DIRTY if commit.endswith(DIRTY) else "")
