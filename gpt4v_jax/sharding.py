"""Device mesh and the one table of logical-axis rules.

Model code names every param and activation axis logically ("embed", "mlp", "heads",
"activation_batch", ...). The rules below map those names onto mesh axes, so data parallel,
FSDP and tensor parallel are a config change (`config.mesh`, `config.sharding_rules`), never a
code change:
  data    batch split, params replicated
  fsdp    batch split too, and params/optimizer state sharded along "embed"
  tensor  Megatron-style: heads, MLP hidden and vocab split; activations gathered around them
"""
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from gpt4v_jax.metric_writer import log

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # The batch is split over both data-like axes.

DEFAULT_RULES = (
    # Activations.
    ("activation_batch", BATCH_AXES),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_mlp", "tensor"),
    ("activation_heads", "tensor"),
    ("activation_kv_heads", "tensor"),
    ("activation_head_dim", None),
    ("activation_vocab", "tensor"),
    # Params.
    ("embed", "fsdp"),
    ("vision_embed", None),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("vocab", "tensor"),
    ("norm", None),
    ("layers", None),  # The stacked block axis of scan_layers.
    ("patch", None),
    ("image_tokens", None),
    ("conv_height", None),
    ("conv_width", None),
    ("conv_in", None),
    ("conv_out", None),
)


def mesh_shape(mesh_cfg: Any, num_devices: int) -> tuple[int, ...]:
  """Resolves `config.mesh` (sizes per axis, one may be -1 = the rest) against the devices."""
  sizes = [int(mesh_cfg[a]) for a in MESH_AXES]
  if sizes.count(-1) > 1:
    raise ValueError(f"config.mesh={dict(zip(MESH_AXES, sizes))}: at most one axis may be -1.")
  if any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f"config.mesh={dict(zip(MESH_AXES, sizes))}: sizes must be >= 1 or -1.")
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if num_devices % known:
      raise ValueError(
          f"config.mesh={dict(zip(MESH_AXES, sizes))}: the fixed axes ({known} devices) do not "
          f"divide the {num_devices} available devices; pick sizes whose product divides "
          f"{num_devices} and set one axis to -1.")
    sizes[sizes.index(-1)] = num_devices // known
  if int(np.prod(sizes)) != num_devices:
    raise ValueError(
        f"config.mesh={dict(zip(MESH_AXES, sizes))} uses {int(np.prod(sizes))} devices but "
        f"{num_devices} are available; set one axis to -1 or make the product match.")
  return tuple(sizes)


def make_mesh(mesh_cfg: Any, devices: Sequence[jax.Device] | None = None) -> Mesh:
  devices = jax.devices() if devices is None else list(devices)
  shape = mesh_shape(mesh_cfg, len(devices))
  return jax.make_mesh(shape, MESH_AXES, devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def data_parallel_size(mesh: Mesh) -> int:
  return int(np.prod([mesh.shape[a] for a in BATCH_AXES]))


def check_batch_divides(global_batch: int, mesh: Mesh, key: str) -> None:
  """Batches are split over data*fsdp devices and over processes: both must divide."""
  n = data_parallel_size(mesh)
  if global_batch % n:
    raise ValueError(f"{key}={global_batch} is not divisible by the mesh's data*fsdp = {n} "
                     f"devices; use a multiple of {n}.")
  if global_batch % jax.process_count():
    raise ValueError(f"{key}={global_batch} is not divisible by the {jax.process_count()} "
                     "processes.")


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dim split over data-like axes; every other dim replicated."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def logical_to_shardings(boxed_tree: Any, mesh: Mesh, rules) -> Any:
  """Tree of `nn.LogicallyPartitioned` (abstract) params -> tree of NamedShardings.

  A param dim that its mesh axes do not divide (a ViT-S's 6 heads over 8-way `tensor`) stays
  replicated along them, and a line names it: splitting the rest of the model is better than
  refusing the mesh. (Activations need no such care: GSPMD pads uneven splits.)
  """
  specs = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed_tree), mesh, rules)
  # The boxes' values, not nn.unbox's: that would add a sharding constraint to each.
  shapes = jax.tree.map(lambda x: x.value if isinstance(x, nn.LogicallyPartitioned) else x,
                        boxed_tree, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  replicated_dims = []

  def fit(path, named: NamedSharding, value: jax.ShapeDtypeStruct) -> NamedSharding:
    spec = []
    padded = tuple(named.spec) + (None,) * (value.ndim - len(named.spec))
    for i, (size, axes) in enumerate(zip(value.shape, padded)):
      names = (axes,) if isinstance(axes, str) else tuple(axes or ())
      if size % int(np.prod([mesh.shape[a] for a in names])):
        replicated_dims.append(f"{jax.tree_util.keystr(path)} axis {i} (size {size}) over "
                               f"{'x'.join(names)}")
        axes = None
      spec.append(axes)
    return NamedSharding(mesh, P(*spec))

  out = jax.tree_util.tree_map_with_path(fit, specs, shapes)
  if replicated_dims:
    log(f"Sharding: {len(replicated_dims)} param dims do not divide their mesh axes and stay "
        f"replicated: {'; '.join(replicated_dims)}")
  return out


def to_global(local_batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
  """This process's slice of the batch -> global arrays laid out on the mesh."""
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)
