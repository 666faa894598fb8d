"""ResNet-style convolutional encoder that outputs a grid of tokens.

Used two ways: as the stem of a hybrid ViT (`ViT(stem="resnet")`, big_vision's "R+ViT"), and
as the whole vision encoder when the ViT has no blocks. Convolutions share their weights over
positions, so a shape is recognised wherever it sits; a linear patch embedding must learn it
separately at every offset inside a patch, which costs many more examples on small data.

Norms are GroupNorm: no batch statistics, so the module stays a pure function of its params
and the batch can be sharded freely.
"""
import jax.numpy as jnp
import flax.linen as nn

_CONV_NAMES = ("conv_height", "conv_width", "conv_in", "conv_out")


def _conv(features, kernel, stride, dtype, name):
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding="SAME",
                 use_bias=False, dtype=dtype, param_dtype=jnp.float32,
                 kernel_init=nn.with_logical_partitioning(
                     nn.initializers.variance_scaling(2.0, "fan_in", "truncated_normal"),
                     _CONV_NAMES),
                 name=name)


def _group_norm(features, dtype, name, zero_scale=False):
  init = nn.initializers.zeros_init() if zero_scale else nn.initializers.ones_init()
  return nn.GroupNorm(num_groups=min(8, features), dtype=dtype, param_dtype=jnp.float32,
                      scale_init=nn.with_logical_partitioning(init, ("conv_out",)),
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                             ("conv_out",)),
                      name=name)


class ResidualBlock(nn.Module):
  """x + GN(conv3x3(GELU(GN(conv3x3(x))))), with a strided 1x1 projection when the shape changes.

  The last norm's scale starts at zero, so every block starts as the identity (Goyal et al.
  2017): deep stacks train from the first step without warmup tricks.
  """
  features: int
  stride: int = 1
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    """[batch, H, W, C] -> [batch, H/stride, W/stride, features]."""
    y = _conv(self.features, 3, self.stride, self.dtype, "conv1")(x)
    y = nn.gelu(_group_norm(self.features, self.dtype, "norm1")(y))
    y = _conv(self.features, 3, 1, self.dtype, "conv2")(y)
    y = _group_norm(self.features, self.dtype, "norm2", zero_scale=True)(y)
    if self.stride != 1 or x.shape[-1] != self.features:
      x = _conv(self.features, 1, self.stride, self.dtype, "shortcut")(x)
      x = _group_norm(self.features, self.dtype, "shortcut_norm")(x)
    return nn.gelu(x + y)


class ResNetStem(nn.Module):
  """A 3x3 conv at full resolution, then log2(stride) stages that each halve the grid.

  Attributes:
    stride: total downsampling, a power of two (8: a 64x64 image becomes an 8x8 grid).
    features: channels of the last stage; each earlier stage has half the next one's.
    blocks_per_stage: residual blocks per stage (the first one strides).
    dtype: compute dtype; params stay float32.
  """
  stride: int
  features: int
  blocks_per_stage: int = 1
  dtype: jnp.dtype = jnp.float32

  def forward_flops(self, image_size: int) -> float:
    """Conv FLOPs of one image's forward pass (2 per multiply-add)."""
    num_stages = self.stride.bit_length() - 1
    first = max(self.features // 2 ** num_stages, 8)
    flops, cin, grid = 2 * image_size**2 * 9 * 3 * first, first, image_size
    for stage in range(num_stages):
      features = max(self.features // 2 ** (num_stages - stage - 1), 8)
      grid //= 2
      for block in range(self.blocks_per_stage):
        flops += 2 * grid**2 * 9 * (cin + features) * features  # conv1, conv2.
        if block == 0:  # The strided block; its shortcut is a 1x1 conv.
          flops += 2 * grid**2 * cin * features
        cin = features
    return flops

  @nn.compact
  def __call__(self, images):
    """[batch, H, W, 3] -> [batch, H/stride, W/stride, features]."""
    num_stages = self.stride.bit_length() - 1
    if 2 ** num_stages != self.stride:
      raise ValueError(f"The ResNet stem needs a power-of-two stride, got {self.stride}.")
    first = max(self.features // 2 ** num_stages, 8)
    x = _conv(first, 3, 1, self.dtype, "conv_in")(images.astype(self.dtype))
    x = nn.gelu(_group_norm(first, self.dtype, "norm_in")(x))
    for stage in range(num_stages):
      features = max(self.features // 2 ** (num_stages - stage - 1), 8)
      for block in range(self.blocks_per_stage):
        x = ResidualBlock(features, 2 if block == 0 else 1, self.dtype,
                          name=f"stage{stage}_block{block}")(x)
    return x
