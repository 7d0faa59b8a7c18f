"""AugmentCE2P, the Self-Correction Human Parsing (SCHP) network, in Flax.

A module-for-module mirror of ``networks/AugmentCE2P.py`` in
github.com/PeikeLi/Self-Correction-Human-Parsing (Li et al., "Self-Correction
for Human Parsing", TPAMI 2020), so that the public SCHP checkpoints (LIP,
ATR, PASCAL-Person-Part) load one-to-one through
``sst_jax.models.pretrained.import_schp``:

* backbone: ResNet-101 with a deep stem (three 3x3 convs), layer3 at stride 2
  and layer4 at stride 1 with dilation 2 in *every* block (output stride 16).
  The backbone uses plain ReLU.
* ``context_encoding``: PSP module; its pooled branches come *first* in the
  concatenation and the backbone feature last, as in SCHP.
* ``edge``: 1x1 conv + ABN on res2/res3/res4, one shared 3x3 ``conv4`` giving
  2-way edge logits per level, ``conv5`` fusing the three.
* ``decoder``: context 1x1 -> upsample, res2 1x1 -> 48, two 1x1 convs,
  classifier.
* ``fushion`` (sic): decoder feature + edge features -> 1x1 -> dropout ->
  classifier. Its output is the parsing used at inference.

Every normalization layer of SCHP is an InPlace-ABN: in the backbone without
activation (then a plain ReLU), in the heads followed by LeakyReLU(0.01).
InPlace-ABN scales by ``|weight| + eps``; here each is a plain Flax BatchNorm
(eps 1e-5) whose scale ``import_schp`` sets to ``|weight| + eps``
(``pretrained.inplace_abn_scale``), which computes the same. All upsampling
uses ``align_corners=True``.

The module returns ``(logits, aux)`` in the convention of
``sst_jax.models.parser.ParsingNetwork``: ``logits = {domain:
fusion_logits}`` at stride 4 in float32.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from sst_jax.models import fast_paths
from sst_jax.models import layers
from sst_jax.models import resnet

# InPlace-ABN's default activation in SCHP.
LEAKY_SLOPE = 0.01


class ConvABN(nn.Module):
  """Conv (no bias) -> BatchNorm -> LeakyReLU(0.01): conv + SCHP InPlaceABN.

  The BatchNorm's scale holds InPlace-ABN's ``|weight| + eps`` (see
  ``pretrained.inplace_abn_scale``).
  """
  features: int
  kernel: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Conv(self.features, (self.kernel, self.kernel),
                padding=self.kernel // 2, use_bias=False, dtype=self.dtype,
                name='conv')(x)
    x = resnet.norm_layer(train, self.dtype, 'bn')(x)
    return nn.leaky_relu(x, LEAKY_SLOPE)


class PSPModule(nn.Module):
  """SCHP ``PSPModule``: pooled 1x1 branches, then a 3x3 bottleneck."""
  features: int = 512
  bins: Sequence[int] = (1, 2, 3, 6)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    size = x.shape[1:3]
    priors = []
    for i, b in enumerate(self.bins):
      y = layers.adaptive_avg_pool(x, b)
      y = ConvABN(self.features, 1, self.dtype, name=f'stage_{i}')(y, train)
      priors.append(layers.resize_bilinear(y, size, align_corners=True))
    # SCHP concatenates the pooled branches first and the input last; the
    # bottleneck kernel's input channels follow that order.
    x = jnp.concatenate(priors + [x], axis=-1)
    return ConvABN(self.features, 3, self.dtype, name='bottleneck')(x, train)


class EdgeModule(nn.Module):
  """SCHP ``Edge_Module``: returns ``(edge_logits, edge_features)``."""
  features: int = 256
  out_features: int = 2
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, res2, res3, res4, train: bool):
    size = res2.shape[1:3]
    # One 3x3 classifier shared by the three levels, applied before upsampling.
    conv4 = nn.Conv(self.out_features, (3, 3), padding=1, dtype=self.dtype,
                    name='conv4')
    feats, edges = [], []
    for i, x in enumerate((res2, res3, res4)):
      f = ConvABN(self.features, 1, self.dtype, name=f'conv{i + 1}')(x, train)
      e = conv4(f)
      feats.append(layers.resize_bilinear(f, size, align_corners=True))
      edges.append(layers.resize_bilinear(e, size, align_corners=True))
    edge = nn.Conv(self.out_features, (1, 1), dtype=self.dtype, name='conv5')(
        jnp.concatenate(edges, axis=-1))
    return edge, jnp.concatenate(feats, axis=-1)


class DecoderModule(nn.Module):
  """SCHP ``Decoder_Module``: returns ``(parsing_logits, feature)``."""
  num_classes: int
  features: int = 256
  skip_features: int = 48
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, context, res2, train: bool):
    xt = ConvABN(self.features, 1, self.dtype, name='conv1')(context, train)
    xt = layers.resize_bilinear(xt, res2.shape[1:3], align_corners=True)
    xl = ConvABN(self.skip_features, 1, self.dtype, name='conv2')(res2, train)
    x = jnp.concatenate([xt, xl], axis=-1)
    # conv3 is one nn.Sequential in SCHP: (conv, ABN, conv, ABN).
    x = ConvABN(self.features, 1, self.dtype, name='conv3_0')(x, train)
    x = ConvABN(self.features, 1, self.dtype, name='conv3_1')(x, train)
    seg = nn.Conv(self.num_classes, (1, 1), dtype=self.dtype, name='conv4')(x)
    return seg, x


class AugmentCE2P(nn.Module):
  """The SCHP parser (``networks/AugmentCE2P.py``, ``resnet101``).

  Attributes:
    num_classes: ``{domain_name: C}`` with exactly one domain (SCHP
      checkpoints are single-domain).
    backbone: a bottleneck name from ``resnet.RESNET_SPECS`` (``resnet101``
      for the public checkpoints; ``resnet50`` for tests).
    width: backbone base width (64 in SCHP; the stem is width, width,
      2 * width).
    context_features: PSP output channels (512).
    edge_features: edge branch channels per level (256).
    decoder_features: decoder channels (256).
    skip_features: decoder low-level projection channels (48).
    fusion_features: fusion conv channels (256).
    psp_bins: PSP pooling grid sizes.
    dropout: channel dropout before the fusion classifier (``Dropout2d``);
      ``train=True`` then needs a ``'dropout'`` rng.
    dtype: computation dtype; logits are returned in float32.
    implementations: what the backbone's convolutions and residual ReLUs
      run (``fast_paths.Implementations``; its ``concat_conv`` is unused:
      the heads mirror SCHP's layers as written). Same parameters and
      outputs with any; the default is the plain forms, and the entry
      points pass the backend's (``recipe.speed_paths()``, through
      ``pretrained.import_schp``).
  """
  num_classes: dict[str, int]
  backbone: str = 'resnet101'
  width: int = 64
  context_features: int = 512
  edge_features: int = 256
  decoder_features: int = 256
  skip_features: int = 48
  fusion_features: int = 256
  psp_bins: Sequence[int] = (1, 2, 3, 6)
  dropout: float = 0.1
  dtype: Any = jnp.float32
  implementations: fast_paths.Implementations = fast_paths.Implementations()

  @nn.compact
  def __call__(self, image, train: bool = False, heads=None):
    """Runs the network.

    Args:
      image: ``[B, H, W, 3]`` image preprocessed as SCHP expects (BGR order,
        see ``pretrained.SCHP_PREPROCESSING``).
      train: BatchNorm in training mode and dropout active.
      heads: accepted for interface compatibility with
        ``ParsingNetwork``; the single domain is always computed.

    Returns:
      ``(logits, aux)``: ``logits[domain]`` is the fusion result
      ``[B, H/4, W/4, C]`` (float32); ``aux`` holds ``'decoder_logits'``
      (SCHP's ``parsing_result``), ``'edge'`` (2-way edge logits),
      ``'context'``, ``'decoder'``, ``'edge_features'``, ``'res2'``, ``'res5'``.

    Raises:
      ValueError: if ``num_classes`` does not hold exactly one domain.
    """
    del heads
    if len(self.num_classes) != 1:
      raise ValueError('AugmentCE2P has a single head; got num_classes='
                       f'{dict(self.num_classes)}')
    (domain, num_classes), = self.num_classes.items()
    feats = resnet.make_resnet(
        self.backbone, width=self.width, output_stride=16, deep_stem=True,
        dilate_first_block=True, dtype=self.dtype,
        conv=self.implementations.conv,
        residual_act=self.implementations.residual_act, name='backbone')(
            image, train)
    context = PSPModule(self.context_features, self.psp_bins, self.dtype,
                        name='context_encoding')(feats['res5'], train)
    seg, decoder = DecoderModule(
        num_classes, self.decoder_features, self.skip_features, self.dtype,
        name='decoder')(context, feats['res2'], train)
    edge, edge_feat = EdgeModule(self.edge_features, dtype=self.dtype,
                                 name='edge')(feats['res2'], feats['res3'],
                                              feats['res4'], train)
    x = jnp.concatenate([decoder, edge_feat], axis=-1)
    x = ConvABN(self.fusion_features, 1, self.dtype, name='fushion_0')(
        x, train)
    # Dropout2d zeroes whole channels: broadcast the mask over H and W.
    x = nn.Dropout(self.dropout, broadcast_dims=(1, 2),
                   deterministic=not train)(x)
    fusion = nn.Conv(num_classes, (1, 1), dtype=self.dtype,
                     name='fushion_3')(x)
    logits = {domain: fusion.astype(jnp.float32)}
    aux = {
        'decoder_logits': seg.astype(jnp.float32),
        'edge': edge.astype(jnp.float32),
        'context': context,
        'decoder': decoder,
        'edge_features': edge_feat,
        'res2': feats['res2'],
        'res5': feats['res5'],
    }
    return logits, aux
