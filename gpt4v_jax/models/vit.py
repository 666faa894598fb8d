"""Vision Transformer encoder (pre-LN, learned positions).

By default: no class token, biased patch embedding, a final LayerNorm, tanh-approximated GELU
(our own models). Switches reproduce the public towers exactly (gpt4v_jax/pretrained/vision.py):
  ViT (google/vit-*):   class_token, activation="gelu", norm_eps=1e-12
  CLIP (openai/clip-*): class_token, patch_bias=False, pre_norm, final_norm=False,
                        activation="quick_gelu", norm_eps=1e-5
  SigLIP:               the defaults (head="map" adds its attention-pooling head)
"""
import re

import jax.numpy as jnp
import flax.linen as nn

from gpt4v_jax.models import attention, cnn, matmul
from gpt4v_jax.models.activations import ACTIVATIONS
from gpt4v_jax.models import remat as remat_lib

_BTE = ("activation_batch", "activation_length", "activation_embed")
_BTM = ("activation_batch", "activation_length", "activation_mlp")
_BTHD = ("activation_batch", "activation_length", "activation_heads",
         "activation_head_dim")

HEADS = (None, "map")

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


def layer_norm(dtype, name, eps=1e-6):
  """LayerNorm with float32, logically named ("norm") scale and bias."""
  return nn.LayerNorm(
      epsilon=eps,
      dtype=dtype,
      param_dtype=jnp.float32,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(),
                                              ("norm",)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                             ("norm",)),
      name=name)


def dense(features, names, dtype, name, use_bias=True):
  """Dense (biased unless told); the kernel has logical `names`, the bias names[-1:]."""
  return nn.Dense(
      features,
      use_bias=use_bias,
      dtype=dtype,
      param_dtype=jnp.float32,
      dot_general=matmul.dense_dot_general,
      kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(),
                                               names),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                             names[-1:]),
      name=name)


def mlp(x, mlp_dim, activation, dtype):
  """[batch, tokens, embed] -> [batch, tokens, embed]: Dense "mlp_in", activation, Dense
  "mlp_out", created in the calling module's scope."""
  y = dense(mlp_dim, ("embed", "mlp"), dtype, "mlp_in")(x)
  y = nn.with_logical_constraint(ACTIVATIONS[activation](y), _BTM)
  return dense(x.shape[-1], ("mlp", "embed"), dtype, "mlp_out")(y)


def out_projection(module: nn.Module, y, width: int):
  """Attention heads [batch, t, heads, head_dim] -> [batch, t, width] with `module`'s
  "out_kernel" [heads, head_dim, width] and "out_bias" [width] (created in its scope, so call
  it from a compact method), in its dtype."""
  heads, head_dim = y.shape[-2:]
  kernel = module.param(
      "out_kernel",
      nn.with_logical_partitioning(
          nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal",
                                           in_axis=(0, 1), out_axis=2),
          ("heads", "head_dim", "embed")),
      (heads, head_dim, width), jnp.float32)
  bias = module.param(
      "out_bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed",)),
      (width,), jnp.float32)
  return matmul.contract(y, kernel.astype(module.dtype), 2) + bias.astype(module.dtype)


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
    return nn.with_logical_constraint(out_projection(self, y, width), _BTE)


class Block(nn.Module):
  """Pre-LN encoder block: x + MHA(LN(x)), then x + MLP(LN(x))."""
  mlp_dim: int
  num_heads: int
  dtype: jnp.dtype = jnp.float32
  dropout: float = 0.0
  activation: str = "gelu_tanh"
  norm_eps: float = 1e-6

  @nn.compact
  def __call__(self, x, deterministic):
    """[batch, tokens, embed] -> [batch, tokens, embed]."""
    y = layer_norm(self.dtype, "ln_attn", self.norm_eps)(x)
    y = Attention(self.num_heads, self.dtype, name="attn")(y)
    x = x + nn.Dropout(self.dropout)(y, deterministic)
    x = nn.with_logical_constraint(x, _BTE)

    y = layer_norm(self.dtype, "ln_mlp", self.norm_eps)(x)
    y = mlp(y, self.mlp_dim, self.activation, self.dtype)
    x = x + nn.Dropout(self.dropout)(y, deterministic)
    return nn.with_logical_constraint(x, _BTE)


