"""CE2P-style human parser: backbone -> PSP context -> decoder -> heads.

The parser holds one 1x1 classification head per label domain. It returns
``(logits, aux)``: ``logits[domain]`` is ``[B, h, w, C_domain]`` at stride 4
for every sample and every head, and ``aux`` holds named intermediate
features that the SST modules and auxiliary losses read.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from sst_jax.models import fast_paths
from sst_jax.models import layers
from sst_jax.models import resnet

ModuleDef = Any


class ConvBNReLU(nn.Module):
  features: int
  kernel: int = 1
  dtype: Any = jnp.float32
  conv: ModuleDef = layers.conv

  @nn.compact
  def __call__(self, x, train: bool):
    x = self.conv(self.features, (self.kernel, self.kernel),
                  padding=self.kernel // 2, dtype=self.dtype, name='conv')(x)
    x = resnet.norm_layer(train, self.dtype, 'bn')(x)
    return nn.relu(x)


class ConcatConvBNReLU(nn.Module):
  """``ConvBNReLU(features, 3)`` of a concatenation with upsampled inputs.

  ``inputs`` are concatenated in order after bilinearly resizing every one
  but ``inputs[full_index]`` to its size. ``concat_conv`` computes the
  convolution (``layers.ResizeConcatConv`` literally, or
  ``fast_paths.FactoredConcatConv``: the small inputs' share at their own
  size): same parameters and outputs either way.
  """
  features: int
  full_index: int = 0
  dtype: Any = jnp.float32
  concat_conv: ModuleDef = layers.ResizeConcatConv

  @nn.compact
  def __call__(self, inputs, train: bool):
    x = self.concat_conv(self.features, 3, 1, self.full_index,
                         dtype=self.dtype, name='conv')(inputs)
    x = resnet.norm_layer(train, self.dtype, 'bn')(x)
    return nn.relu(x)


class PyramidPooling(nn.Module):
  """PSP context: pooled bins -> 1x1 conv -> upsample, concat, 3x3 conv."""
  features: int = 512
  bins: Sequence[int] = (1, 2, 3, 6)
  dtype: Any = jnp.float32
  concat_conv: ModuleDef = layers.ResizeConcatConv

  @nn.compact
  def __call__(self, x, train: bool):
    pooled = [
        ConvBNReLU(self.features, 1, self.dtype, name=f'stage{b}')(
            layers.adaptive_avg_pool(x, b), train) for b in self.bins
    ]
    return ConcatConvBNReLU(self.features, 0, self.dtype, self.concat_conv,
                            name='bottleneck')([x, *pooled], train)


class Decoder(nn.Module):
  """Fuses the context with stride-4 features (CE2P/DeepLabv3+ decoder)."""
  features: int = 256
  skip_features: int = 48
  dtype: Any = jnp.float32
  conv: ModuleDef = layers.conv
  concat_conv: ModuleDef = layers.ResizeConcatConv

  @nn.compact
  def __call__(self, context, skip, train: bool):
    context = ConvBNReLU(self.features, 1, self.dtype, name='context')(
        context, train)
    skip = ConvBNReLU(self.skip_features, 1, self.dtype, name='skip')(
        skip, train)
    x = ConcatConvBNReLU(self.features, 1, self.dtype, self.concat_conv,
                         name='fuse1')([context, skip], train)
    return ConvBNReLU(self.features, 3, self.dtype, self.conv,
                      name='fuse2')(x, train), x


class EdgeBranch(nn.Module):
  """CE2P edge branch: 2-way edge logits from res2..res4 at stride 4."""
  features: int = 256
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, feats, train: bool):
    size = feats['res2'].shape[1:3]
    outs = []
    for name in ('res2', 'res3', 'res4'):
      y = ConvBNReLU(self.features, 1, self.dtype, name=f'{name}_conv')(
          feats[name], train)
      outs.append(layers.resize_bilinear(y, size))
    x = jnp.concatenate(outs, axis=-1)
    return layers.conv(2, (1, 1), use_bias=True, dtype=self.dtype,
                       name='edge_head')(x), x


class ParsingNetwork(nn.Module):
  """Multi-head human parsing network.

  Attributes:
    num_classes: ``{domain_name: C}``, one head per domain, in config order.
    backbone: a name from ``resnet.RESNET_SPECS``.
    width: backbone base width (64 = standard).
    output_stride: backbone output stride, 8 or 16.
    deep_stem: three-conv stem.
    dilate_first_block: the first block of a dilated stage is dilated too
      (SCHP's layout; no effect on parameter shapes).
    context_features, decoder_features: channel widths.
    psp_bins: PSP pooling grid sizes.
    edge: add the CE2P edge branch (``aux['edge']`` logits).
    dtype: computation dtype; heads produce float32 logits.
    implementations: what the convolutions and the backbone's residual
      ReLUs run (``fast_paths.Implementations``): the same parameters and
      outputs with any. The default is the plain forms; the entry points
      pass the backend's (``recipe.speed_paths()``).
  """
  num_classes: dict[str, int]
  backbone: str = 'resnet18'
  width: int = 64
  output_stride: int = 8
  deep_stem: bool = False
  dilate_first_block: bool = False
  context_features: int = 512
  decoder_features: int = 256
  psp_bins: Sequence[int] = (1, 2, 3, 6)
  edge: bool = False
  dtype: Any = jnp.float32
  implementations: fast_paths.Implementations = fast_paths.Implementations()

  @nn.compact
  def __call__(self, image, train: bool = False, heads=None):
    """Runs the parser.

    Args:
      image: ``[B, H, W, 3]`` normalized image.
      train: BatchNorm in training mode (batch statistics, updates stats).
      heads: optional subset of domain names to compute logits for.

    Returns:
      ``(logits, aux)`` as described in the module docstring.
    """
    impl = self.implementations
    feats = backbone_of(self, name='backbone')(image, train)
    context = PyramidPooling(self.context_features, self.psp_bins,
                             self.dtype, impl.concat_conv,
                             name='context')(feats['res5'], train)
    decoder, fuse1 = Decoder(self.decoder_features, dtype=self.dtype,
                             conv=impl.conv, concat_conv=impl.concat_conv,
                             name='decoder')(context, feats['res2'], train)
    aux = {'res2': feats['res2'], 'res5': feats['res5'], 'context': context,
           'decoder_fuse1': fuse1, 'decoder': decoder}
    if self.edge:
      aux['edge'], edge_feat = EdgeBranch(dtype=self.dtype, name='edge')(
          feats, train)
      decoder = jnp.concatenate([decoder, edge_feat], axis=-1)
      decoder = ConvBNReLU(self.decoder_features, 1, self.dtype,
                           name='fusion')(decoder, train)
      aux['decoder'] = decoder
    names = self.num_classes if heads is None else heads
    logits = {
        name: layers.conv(self.num_classes[name], (1, 1), use_bias=True,
                          dtype=self.dtype, name=f'head_{name}')(
                              decoder).astype(jnp.float32)
        for name in names
    }
    return logits, aux


def backbone_of(parser: ParsingNetwork, name: str | None = None) -> resnet.ResNet:
  """The ResNet that ``parser`` runs, with the same settings.

  Its variables are ``variables['params']['backbone']`` and
  ``variables['batch_stats']['backbone']`` of the parser's, so a trained
  parser's backbone can run alone or inside another Flax module
  (``docs/reuse.md``).

  Args:
    parser: a :class:`ParsingNetwork`.
    name: the submodule name (inside a compact method) or None.

  Returns:
    a :class:`resnet.ResNet` returning ``{'stem', 'res2', ..., 'res5'}``.
  """
  return resnet.make_resnet(
      parser.backbone, width=parser.width,
      output_stride=parser.output_stride, deep_stem=parser.deep_stem,
      dilate_first_block=parser.dilate_first_block, dtype=parser.dtype,
      conv=parser.implementations.conv,
      residual_act=parser.implementations.residual_act, name=name)


def make_parser(model_config, domain_names: Sequence[str],
                num_classes: Sequence[int], dtype=jnp.float32,
                implementations: fast_paths.Implementations | None = None
                ) -> ParsingNetwork:
  """Builds the parser from a ``config.model`` ConfigDict.

  Args:
    model_config: ``config.model``.
    domain_names: one head per name, in order.
    num_classes: the heads' class counts.
    dtype: the computation dtype.
    implementations: what the parser runs (``fast_paths``); None: the
      plain forms. Entry points pass the backend's speed paths
      (``recipe.speed_paths()``).

  Returns:
    a :class:`ParsingNetwork`.
  """
  if implementations is None:
    implementations = fast_paths.Implementations()
  return ParsingNetwork(
      num_classes=dict(zip(domain_names, num_classes)),
      backbone=model_config.backbone, width=model_config.width,
      output_stride=model_config.output_stride,
      deep_stem=model_config.deep_stem,
      dilate_first_block=model_config.dilate_first_block,
      context_features=model_config.context_features,
      decoder_features=model_config.decoder_features,
      psp_bins=tuple(model_config.psp_bins),
      edge=model_config.edge,
      dtype=dtype,
      implementations=implementations)
