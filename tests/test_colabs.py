"""Every notebook in colabs/ runs top to bottom, headless, with its tiny parameters; a cell
that raises fails the test. Notebooks are committed without outputs."""
import glob
import os
import shutil

import nbclient
import nbformat
import pytest

from conftest import ROOT

NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "colabs", "*.ipynb")))


def test_there_are_five_notebooks_without_outputs():
  assert [os.path.basename(p) for p in NOTEBOOKS] == [
      "01_quick_start.ipynb", "02_look_inside.ipynb", "03_text_to_image.ipynb",
      "04_ablations.ipynb", "05_similarity.ipynb"]
  for path in NOTEBOOKS:
    cells = nbformat.read(path, as_version=4).cells
    assert not any(c.get("outputs") or c.get("execution_count") for c in cells
                   if c.cell_type == "code"), path


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs_headless(path, tmp_path, tiny_data_dir, tiny_run, tiny_vqa_run,
                                tiny_vqvae_run, tiny_t2i_run, tiny_sweep):
  # The suite's finished tiny caption, VQA and text-to-image runs, and its tiny sweep, stand
  # in for the notebooks' trainings and their sweep (same configs and variant names: they are
  # reused, not redone), to keep the suite short. The text-to-image run's config names the
  # VQ-VAE run's own workdir, so that one is passed as VQ_WORKDIR (found finished) instead.
  for (r, workdir), name in ((tiny_run, "caption"), (tiny_vqa_run, "vqa"),
                             (tiny_t2i_run, "t2i")):
    assert r.returncode == 0, r.stderr[-3000:]
    shutil.copytree(workdir, tmp_path / "work" / name)
  assert tiny_sweep[1].returncode == 0, tiny_sweep[1].stderr[-3000:]
  shutil.copytree(tiny_sweep[2], tmp_path / "sweep")
  notebook = nbformat.read(path, as_version=4)
  # Papermill-style: the test's values go right after the cell tagged "parameters".
  index = next(i for i, c in enumerate(notebook.cells)
               if "parameters" in c.metadata.get("tags", []))
  notebook.cells.insert(index + 1, nbformat.v4.new_code_cell(
      f"WORKDIR = {str(tmp_path / 'work')!r}\nSWEEP_DIR = {str(tmp_path / 'sweep')!r}\n"
      f"DATA_DIR = {tiny_data_dir!r}\nTINY = True\nVQ_WORKDIR = {str(tiny_vqvae_run[1])!r}"))
  os.environ.setdefault("MPLBACKEND", "Agg")
  nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                          resources={"metadata": {"path": str(tmp_path)}}).execute()
