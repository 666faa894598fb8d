"""Text-to-image: row layout, codes spliced in the train step, the tokenizer check, a run."""
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import shapes_t2i
from gpt4v_jax import runs
from gpt4v_jax.data.tokenizer import BOI_ID, BOS_ID, EOI_ID, TASK_IDS
from gpt4v_jax.objectives import prefix_lm

CAPTION = "a small red circle."


@pytest.fixture(scope="module")
def config(tiny_vqvae_run):
  r, workdir = tiny_vqvae_run
  assert r.returncode == 0, r.stderr[-3000:]
  c = shapes_t2i.get_config("tiny")
  c.objective.image_tokenizer = str(workdir)
  return c


@pytest.fixture(scope="module")
def objective(config):
  return runs.make_objective(config)


def _example(seed=0):
  rng = np.random.default_rng(seed)
  return dict(image=rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), captions=[CAPTION])


def test_row_layout_and_caption_dropout(objective):
  row = objective.train_example(_example(), np.random.default_rng(0))
  caption = objective.tokenizer.encode(CAPTION)
  start = 3 + len(caption)
  assert row["code_start"] == start
  assert list(row["text"][:start]) == [BOS_ID, TASK_IDS["text_to_image"], *caption, BOI_ID]
  n = objective.num_image_codes
  assert row["text"][start + n] == EOI_ID and not row["input_mask"][start + n + 1:].any()
  assert list(row["ar_mask"][:start]) == [0] * start and row["ar_mask"][start:start + n + 1].all()
  # The loss is on every code and on EOI: the targets of positions start-1 .. start+n-1.
  assert np.flatnonzero(row["loss_mask"]).tolist() == list(range(start - 1, start + n))

  objective.caption_dropout = 1.0
  try:
    dropped = objective.train_example(_example(), np.random.default_rng(0))
  finally:
    objective.caption_dropout = 0.1
  assert list(dropped["text"][:4]) == [BOS_ID, TASK_IDS["text_to_image"], BOI_ID, 0]
  assert dropped["code_start"] == 3


@pytest.mark.parametrize("code_order", ["rows", "columns"])
def test_loss_equals_the_loss_of_rows_written_with_the_codes(config, objective, code_order):
  """The reference builds each row with its real codes (`prefix_lm.make_row`) on the host,
  the code grid read row by row or column by column."""
  objective.code_order = code_order
  try:
    _check_loss_against_host_rows(config, objective)
  finally:
    objective.code_order = "rows"


def _check_loss_against_host_rows(config, objective):
  model = objective.build_model(config.model)
  examples = [_example(seed) for seed in range(4)]
  rows = [objective.train_example(ex, np.random.default_rng(0)) for ex in examples]
  batch = {k: jnp.asarray(np.stack([r[k] for r in rows])) for k in rows[0]}
  variables = nn.unbox(jax.jit(objective.init_variables, static_argnums=0)(
      model, jax.random.PRNGKey(0)))
  params, model_state = variables.pop("params"), variables
  loss, aux, new_state = objective.loss(model, params, model_state, batch,
                                        jax.random.PRNGKey(0), True)
  assert new_state is model_state  # The tokenizer is frozen.

  grid = np.asarray(objective.vq_model.apply(objective.vq_variables, batch["image"],
                                             method="encode"))  # [4, h, w]
  written = grid.transpose(0, 2, 1) if objective.code_order == "columns" else grid
  codes = written.reshape(4, -1)
  # Decoding reads the written sequence back into the grid.
  np.testing.assert_array_equal(objective._unflatten(jnp.asarray(codes)), grid)
  t = objective.tokenizer
  ref_rows = [prefix_lm.make_row([TASK_IDS["text_to_image"], *t.encode(CAPTION), BOI_ID],
                                 list(c + t.vocab_size), bos_id=BOS_ID, eos_id=EOI_ID,
                                 pad_id=0, max_len=objective.max_text_len)[0] for c in codes]
  ref = {k: jnp.asarray(np.stack([r[k] for r in ref_rows])) for k in ref_rows[0]}
  logits = model.apply({"params": params}, batch["image"], ref["text"], ref["ar_mask"],
                       ref["input_mask"], image_mask=jnp.zeros(4, bool))
  ref_loss, _ = prefix_lm.next_token_loss(logits, ref["targets"], ref["loss_mask"])
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
  assert aux["target_tokens"] == 4 * (objective.num_image_codes + 1)


def test_missing_image_tokenizer_fails_before_compiling(tmp_path, run_main):
  r = run_main(f"--workdir={tmp_path / 'run'}",
               f"--config.objective.image_tokenizer={tmp_path / 'no_vq'}",
               config="shapes_t2i.py:tiny")
  assert r.returncode != 0
  assert "config.objective.image_tokenizer" in r.stderr and "shapes_vqvae.py" in r.stderr
  assert not (tmp_path / "run" / "checkpoints").exists()


def test_caption_run_is_not_an_image_tokenizer(tmp_path, run_main, tiny_run):
  r = run_main(f"--workdir={tmp_path / 'run'}",
               f"--config.objective.image_tokenizer={tiny_run[1]}", config="shapes_t2i.py:tiny")
  assert r.returncode != 0 and "not a VQ-VAE" in r.stderr


def test_t2i_config_trains_and_scores_generations_through_main(tiny_t2i_run):
  r, workdir = tiny_t2i_run
  assert r.returncode == 0, r.stderr[-3000:]
  results = json.loads((workdir / "results.json").read_text())["test"]
  assert {"overall", "presence", "count", "position", "cfg1/overall", "cfg3/overall"} <= set(
      results)
  assert all(0.0 <= results[k] <= 1.0 for k in ("overall", "presence", "color"))
  records = json.loads((workdir / "eval_test_step6.json").read_text())["predictions"]
  assert len(records) == 16 and "parsed" in records[0]
  grid = workdir / "samples_test_step6.png"
  assert grid.exists()
  from PIL import Image
  assert Image.open(grid).size == (8 * 128, 5 * 128)  # 8 prompts x 5 guidance scales.


def test_codebook_embedding_init_maps_codebook_distances(config):
  """With code_embedding_init="codebook", code k's initial embedding is the tokenizer's
  codebook vector k under one linear map (so codes equal in the codebook start equal and
  centred codes map to centred rows), with the variance of a random init; text rows keep
  theirs."""
  c = config.copy_and_resolve_references()
  c.objective.code_embedding_init = "codebook"
  objective = runs.make_objective(c)
  model = objective.build_model(c.model)
  rng = jax.random.PRNGKey(0)
  fresh = nn.unbox(runs.make_objective(config).init_variables(model, rng))
  variables = nn.unbox(objective.init_variables(model, rng))
  e = np.asarray(variables["params"]["decoder"]["embedding"])
  first, end = objective.code_offset, objective.code_offset + objective.num_codes
  np.testing.assert_array_equal(e[:first], fresh["params"]["decoder"]["embedding"][:first])
  codebook = np.asarray(objective.vq_variables["vq_stats"]["quantizer"]["codebook"])
  centred = codebook - codebook.mean(0)
  # Solve for the map by least squares: it reproduces every row exactly.
  m, *_ = np.linalg.lstsq(centred, e[first:end], rcond=None)
  np.testing.assert_allclose(centred @ m, e[first:end], atol=1e-5)
  np.testing.assert_allclose(e[first:end].mean(0), 0, atol=1e-5)
  width = e.shape[1]
  assert 0.5 / width < e[first:end].var() < 2.0 / width
  with pytest.raises(ValueError, match="code_embedding_init"):
    c.objective.code_embedding_init = "pca"
    runs.make_objective(c)
