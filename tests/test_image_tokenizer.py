"""The VQ-VAE objective: trained by the shared loop from its config, evaluated by the parser."""
import json
import shutil

import numpy as np
import pytest

from configs import shapes_vqvae
from gpt4v_jax import runs
from gpt4v_jax.data import shapes
from gpt4v_jax.objectives import image_tokenizer


@pytest.fixture(scope="module")
def tiny_sources(tiny_data_dir):
  return shapes.encoded_sources(shapes.load_builder(tiny_data_dir, "tiny"))


def _items(objective, source, n):
  return [objective.eval_items(source[i])[0] for i in range(n)]


def test_score_is_perfect_for_the_originals_and_zero_for_blank_images(tiny_sources):
  objective = runs.make_objective(shapes_vqvae.get_config("tiny"))
  infos = [info for _, info in _items(objective, tiny_sources["validation"], 8)]
  codes = np.arange(8 * 64).reshape(8, 8, 8) % objective.num_codes
  same = [dict(image=i["image"], codes=c) for i, c in zip(infos, codes)]
  metrics, records = objective.score(infos, same)
  assert metrics["parser_agreement"] == 1.0
  assert metrics["reconstruction_scene_accuracy"] == 1.0
  assert metrics["psnr"] == pytest.approx(10 * np.log10(255 ** 2 / 1e-10))  # MSE floor.
  assert metrics["codebook_usage"] == 1.0  # 512 codes: each of the 64 used 8 times.
  assert metrics["perplexity"] == pytest.approx(64.0)
  assert all(r["agree"] and not r["lost"] for r in records)

  blank = [dict(image=np.zeros_like(i["image"]), codes=np.zeros((8, 8), np.int32))
           for i in infos]
  metrics, records = objective.score(infos, blank)
  assert metrics["parser_agreement"] == 0.0 and metrics["perplexity"] == pytest.approx(1.0)
  assert metrics["codebook_usage"] == 1 / objective.num_codes
  assert all(r["lost"] for r in records)


def test_same_scene_tolerates_one_pixel_only():
  a = [dict(shape="circle", color="red", size="small", x=10.0, y=20.0),
       dict(shape="square", color="blue", size="large", x=40.0, y=30.0)]
  moved = [dict(o, x=o["x"] + 1) for o in a[::-1]]
  assert image_tokenizer.same_scene(a, moved)
  assert not image_tokenizer.same_scene(a, [dict(o, y=o["y"] + 2) for o in a])
  assert not image_tokenizer.same_scene(a, [a[0], dict(a[1], color="red")])
  assert not image_tokenizer.same_scene(a, a[:1])


def test_vqvae_config_trains_evaluates_and_resumes_through_main(tmp_path, run_main,
                                                               tiny_vqvae_run):
  r, workdir = tiny_vqvae_run
  assert r.returncode == 0, r.stderr[-3000:]
  shutil.copytree(workdir, tmp_path / "vq")  # The shared run stays as it is.
  assert "step 6/6 loss=" in r.stdout and "psnr=" in r.stdout
  results = json.loads((tmp_path / "vq" / "results.json").read_text())
  assert {"psnr", "parser_agreement", "codebook_usage", "perplexity"} <= set(results["test"])
  assert (tmp_path / "vq" / "samples_test_step6.png").exists()
  # The EMA codebook is part of the checkpointed state: a longer run resumes from it.
  longer = run_main(f"--workdir={tmp_path / 'vq'}", "--config.train.steps=8",
                    config="shapes_vqvae.py:tiny")
  assert longer.returncode == 0, longer.stderr[-3000:]
  assert "Resumed from step 6" in longer.stdout and "step 8/8" in longer.stdout
