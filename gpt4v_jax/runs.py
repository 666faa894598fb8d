"""Building and restoring runs: the objective a config describes, the sharded train state, a
run's newest checkpoint, and params taken from another run (pretrain, then finetune).

`train.py` runs the loop over what is built here; `model.py` loads trained models for use.
"""
import os
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from gpt4v_jax import checkpoint, config_checks, model_dir, sharding
from gpt4v_jax.data import datasets
from gpt4v_jax.data.tokenizer import get_tokenizer
from gpt4v_jax.metric_writer import log
from gpt4v_jax.objectives import kinds
from gpt4v_jax.objectives.image_tokenizer import build_vqvae
from gpt4v_jax.optimizer import make_optimizer


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # [] int32
  params: Any  # Unboxed param tree.
  opt_state: Any
  # Model variables outside "params", which the optimizer never touches: a VQ-VAE's EMA
  # codebook ("vq_stats", updated by its loss), a frozen image tokenizer (never updated).
  model_state: Any
  rng: jax.Array  # [2] uint32, a raw PRNG key so Orbax stores it as a plain array.
  # [] int32 each, cumulative over the run (checkpointed, so exact across resumes): bad
  # examples skipped, captions truncated to fit, steps whose update was not finite.
  counters: dict[str, jax.Array]


COUNTERS = ("skipped_examples", "truncated_texts", "nonfinite_steps")


def make_objective(config: ml_collections.ConfigDict, *,
                   load_image_tokenizer=None) -> kinds.Objective:
  """The objective `config.objective` describes (`objectives/kinds.py` lists the kinds and
  their keys); text objectives use `config.tokenizer`, every objective's images go through
  `datasets.preprocess(config.data)`. `load_image_tokenizer(path) -> (VQVAE, variables)`
  serves text-to-image's image tokenizer (default: `load_image_tokenizer` below)."""
  c = config.objective
  kind = kinds.KINDS.get(c.kind)
  if kind is None:
    raise ValueError(f"config.objective.kind={c.kind!r}: expected one of {tuple(kinds.KINDS)}.")
  context = kinds.Context(
      config=config, preprocess=datasets.preprocess(config.data),
      tokenizer=get_tokenizer(config.tokenizer) if kind.language_model else None,
      metrics=datasets.dataset_metrics(config.data.name),
      load_image_tokenizer=load_image_tokenizer or globals()["load_image_tokenizer"])
  return kind.build(c, context)


def restore_run(workdir: str, what: str, *, mesh: jax.sharding.Mesh | None = None,
                rules=None, objective: kinds.Objective | None = None
                ) -> tuple[ml_collections.ConfigDict, Any, Any, int]:
  """(config, model, state, step) of the newest readable checkpoint of the run in `workdir`;
  `what` names it in errors. The state is laid out over `mesh` by the logical `rules`
  (default: every param replicated on every device, whatever mesh the run used).
  `objective`: the run's, when the caller has built it already."""
  workdir = os.path.abspath(workdir)
  config = ml_collections.ConfigDict(config_checks.load_saved_config(workdir))
  objective = objective or make_objective(config)
  model = objective.build_model(config.model)
  tx, _ = make_optimizer(config.optimizer, config.train.steps)
  if mesh is None:  # A data-only mesh: every param replicated on every device.
    mesh, rules = sharding.make_mesh(dict(data=-1, fsdp=1, tensor=1)), sharding.DEFAULT_RULES
  rules = sharding.DEFAULT_RULES if rules is None else rules
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    _, abstract, _ = sharded_state_init(config, objective, model, tx, mesh, rules=rules)
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), keep=1_000_000)
  restored = ckpt.restore_latest(abstract, None)
  ckpt.close()
  if restored is None:
    raise checkpoint.CheckpointError(f"No checkpoint of the {what} in {workdir}.")
  state, step = restored
  log(f"{what}: step {step} of {workdir}.")
  return config, model, state, step


def load_image_tokenizer(path: str) -> tuple[Any, dict]:
  """(VQVAE, its variables as numpy arrays) of the vqvae run in the workdir `path`
  (config_checks.check has made sure it has a checkpoint), or of the model directory
  `model_dir.export` wrote there."""
  if model_dir.is_model_dir(path):
    config, variables = model_dir.read(path)
    return build_vqvae(config.model), variables
  _, model, state, _ = restore_run(path, "Image tokenizer")
  return model, jax.device_get({"params": state.params, **state.model_state})


# Params a model may have where the run it starts from has none; they keep their init (a
# captioner's decoder starts a text-to-image one, which embeds code positions).
_MAY_BE_NEW = ("code_position_embedding",)