class MAPHead(nn.Module):
  """Multihead attention pooling (SigLIP's head; Lee et al. 2019, "Set Transformer"): a
  learned probe attends over the tokens, then a residual MLP on the result.

  The query, key and value projections are one "qkv_kernel" [embed, 3, heads, head_dim] (and
  "qkv_bias" [3, heads, head_dim]): SigLIP stores them as one tensor, and a leaf per
  checkpoint tensor keeps the Hugging Face round trip exact.
  """
  mlp_dim: int
  num_heads: int
  dtype: jnp.dtype = jnp.float32
  activation: str = "gelu_tanh"
  norm_eps: float = 1e-6

  @nn.compact
  def __call__(self, x):
    """[batch, tokens, embed] -> [batch, embed]."""
    b, _, width = x.shape
    heads, head_dim = self.num_heads, width // self.num_heads
    probe = self.param(
        "probe", nn.with_logical_partitioning(nn.initializers.normal(0.02), ("embed",)),
        (width,), jnp.float32)
    kernel = self.param(
        "qkv_kernel",
        nn.with_logical_partitioning(
            nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=0,
                                             out_axis=(2, 3), batch_axis=(1,)),
            ("embed", None, "heads", "head_dim")),
        (width, 3, heads, head_dim), jnp.float32).astype(self.dtype)
    bias = self.param(
        "qkv_bias",
        nn.with_logical_partitioning(nn.initializers.zeros_init(), (None, "heads", "head_dim")),
        (3, heads, head_dim), jnp.float32).astype(self.dtype)
    q = matmul.contract(probe.astype(self.dtype), kernel[:, 0]) + bias[0]  # [heads, head_dim]
    q = jnp.broadcast_to(q, (b, 1, heads, head_dim))
    k = nn.with_logical_constraint(matmul.contract(x, kernel[:, 1]) + bias[1], _BTHD)
    v = nn.with_logical_constraint(matmul.contract(x, kernel[:, 2]) + bias[2], _BTHD)
    y = attention.dot_product_attention(q, k, v)
    y = out_projection(self, y, width)
    # SigLIP's head has no residual around its attention (the probe is not added back).
    y = y + mlp(layer_norm(self.dtype, "ln", self.norm_eps)(y), self.mlp_dim, self.activation,
                self.dtype)
    return nn.with_logical_constraint(y[:, 0], _BTE[::2])


class _ScannedBlock(Block):
  """A `Block` in `nn.scan`'s (carry, output) form."""

  def __call__(self, x, deterministic):
    return super().__call__(x, deterministic), None


class ViT(nn.Module):
  """ViT encoder returning all tokens [batch, num_tokens, width] (or, with head="map", one
  pooled vector per image).

  Attributes:
    width, depth, mlp_dim, num_heads, patch_size: see `vit_variant`.
    image_size: square input resolution; fixes num_patches, (image_size // patch_size) ** 2.
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
    class_token: prepend a learned token ("cls_token", [width]) to the patches; it gets a
      position embedding too (num_tokens = num_patches + 1) and comes first in the output.
    patch_bias: whether the patch embedding ("embedding") has a bias (CLIP's has none).
    pre_norm: a LayerNorm ("ln_pre") on the embedded tokens, before the blocks (CLIP).
    final_norm: a LayerNorm ("ln_final") after the blocks (CLIP's last_hidden_state has none).
    activation: the MLPs' nonlinearity, a key of ACTIVATIONS.
    norm_eps: every LayerNorm's epsilon.
    head: None (all tokens out) or "map" (SigLIP's attention pooling, `MAPHead` "head", on
      the final tokens: the output is [batch, width]).
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
  class_token: bool = False
  patch_bias: bool = True
  pre_norm: bool = False
  final_norm: bool = True
  activation: str = "gelu_tanh"
  norm_eps: float = 1e-6
  head: str | None = None

  @property
  def num_patches(self):
    return (self.image_size // self.patch_size) ** 2

  @property
  def num_tokens(self):
    """Tokens per image through the blocks and out (without a head): patches (+ class)."""
    return self.num_patches + int(self.class_token)

  def forward_flops(self) -> float:
    """Matmul and conv FLOPs of one image's forward pass (2 per multiply-add; norms,
    activations and softmax are left out, as MFU conventions do)."""
    n, w = self.num_patches, self.width
    t = self.num_tokens
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
    block = 2 * t * (4 * w * w + 2 * w * self.mlp_dim) + 2 * 2 * t * t * w  # + attention.
    # The pooling head: keys and values of every token, one query, its output and MLP.
    head = 2 * (2 * t + 2) * w * w + 2 * 2 * t * w + 2 * 2 * w * self.mlp_dim if self.head else 0
    return stem + 2 * n * stem_out * w + self.depth * block + head

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
    """[batch, H, W, 3] normalised images -> [batch, num_tokens, width] ([batch, width] with
    head="map")."""
    if self.activation not in ACTIVATIONS:
      raise ValueError(f"ViT.activation={self.activation!r}: expected one of "
                       f"{tuple(ACTIVATIONS)}.")
    if self.head not in HEADS:
      raise ValueError(f"ViT.head={self.head!r}: expected one of {HEADS}.")
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
    x = dense(self.width, ("patch", "embed"), self.dtype, "embedding", self.patch_bias)(x)
    if self.class_token:
      cls = self.param(
          "cls_token", nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed",)),
          (self.width,), jnp.float32)
      cls = jnp.broadcast_to(cls.astype(x.dtype), (b, 1, self.width))
      x = jnp.concatenate([cls, x], axis=1)
    pos = self.param(
        "pos_embedding",
        nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                     ("image_tokens", "embed")),
        (self.num_tokens, self.width), jnp.float32)
    x = x + pos.astype(self.dtype)[None]
    x = nn.with_logical_constraint(x, _BTE)
    if self.pre_norm:
      x = layer_norm(self.dtype, "ln_pre", self.norm_eps)(x)
    x = nn.Dropout(self.dropout)(x, deterministic)

    # static_argnums counts `self` as 0, so 2 is `deterministic`.
    args = (self.mlp_dim, self.num_heads, self.dtype, self.dropout, self.activation,
            self.norm_eps)
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
    if self.final_norm:
      x = layer_norm(self.dtype, "ln_final", self.norm_eps)(x)
    if self.head == "map":
      x = MAPHead(self.mlp_dim, self.num_heads, self.dtype, self.activation, self.norm_eps,
                  name="head")(x)
    return x
