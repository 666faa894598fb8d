"""Vision Transformer encoder (pre-LN, no class token, learned positions)."""
import re

import jax
import jax.numpy as jnp
import flax.linen as nn

from gpt4v_jax.models import attention, cnn, matmul
from gpt4v_jax.models import remat as remat_lib

_BTE = ("activation_batch", "activation_length", "activation_embed")
_BTM = ("activation_batch", "activation_length", "activation_mlp")
_BTHD = ("activation_batch", "activation_length", "activation_heads",
         "activation_head_dim")

# name -> (width, depth, mlp_dim, num_heads). "nano" and "mu" are CPU-sized.
_VARIANTS = {
    "nano": (64, 2, 256, 2),
    "mu": (128, 4, 512, 4),
    "Ti": (192, 12, 768, 3),
    "S": (384, 12, 1536, 6),
    "B": (768, 12, 3072, 12),
    "L": (1024, 24, 4096, 16),
}


def vit_variant(name):
  """Parses "B/16"-style names into ViT keyword arguments.

  Returns:
    dict(width, depth, mlp_dim, num_heads, patch_size).
  """
  match = re.fullmatch(r"(\w+)/(\d+)", name)
  if not match or match.group(1) not in _VARIANTS:
    raise ValueError(f"Unknown ViT variant {name!r}; expected '<size>/<patch>' "
                     f"with size in {sorted(_VARIANTS)}.")
  width, depth, mlp_dim, num_heads = _VARIANTS[match.group(1)]
  return dict(width=width, depth=depth, mlp_dim=mlp_dim, num_heads=num_heads,
              patch_size=int(match.group(2)))


def layer_norm(dtype, name):
  """LayerNorm with float32, logically named ("norm") scale and bias."""
  return nn.LayerNorm(
      dtype=dtype,
      param_dtype=jnp.float32,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(),
                                              ("norm",)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                             ("norm",)),
      name=name)


def dense(features, names, dtype, name):
  """Biased Dense; the kernel has logical `names`, the bias names[-1:]."""
  return nn.Dense(
      features,
      dtype=dtype,
      param_dtype=jnp.float32,
      dot_general=matmul.dense_dot_general,
      kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(),
                                               names),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                             names[-1:]),
      name=name)


class Attention(nn.Module):
  """Full (bidirectional) multi-head self-attention with biases."""
  num_heads: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    """[batch, tokens, embed] -> [batch, tokens, embed]."""
    width = x.shape[-1]
    head_dim = width // self.num_heads

    def proj(name):
      kernel = self.param(
          f"{name}_kernel",
          nn.with_logical_partitioning(
              nn.initializers.variance_scaling(
                  1.0, "fan_in", "truncated_normal", in_axis=0,
                  out_axis=(1, 2)),
              ("embed", "heads", "head_dim")),
          (width, self.num_heads, head_dim), jnp.float32)
      bias = self.param(
          f"{name}_bias",
          nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                       ("heads", "head_dim")),
          (self.num_heads, head_dim), jnp.float32)
      y = matmul.contract(x, kernel.astype(self.dtype))
      return nn.with_logical_constraint(y + bias.astype(self.dtype), _BTHD)

    q, k, v = proj("query"), proj("key"), proj("value")
    y = attention.dot_product_attention(q, k, v)
    y = nn.with_logical_constraint(y, _BTHD)
    out_kernel = self.param(
        "out_kernel",
        nn.with_logical_partitioning(
            nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal",
                                             in_axis=(0, 1), out_axis=2),
            ("heads", "head_dim", "embed")),
        (self.num_heads, head_dim, width), jnp.float32)
    out_bias = self.param(
        "out_bias",
        nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed",)),
        (width,), jnp.float32)
    y = matmul.contract(y, out_kernel.astype(self.dtype), 2)
    return nn.with_logical_constraint(y + out_bias.astype(self.dtype), _BTE)


class Block(nn.Module):
  """Pre-LN encoder block: x + MHA(LN(x)), then x + MLP(LN(x))."""
  mlp_dim: int
  num_heads: int
  dtype: jnp.dtype = jnp.float32
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x, deterministic):
    """[batch, tokens, embed] -> [batch, tokens, embed]."""
    width = x.shape[-1]
    y = layer_norm(self.dtype, "ln_attn")(x)
    y = Attention(self.num_heads, self.dtype, name="attn")(y)
    x = x + nn.Dropout(self.dropout)(y, deterministic)
    x = nn.with_logical_constraint(x, _BTE)

    y = layer_norm(self.dtype, "ln_mlp")(x)
    y = dense(self.mlp_dim, ("embed", "mlp"), self.dtype, "mlp_in")(y)
    y = nn.with_logical_constraint(nn.gelu(y), _BTM)
    y = dense(width, ("mlp", "embed"), self.dtype, "mlp_out")(y)
    x = x + nn.Dropout(self.dropout)(y, deterministic)
    return nn.with_logical_constraint(x, _BTE)


class _ScannedBlock(Block):
  """A `Block` in `nn.scan`'s (carry, output) form."""

  def __call__(self, x, deterministic):
    return super().__call__(x, deterministic), None


