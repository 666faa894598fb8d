"""The one table of objective kinds a config can name (`config.objective.kind`).

Each kind says how its objective is built from its config keys and what the config checks need
to know about it; adding an objective is one entry here (and its module). Keys by kind:

  caption        max_text_len, prompt
  vqa            max_text_len, max_question_len, max_new_tokens, questions_per_row,
                 relations_as ("asked", or "left_of": see objectives/vqa.py; optional)
  prompt         max_text_len, max_prompt_len, metric ("rouge" or "exact_match"), use_images
                 (False: text only, e.g. summarization)
  text_to_image  image_tokenizer (the workdir of a finished vqvae run, or an exported one),
                 max_caption_len, caption_dropout, cfg_scale, eval_cfg_scales, temperature,
                 top_k, top_p, code_order, code_positions, code_embedding_init (its row length
                 follows from max_caption_len and the tokenizer's grid)
  vqvae          beta (commitment loss weight); the model is config.model, a VQVAE's fields
  contrastive    max_text_len, embed_dim, loss ("sigmoid": SigLIP, "softmax": CLIP),
                 image_pool ("map" or "mean"), text_pool ("last" or "mean"); see
                 objectives/contrastive.py
  mixture        mixture = {kind: dict(weight=..., that kind's keys)}, e.g.
                 mixture = dict(caption=dict(weight=1.0, prompt="", max_text_len=26), vqa=...);
                 the weights' shares of config.data.global_batch_size are each part's rows
"""
import dataclasses
from typing import Any, Callable

import ml_collections

from gpt4v_jax.data import images
from gpt4v_jax.data.tokenizer import Tokenizer
from gpt4v_jax.objectives import mixture
from gpt4v_jax.objectives.base import Objective
from gpt4v_jax.objectives.caption import CaptionObjective
from gpt4v_jax.objectives.contrastive import ContrastiveObjective
from gpt4v_jax.objectives.image_tokenizer import VQVAEObjective
from gpt4v_jax.objectives.prompt import PromptObjective
from gpt4v_jax.objectives.text_to_image import TextToImageObjective
from gpt4v_jax.objectives.vqa import VQAObjective


@dataclasses.dataclass(frozen=True)
class Context:
  """What building an objective needs beside its own keys.

  tokenizer: the config's (None for the VQ-VAE); preprocess: every image's
  (`datasets.preprocess(config.data)`); metrics: {kind: the dataset's own metrics of that
  kind} (`datasets.dataset_metrics`); load_image_tokenizer: path -> (VQVAE, its variables), for
  text-to-image."""
  config: ml_collections.ConfigDict
  tokenizer: Tokenizer | None
  preprocess: images.Preprocess
  metrics: dict[str, Callable]
  load_image_tokenizer: Callable[[str], tuple[Any, dict]]


@dataclasses.dataclass(frozen=True)
class Kind:
  """build(keys, context) -> the objective. language_model: a GPT4V objective (tokenizer,
  vocabulary checks), which may be a part of a mixture. scene_only: evaluated by reading the
  shapes scene back from pixels, so trained on the shapes dataset only."""
  build: Callable[[ml_collections.ConfigDict, Context], Objective]
  language_model: bool = True
  scene_only: bool = False


def _caption(keys, ctx):
  return CaptionObjective(ctx.tokenizer, prompt=keys.prompt, max_text_len=keys.max_text_len,
                          preprocess=ctx.preprocess, extra_metrics=ctx.metrics.get("caption"))


def _vqa(keys, ctx):
  return VQAObjective(ctx.tokenizer, max_text_len=keys.max_text_len,
                      max_question_len=keys.max_question_len,
                      max_new_tokens=keys.max_new_tokens,
                      questions_per_row=keys.questions_per_row, preprocess=ctx.preprocess,
                      relations_as=keys.get("relations_as", "asked"))


def _prompt(keys, ctx):
  return PromptObjective(ctx.tokenizer, max_text_len=keys.max_text_len,
                         max_prompt_len=keys.max_prompt_len, metric=keys.metric,
                         use_images=keys.use_images, preprocess=ctx.preprocess)


def _text_to_image(keys, ctx):
  vq_model, vq_variables = ctx.load_image_tokenizer(keys.image_tokenizer)
  return TextToImageObjective(
      ctx.tokenizer, vq_model=vq_model, vq_variables=vq_variables,
      max_caption_len=keys.max_caption_len, caption_dropout=keys.caption_dropout,
      cfg_scale=keys.cfg_scale, eval_cfg_scales=tuple(keys.eval_cfg_scales),
      temperature=keys.temperature, top_k=keys.top_k, top_p=keys.top_p,
      seed=ctx.config.seed, code_order=keys.code_order, code_positions=keys.code_positions,
      code_embedding_init=keys.code_embedding_init, preprocess=ctx.preprocess,
      max_text_len=keys.get("max_text_len"))


def _contrastive(keys, ctx):
  return ContrastiveObjective(ctx.tokenizer, max_text_len=keys.max_text_len,
                              embed_dim=keys.embed_dim, loss=keys.loss,
                              image_pool=keys.image_pool, text_pool=keys.text_pool,
                              preprocess=ctx.preprocess,
                              retrieval_keys=ctx.metrics.get("contrastive"))


def _vqvae(keys, ctx):
  return VQVAEObjective(beta=keys.beta, num_codes=ctx.config.model.num_codes,
                        preprocess=ctx.preprocess)


def _mixture(keys, ctx):
  parts = {kind: KINDS[kind].build(part, ctx) for kind, part in keys.mixture.items()}
  return mixture.MixtureObjective(parts, {kind: part.weight for kind, part in
                                          keys.mixture.items()},
                                  ctx.config.data.global_batch_size)


KINDS: dict[str, Kind] = {
    "caption": Kind(_caption),
    "vqa": Kind(_vqa),
    "prompt": Kind(_prompt),
    "contrastive": Kind(_contrastive),
    "text_to_image": Kind(_text_to_image, scene_only=True),
    "vqvae": Kind(_vqvae, language_model=False, scene_only=True),
    "mixture": Kind(_mixture),
}
# The kinds a mixture may hold: the GPT4V objectives.
MIXABLE = tuple(k for k, kind in KINDS.items() if kind.language_model and k != "mixture")


def part_configs(objective: ml_collections.ConfigDict) -> dict[str, ml_collections.ConfigDict]:
  """{kind: its keys} of config.objective: the mixture's parts, or the one objective."""
  if objective.kind == "mixture":
    return dict(objective.mixture)
  return {objective.kind: objective}
