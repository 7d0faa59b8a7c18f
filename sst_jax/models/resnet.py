"""ResNet-18/34/50/101 backbones with dilation for dense prediction.

Parameter names follow torchvision (``conv1``, ``bn1``, ``layer1_0`` ...,
``downsample_conv``) so that ImageNet and SCHP weights map one-to-one.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sst_jax.models import layers

ModuleDef = Any

# name -> (block, stage sizes)
RESNET_SPECS = {
    'resnet_tiny': ('basic', (1, 1, 1, 1)),
    'resnet18': ('basic', (2, 2, 2, 2)),
    'resnet34': ('basic', (3, 4, 6, 3)),
    'resnet50': ('bottleneck', (3, 4, 6, 3)),
    'resnet101': ('bottleneck', (3, 4, 23, 3)),
}


def norm_layer(train: bool, dtype: Any, name: str) -> nn.BatchNorm:
  # Under jit with the batch sharded over devices, the batch mean is a global
  # reduction: this is synchronized BatchNorm with no extra code.
  return nn.BatchNorm(use_running_average=not train, momentum=0.9,
                      epsilon=1e-5, dtype=dtype, name=name)


class BasicBlock(nn.Module):
  """3x3 -> 3x3 residual block (ResNet-18/34)."""
  features: int
  strides: int = 1
  dilation: int = 1
  conv: ModuleDef = nn.Conv
  dtype: Any = jnp.float32
  residual_act: Callable = jax.nn.relu
  expansion = 1

  @nn.compact
  def __call__(self, x, train: bool):
    d = self.dilation
    y = self.conv(self.features, (3, 3), self.strides, padding=d,
                  kernel_dilation=d, name='conv1')(x)
    y = nn.relu(norm_layer(train, self.dtype, 'bn1')(y))
    y = self.conv(self.features, (3, 3), padding=d, kernel_dilation=d,
                  name='conv2')(y)
    y = norm_layer(train, self.dtype, 'bn2')(y)
    if x.shape[-1] != self.features or self.strides != 1:
      x = self.conv(self.features, (1, 1), self.strides,
                    name='downsample_conv')(x)
      x = norm_layer(train, self.dtype, 'downsample_bn')(x)
    return self.residual_act(x + y)


class Bottleneck(nn.Module):
  """1x1 -> 3x3 -> 1x1 residual block (ResNet-50/101), stride on the 3x3."""
  features: int
  strides: int = 1
  dilation: int = 1
  conv: ModuleDef = nn.Conv
  dtype: Any = jnp.float32
  residual_act: Callable = jax.nn.relu
  expansion = 4

  @nn.compact
  def __call__(self, x, train: bool):
    d = self.dilation
    out = self.features * self.expansion
    y = self.conv(self.features, (1, 1), name='conv1')(x)
    y = nn.relu(norm_layer(train, self.dtype, 'bn1')(y))
    y = self.conv(self.features, (3, 3), self.strides, padding=d,
                  kernel_dilation=d, name='conv2')(y)
    y = nn.relu(norm_layer(train, self.dtype, 'bn2')(y))
    y = self.conv(out, (1, 1), name='conv3')(y)
    y = norm_layer(train, self.dtype, 'bn3')(y)
    if x.shape[-1] != out or self.strides != 1:
      x = self.conv(out, (1, 1), self.strides, name='downsample_conv')(x)
      x = norm_layer(train, self.dtype, 'downsample_bn')(x)
    return self.residual_act(x + y)


def stage_strides(output_stride: int) -> tuple[tuple[int, int], ...]:
  """(stride, dilation) of the first block of layer1..layer4."""
  if output_stride == 32:
    return ((1, 1), (2, 1), (2, 1), (2, 1))
  if output_stride == 16:
    return ((1, 1), (2, 1), (2, 1), (1, 2))
  if output_stride == 8:
    return ((1, 1), (2, 1), (1, 2), (1, 4))
  raise ValueError(f'output_stride must be 8, 16 or 32, got {output_stride}')


class ResNet(nn.Module):
  """ResNet backbone returning a dict of stage features.

  Attributes:
    stage_sizes: blocks per stage.
    block: ``'basic'`` or ``'bottleneck'``.
    width: channels of the first stage (64 in the standard nets; smaller
      values give narrow variants for tests and CPU runs).
    output_stride: 8, 16 or 32; strides of the last stages become dilations.
    deep_stem: three 3x3 convs instead of one 7x7 (SCHP / PSPNet stem).
    dtype: computation dtype (parameters stay float32).
    dilate_first_block: if True, the first block of a dilated stage uses the
      stage's full dilation too (SCHP/PSPNet ``multi_grid=(1, 1, 1)``
      layout); the default keeps the torchvision/DeepLab convention.
    conv: builds the convolutions, with ``layers.conv``'s arguments
      (``layers.conv`` or ``fast_paths.conv``: same parameters and outputs).
    residual_act: the ReLU after each residual sum (``jax.nn.relu``, or
      ``fast_paths.relu_as_select``: the same function).
  """
  stage_sizes: Sequence[int]
  block: str = 'basic'
  width: int = 64
  output_stride: int = 8
  deep_stem: bool = False
  dtype: Any = jnp.float32
  dilate_first_block: bool = False
  conv: ModuleDef = layers.conv
  residual_act: Callable = jax.nn.relu

  @nn.compact
  def __call__(self, x, train: bool = False) -> dict[str, jnp.ndarray]:
    conv = functools.partial(self.conv, use_bias=False, dtype=self.dtype)
    block_cls = BasicBlock if self.block == 'basic' else Bottleneck
    x = x.astype(self.dtype)
    if self.deep_stem:
      for i, (ch, s) in enumerate(((self.width, 2), (self.width, 1),
                                   (self.width * 2, 1))):
        x = conv(ch, (3, 3), s, padding=1, name=f'conv{i + 1}')(x)
        x = nn.relu(norm_layer(train, self.dtype, f'bn{i + 1}')(x))
    else:
      x = conv(self.width, (7, 7), 2, padding=3, name='conv1')(x)
      x = nn.relu(norm_layer(train, self.dtype, 'bn1')(x))
    feats = {'stem': x}
    x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    for i, (n, (stride, dilation)) in enumerate(
        zip(self.stage_sizes, stage_strides(self.output_stride))):
      for j in range(n):
        # As in torchvision/DeepLab: the first block of a dilated stage keeps
        # the previous dilation on its strided conv; later blocks dilate.
        # SCHP (dilate_first_block) dilates every block of the stage.
        first = j == 0 and not self.dilate_first_block
        d = max(dilation // 2, 1) if first else dilation
        x = block_cls(self.width * 2**i, strides=stride if j == 0 else 1,
                      dilation=d, conv=conv, dtype=self.dtype,
                      residual_act=self.residual_act,
                      name=f'layer{i + 1}_{j}')(x, train)
      feats[f'res{i + 2}'] = x
    return feats


def make_resnet(arch: str, **kwargs) -> ResNet:
  """Builds a registered ResNet by name (``resnet18`` ... ``resnet101``)."""
  if arch not in RESNET_SPECS:
    raise ValueError(f"unknown backbone {arch!r}; known: "
                     f'{", ".join(RESNET_SPECS)}')
  block, sizes = RESNET_SPECS[arch]
  return ResNet(stage_sizes=sizes, block=block, **kwargs)