class ViT(nn.Module):
  """ViT encoder returning all patch tokens (no pooling, no class token).

  Attributes:
    width, depth, mlp_dim, num_heads, patch_size: see `vit_variant`.
    image_size: square input resolution; fixes the number of position
      embeddings, (image_size // patch_size) ** 2.
    remat: "none", "full" or "save_dots": see `models/remat.py`.
    scan_layers: run the blocks as one `nn.scan` over stacked params, see `Decoder`.
    dtype: compute dtype; params stay float32.
    dropout: residual dropout rate.
    stem: "patch" (the standard linear patch embedding), "conv" (stride-2 3x3
      convolutions down to the same token grid, then the linear embedding;
      Xiao et al. 2021, "Early convolutions help transformers see better"), or
      "resnet" (residual conv stages, `cnn.ResNetStem`, then the linear
      embedding: big_vision's hybrid "R+ViT"; with depth 0 the encoder is a
      plain CNN).
    stem_blocks: residual blocks per stage of the "resnet" stem.
  """
  width: int
  depth: int
  mlp_dim: int
  num_heads: int
  patch_size: int
  image_size: int = 64
  stem: str = "patch"
  stem_blocks: int = 1
  remat: str = "none"
  scan_layers: bool = False
  dtype: jnp.dtype = jnp.float32
  dropout: float = 0.0

  @property
  def num_patches(self):
    return (self.image_size // self.patch_size) ** 2

  def forward_flops(self) -> float:
    """Matmul and conv FLOPs of one image's forward pass (2 per multiply-add; norms,
    activations and softmax are left out, as MFU conventions do)."""
    n, w = self.num_patches, self.width
    if self.stem == "patch":
      stem, stem_out = 0.0, self.patch_size**2 * 3
    elif self.stem == "conv":
      num_layers = self.patch_size.bit_length() - 1
      stem, cin = 0.0, 3
      for i in range(num_layers):
        cout, grid = w // 2 ** (num_layers - i), self.image_size // 2 ** (i + 1)
        stem += 2 * grid**2 * 9 * cin * cout
        cin = cout
      stem_out = cin
    else:
      stem = cnn.ResNetStem(self.patch_size, w, self.stem_blocks, parent=None).forward_flops(
          self.image_size)
      stem_out = w
    block = 2 * n * (4 * w * w + 2 * w * self.mlp_dim) + 2 * 2 * n * n * w  # + attention.
    return stem + 2 * n * stem_out * w + self.depth * block

  def _conv_stem(self, images):
    """[batch, H, W, 3] -> [batch, (H/p)*(W/p), channels]: log2(p) stride-2 convs.

    Channels double each layer and end at width/2, so the final Dense mixes
    them up to `width`.
    """
    num_layers = self.patch_size.bit_length() - 1
    if 2 ** num_layers != self.patch_size:
      raise ValueError(f"The conv stem needs a power-of-two patch size, got {self.patch_size}.")
    x = images
    for i in range(num_layers):
      features = self.width // 2 ** (num_layers - i)
      x = nn.Conv(features, (3, 3), strides=(2, 2), padding="SAME", dtype=self.dtype,
                  param_dtype=jnp.float32,
                  kernel_init=nn.with_logical_partitioning(
                      nn.initializers.lecun_normal(),
                      ("conv_height", "conv_width", "conv_in", "conv_out")),
                  bias_init=nn.with_logical_partitioning(
                      nn.initializers.zeros_init(), ("conv_out",)),
                  name=f"stem_conv_{i}")(x)
      x = nn.gelu(x)
    b, gh, gw, ch = x.shape
    return x.reshape(b, gh * gw, ch)

  @nn.compact
  def __call__(self, images, deterministic=True):
    """[batch, H, W, 3] float in [-1, 1] -> [batch, num_patches, width]."""
    b, h, w, c = images.shape
    p = self.patch_size
    if h != self.image_size or w != self.image_size or h % p:
      raise ValueError(f"Expected {self.image_size}x{self.image_size} images "
                       f"divisible into {p}x{p} patches, got {h}x{w}.")
    if self.stem == "conv":
      x = self._conv_stem(images.astype(self.dtype))
    elif self.stem == "resnet":
      x = cnn.ResNetStem(p, self.width, self.stem_blocks, self.dtype, name="stem")(images)
      x = x.reshape(b, -1, x.shape[-1])
    elif self.stem == "patch":
      # Non-overlapping patches flattened row-major to [batch, n, p*p*3]; a
      # Dense on them is the same as a stride-p convolution.
      x = images.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
      x = x.reshape(b, (h // p) * (w // p), p * p * c).astype(self.dtype)
    else:
      raise ValueError(f"Unknown ViT stem {self.stem!r}; expected 'patch', 'conv' or "
                       "'resnet'.")
    x = dense(self.width, ("patch", "embed"), self.dtype, "embedding")(x)
    pos = self.param(
        "pos_embedding",
        nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                     ("image_tokens", "embed")),
        (self.num_patches, self.width), jnp.float32)
    x = x + pos.astype(self.dtype)[None]
    x = nn.with_logical_constraint(x, _BTE)
    x = nn.Dropout(self.dropout)(x, deterministic)

    # static_argnums counts `self` as 0, so 2 is `deterministic`.
    args = (self.mlp_dim, self.num_heads, self.dtype, self.dropout)
    if self.scan_layers:
      block = remat_lib.remat(_ScannedBlock, self.remat, static_argnums=(2,))
      x, _ = nn.scan(block, variable_axes={"params": 0},
                     split_rngs={"params": True, "dropout": True}, in_axes=nn.broadcast,
                     length=self.depth, metadata_params={nn.PARTITION_NAME: "layers"},
                     )(*args, name="blocks")(x, deterministic)
    else:
      block = remat_lib.remat(Block, self.remat, static_argnums=(2,))
      for i in range(self.depth):
        x = block(*args, name=f"block_{i}")(x, deterministic)
    return layer_norm(self.dtype, "ln_final")(x)