def init_params_from(init: ml_collections.ConfigDict, params: dict,
                     vocab_size: int | None = None) -> dict:
  """`params` with the top-level trees named in `init.params` (e.g. "vit") taken from the
  newest checkpoint of the run in `init.workdir` (pretrain, then finetune), laid out as the
  arrays they replace. A vocabulary that grew (this model's `vocab_size` over the source run's,
  e.g. text-to-image's image codes after a captioner's words) keeps the source's rows of the
  embedding tables and this init's rows for the new ids; `_MAY_BE_NEW` params the source lacks
  keep this init's values. Raises ValueError naming any tree or leaf that does not fit, or is
  in one model only."""
  if not init.workdir:
    return params
  source_config, _, source, step = restore_run(init.workdir, "config.init.workdir")
  source_vocab = source_config.model.get("vocab_size")
  params = dict(params)
  grown, added = [], []
  for name in init.params:
    if name not in source.params or name not in params:
      raise ValueError(f"config.init.params: {name!r} is not a param tree of both this model "
                       f"({sorted(params)}) and the run in {init.workdir} "
                       f"({sorted(source.params)}).")
    source_leaves = dict(jax.tree_util.tree_leaves_with_path(source.params[name]))
    leaves = []
    for path, new in jax.tree_util.tree_leaves_with_path(params[name]):
      old = source_leaves.pop(path, None)
      if old is None and getattr(path[-1], "key", None) in _MAY_BE_NEW:
        leaves.append(new)
        added.append(f"{name}{jax.tree_util.keystr(path)}")
        continue
      if old is None:
        raise ValueError(f"config.init.params: {name!r} is built differently here than in "
                         f"{init.workdir}, which has no {name}{jax.tree_util.keystr(path)}.")
      if new.shape == old.shape:
        leaves.append(jax.device_put(old, new.sharding))
        continue
      if not _only_vocab_grew(new.shape, old.shape, vocab_size, source_vocab):
        raise ValueError(f"config.init.params: {name}{jax.tree_util.keystr(path)} has shape "
                         f"{new.shape} here but {old.shape} in {init.workdir}.")
      leaves.append(_overwrite_leading(new, old))
      grown.append(f"{name}{jax.tree_util.keystr(path)}")
    if source_leaves:
      raise ValueError(f"config.init.params: {name!r} is built differently here than in "
                       f"{init.workdir}: this model has no "
                       f"{', '.join(name + jax.tree_util.keystr(p) for p in source_leaves)}.")
    params[name] = jax.tree.unflatten(jax.tree.structure(params[name]), leaves)
  log(f"Initialised {', '.join(init.params)} from step {step} of {init.workdir}"
      + (f"; vocabulary {source_vocab} -> {vocab_size}, the new ids' rows of "
         f"{', '.join(grown)} as initialised here" if grown else "")
      + (f"; {', '.join(added)}, which it lacks, as initialised here" if added else "")
      + ".")
  return params


def _only_vocab_grew(new_shape, old_shape, vocab_size, source_vocab) -> bool:
  """Whether the shapes differ in one axis only, from `source_vocab` to a larger
  `vocab_size`."""
  if not vocab_size or not source_vocab or len(new_shape) != len(old_shape):
    return False
  differ = [(n, o) for n, o in zip(new_shape, old_shape) if n != o]
  return differ == [(vocab_size, source_vocab)] and vocab_size > source_vocab


def _overwrite_leading(new: jax.Array, old: jax.Array) -> jax.Array:
  """`new` (sharded) with its leading slice along every axis replaced by `old`, computed on
  new's mesh so that no host needs the whole of `new`."""
  replicated = jax.sharding.NamedSharding(new.sharding.mesh, jax.sharding.PartitionSpec())
  update = jax.jit(lambda n, o: jax.lax.dynamic_update_slice(n, o, (0,) * n.ndim),
                   out_shardings=new.sharding)
  return update(new, jax.device_put(old, replicated))


def sharded_state_init(config, objective, model, tx, mesh, rules=None):
  """Returns (init, abstract_state, shardings).

  The state is first traced abstractly (`jax.eval_shape`), its shardings derived from the
  params' logical axis names, then `init()` materialises it already sharded: no host ever
  holds the full state. `model_state` (small: codebooks, a frozen tokenizer) is replicated.
  `rules`: the logical-axis rule table, config.sharding_rules unless given.
  """
  rules = config.sharding_rules if rules is None else rules

  def init_boxed_variables(rng):
    return objective.init_variables(model, rng)

  def init_state(key):
    params_rng, state_rng = jax.random.split(key)
    variables = nn.unbox(init_boxed_variables(params_rng))
    params = variables.pop("params")
    opt_state = tx.init(trained_params(params, tuple(config.optimizer.frozen)))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state,
                      model_state=variables, rng=state_rng,
                      counters={k: jnp.zeros((), jnp.int32) for k in COUNTERS})

  key = jax.random.PRNGKey(config.seed)
  param_shardings = sharding.logical_to_shardings(
      jax.eval_shape(init_boxed_variables, key)["params"], mesh, rules)
  abstract = jax.eval_shape(init_state, key)
  rep = sharding.replicated(mesh)
  # Optimizer moments are laid out like their params; counters are replicated.
  opt_shardings = optax.tree_map_params(
      tx, lambda _, s: s, abstract.opt_state,
      trained_params(param_shardings, tuple(config.optimizer.frozen)),
      transform_non_params=lambda _: rep)
  shardings = TrainState(step=rep, params=param_shardings, opt_state=opt_shardings,
                         model_state=jax.tree.map(lambda _: rep, abstract.model_state),
                         rng=rep, counters={k: rep for k in COUNTERS})
  abstract = jax.tree.map(lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh),
                          abstract, shardings)
  init = jax.jit(lambda: init_state(key), out_shardings=shardings)
  return init, abstract, shardings


def trained_params(params: dict, frozen: tuple[str, ...]) -> dict:
  """`params` without the top-level trees named in config.optimizer.frozen (e.g. "vit"): what
  the optimizer updates and keeps state for."""
  unknown = set(frozen) - set(params)
  if unknown:
    raise ValueError(f"config.optimizer.frozen={frozen}: {sorted(unknown)} are not top-level "
                     f"param trees of this model; expected some of {sorted(params)}.")
  return {name: tree for name, tree in params.items() if name not in frozen}


