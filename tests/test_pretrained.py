"""Parity of imported PyTorch weights (torchvision ResNet, SCHP AugmentCE2P).

The PyTorch reference models are written here (torchvision's and SCHP's
module and parameter names, random weights and BatchNorm statistics, eval
mode) so that no weight is downloaded and torchvision is not needed. The
SCHP model here stands in for SCHP's own code where that is not installed;
``test_schp_parity.py`` checks against SCHP's real code.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch')
from torch import nn  # pylint: disable=g-import-not-at-top
from torch.nn import functional as F  # pylint: disable=g-import-not-at-top

import helpers  # pylint: disable=g-import-not-at-top
from sst_jax.models import parser  # pylint: disable=g-import-not-at-top
from sst_jax.models import pretrained
from sst_jax.models import resnet
from sst_jax.models import schp

torch.set_num_threads(2)
ATOL = 1e-4

# ---------------------------------------------------------------------------
# PyTorch reference models.
# ---------------------------------------------------------------------------


class TVBasicBlock(nn.Module):
  expansion = 1

  def __init__(self, inplanes, planes, stride=1, dilation=1, downsample=None,
               norm=nn.BatchNorm2d):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, dilation, dilation,
                           bias=False)
    self.bn1 = norm(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, dilation, dilation,
                           bias=False)
    self.bn2 = norm(planes)
    self.downsample = downsample

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    x = x if self.downsample is None else self.downsample(x)
    return F.relu(x + y)


class TVBottleneck(nn.Module):
  expansion = 4

  def __init__(self, inplanes, planes, stride=1, dilation=1, downsample=None,
               norm=nn.BatchNorm2d):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
    self.bn1 = norm(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride, dilation, dilation,
                           bias=False)
    self.bn2 = norm(planes)
    self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
    self.bn3 = norm(planes * 4)
    self.downsample = downsample

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = F.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    x = x if self.downsample is None else self.downsample(x)
    return F.relu(x + y)


def _make_layer(inplanes, block, planes, blocks, stride, dilations,
                norm=nn.BatchNorm2d):
  """torchvision/SCHP ``_make_layer``; ``dilations[j]`` for block j."""
  downsample = None
  if stride != 1 or inplanes != planes * block.expansion:
    downsample = nn.Sequential(
        nn.Conv2d(inplanes, planes * block.expansion, 1, stride, bias=False),
        norm(planes * block.expansion))
  layers = [block(inplanes, planes, stride, dilations[0], downsample, norm)]
  for j in range(1, blocks):
    layers.append(block(planes * block.expansion, planes, 1, dilations[j],
                        norm=norm))
  return nn.Sequential(*layers), planes * block.expansion


class TVResNet(nn.Module):
  """torchvision ResNet (replace_stride_with_dilation), returning stages."""

  def __init__(self, block, sizes, width=64, output_stride=32):
    super().__init__()
    self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    strides = {32: (1, 2, 2, 2), 16: (1, 2, 2, 1), 8: (1, 2, 1, 1)}
    inplanes, dilation = width, 1
    for i, n in enumerate(sizes):
      stride = strides[output_stride][i]
      previous = dilation
      if i > 0 and stride == 1:  # replace_stride_with_dilation.
        dilation *= 2
      layer, inplanes = _make_layer(inplanes, block, width * 2**i, n, stride,
                                    [previous] + [dilation] * (n - 1))
      setattr(self, f'layer{i + 1}', layer)
    self.fc = nn.Linear(inplanes, 1000)

  def forward(self, x):
    x = F.relu(self.bn1(self.conv1(x)))
    feats = {'stem': x}
    x = F.max_pool2d(x, 3, 2, 1)
    for i in range(4):
      x = getattr(self, f'layer{i + 1}')(x)
      feats[f'res{i + 2}'] = x
    return feats


class InPlaceABN(nn.BatchNorm2d):
  """Stands in for SCHP's InPlaceABNSync (eval mode), same keys.

  InPlace-ABN scales by ``|weight| + eps`` (``inplace_abn_cpu.cpp``), then
  applies its activation (none in SCHP's backbone).
  """

  def __init__(self, num_features, activation='none'):
    super().__init__(num_features)
    self.activation = activation

  def forward(self, x):
    x = F.batch_norm(x, self.running_mean, self.running_var,
                     self.weight.abs() + self.eps, self.bias, False, 0.0,
                     self.eps)
    return F.leaky_relu(x, 0.01) if self.activation == 'leaky_relu' else x


def ABN(num_features):  # pylint: disable=invalid-name
  """SCHP's head ``InPlaceABNSync``: InPlace-ABN + LeakyReLU(0.01)."""
  return InPlaceABN(num_features, 'leaky_relu')


def up(x, size):
  return F.interpolate(x, size=size, mode='bilinear', align_corners=True)


class PSPModule(nn.Module):

  def __init__(self, features, out_features, sizes=(1, 2, 3, 6)):
    super().__init__()
    self.stages = nn.ModuleList([
        nn.Sequential(nn.AdaptiveAvgPool2d((s, s)),
                      nn.Conv2d(features, out_features, 1, bias=False),
                      ABN(out_features)) for s in sizes])
    self.bottleneck = nn.Sequential(
        nn.Conv2d(features + len(sizes) * out_features, out_features, 3,
                  padding=1, bias=False), ABN(out_features))

  def forward(self, feats):
    h, w = feats.shape[2:]
    priors = [up(stage(feats), (h, w)) for stage in self.stages] + [feats]
    return self.bottleneck(torch.cat(priors, 1))


class EdgeModule(nn.Module):

  def __init__(self, in_fea, mid_fea, out_fea=2):
    super().__init__()
    for i, c in enumerate(in_fea):
      setattr(self, f'conv{i + 1}', nn.Sequential(
          nn.Conv2d(c, mid_fea, 1, bias=False), ABN(mid_fea)))
    self.conv4 = nn.Conv2d(mid_fea, out_fea, 3, padding=1, bias=True)
    self.conv5 = nn.Conv2d(out_fea * 3, out_fea, 1, bias=True)

  def forward(self, x1, x2, x3):
    h, w = x1.shape[2:]
    f1, f2, f3 = self.conv1(x1), self.conv2(x2), self.conv3(x3)
    e1, e2, e3 = self.conv4(f1), self.conv4(f2), self.conv4(f3)
    edge = torch.cat([e1, up(e2, (h, w)), up(e3, (h, w))], 1)
    edge_fea = torch.cat([f1, up(f2, (h, w)), up(f3, (h, w))], 1)
    return self.conv5(edge), edge_fea


class DecoderModule(nn.Module):

  def __init__(self, num_classes, in_context, in_skip, features, skip):
    super().__init__()
    self.conv1 = nn.Sequential(nn.Conv2d(in_context, features, 1, bias=False),
                               ABN(features))
    self.conv2 = nn.Sequential(nn.Conv2d(in_skip, skip, 1, bias=False),
                               ABN(skip))
    self.conv3 = nn.Sequential(
        nn.Conv2d(features + skip, features, 1, bias=False), ABN(features),
        nn.Conv2d(features, features, 1, bias=False), ABN(features))
    self.conv4 = nn.Conv2d(features, num_classes, 1, bias=True)

  def forward(self, xt, xl):
    xt = up(self.conv1(xt), xl.shape[2:])
    x = self.conv3(torch.cat([xt, self.conv2(xl)], 1))
    return self.conv4(x), x


class TorchAugmentCE2P(nn.Module):
  """SCHP ``networks/AugmentCE2P.py`` ResNet with configurable widths."""

  def __init__(self, num_classes, sizes=(3, 4, 23, 3), width=64,
               context=512, edge=256, decoder=256, skip=48, fusion=256):
    super().__init__()
    # SCHP's backbone BatchNorm2d is InPlaceABNSync(activation='none').
    self.conv1 = nn.Conv2d(3, width, 3, 2, 1, bias=False)
    self.bn1 = InPlaceABN(width)
    self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
    self.bn2 = InPlaceABN(width)
    self.conv3 = nn.Conv2d(width, width * 2, 3, 1, 1, bias=False)
    self.bn3 = InPlaceABN(width * 2)
    inplanes = width * 2
    chans = []
    # layer4: stride 1, dilation 2, multi_grid (1, 1, 1) -> every block d=2.
    for i, (n, stride, d) in enumerate(zip(sizes, (1, 2, 2, 1),
                                           (1, 1, 1, 2))):
      layer, inplanes = _make_layer(inplanes, TVBottleneck, width * 2**i, n,
                                    stride, [d] * n, norm=InPlaceABN)
      setattr(self, f'layer{i + 1}', layer)
      chans.append(inplanes)
    self.context_encoding = PSPModule(chans[3], context)
    self.edge = EdgeModule(chans[:3], edge)
    self.decoder = DecoderModule(num_classes, context, chans[0], decoder, skip)
    self.fushion = nn.Sequential(
        nn.Conv2d(decoder + 3 * edge, fusion, 1, bias=False), ABN(fusion),
        nn.Dropout2d(0.1), nn.Conv2d(fusion, num_classes, 1, bias=True))

  def forward(self, x):
    x = F.relu(self.bn1(self.conv1(x)))
    x = F.relu(self.bn2(self.conv2(x)))
    x = F.relu(self.bn3(self.conv3(x)))
    x = F.max_pool2d(x, 3, 2, 1)
    x2 = self.layer1(x)
    x3 = self.layer2(x2)
    x4 = self.layer3(x3)
    x5 = self.layer4(x4)
    x = self.context_encoding(x5)
    parsing_result, parsing_fea = self.decoder(x, x2)
    edge_result, edge_fea = self.edge(x2, x3, x4)
    fusion_result = self.fushion(torch.cat([parsing_fea, edge_fea], 1))
    return [[parsing_result, fusion_result], [edge_result]]


def randomize_(model, seed=0):
  """Random weights and BatchNorm statistics that keep activations O(1).

  About a third of the InPlace-ABN weights are negative (InPlace-ABN ignores
  their sign; a plain BatchNorm reading of them would not).
  """
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, (nn.Conv2d, nn.Linear)):
        fan_in = m.weight[0].numel()
        m.weight.copy_(torch.randn(m.weight.shape, generator=g)
                       * (1.0 / fan_in) ** 0.5)
        if m.bias is not None:
          m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
      elif isinstance(m, nn.BatchNorm2d):
        c = m.num_features
        m.weight.copy_(torch.rand(c, generator=g) + 0.5)
        if isinstance(m, InPlaceABN):
          m.weight.mul_(torch.where(torch.rand(c, generator=g) < 0.3, -1.0,
                                    1.0))
        m.bias.copy_(torch.randn(c, generator=g) * 0.1)
        m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
        m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
  return model.eval()


def to_nhwc(t):
  return t.detach().numpy().transpose(0, 2, 3, 1)


def max_diff(a, b):
  return float(np.max(np.abs(np.asarray(a, np.float32) - b)))


def random_image(size=64, seed=0):
  return np.random.RandomState(seed).randn(2, size, size, 3).astype(
      np.float32)


def torch_state_dict(model):
  return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------------
# ImageNet backbones.
# ---------------------------------------------------------------------------

TV_LAYOUTS = {
    # name: (torch block, flax arch, width, output stride)
    'resnet18': (TVBasicBlock, 'resnet18', 64, 32),
    'resnet50': (TVBottleneck, 'resnet50', 16, 8),
}


@pytest.mark.parametrize('name', sorted(TV_LAYOUTS))
def test_resnet_parity(name, tmp_path):
  block, arch, width, output_stride = TV_LAYOUTS[name]
  sizes = resnet.RESNET_SPECS[arch][1]
  tmodel = randomize_(TVResNet(block, sizes, width, output_stride))
  path = tmp_path / f'{name}.pth'
  torch.save(tmodel.state_dict(), path)

  model = resnet.make_resnet(arch, width=width, output_stride=output_stride)
  target = pretrained.abstract_variables(model)
  variables, report = pretrained.import_resnet(
      pretrained.load_torch_state_dict(path), target, prefix=None)
  assert not report.not_loaded
  assert 'fc.weight' in report.ignored
  assert any(n.endswith('num_batches_tracked') for n in report.ignored)

  image = random_image()
  feats = model.apply(variables, image, train=False)
  with torch.no_grad():
    ref = tmodel(torch.from_numpy(image.transpose(0, 3, 1, 2)))
  for key in ('stem', 'res2', 'res3', 'res4', 'res5'):
    assert feats[key].shape == to_nhwc(ref[key]).shape, key
    diff = max_diff(feats[key], to_nhwc(ref[key]))
    print(f'{name} {key}: max abs diff {diff:.2e}')
    assert diff <= ATOL, (key, diff)


def _tiny_tv_state_dict():
  tmodel = randomize_(TVResNet(TVBasicBlock, (2, 2, 2, 2), width=16), seed=1)
  return {k: v.numpy() for k, v in tmodel.state_dict().items()}


def test_safetensors_and_npz_match_torch_path(tmp_path):
  st_numpy = pytest.importorskip('safetensors.numpy')
  state = _tiny_tv_state_dict()
  torch.save({k: torch.from_numpy(v) for k, v in state.items()},
             tmp_path / 'w.pth')
  st_numpy.save_file(state, str(tmp_path / 'w.safetensors'))
  pretrained.save_npz(state, tmp_path / 'w.npz')

  model = resnet.make_resnet('resnet18', width=16, output_stride=32)
  target = pretrained.abstract_variables(model)
  results = [pretrained.import_resnet(
      pretrained.load_torch_state_dict(tmp_path / f'w.{ext}'), target, None)[0]
             for ext in ('pth', 'safetensors', 'npz')]
  ref = jax.tree.leaves(results[0])
  for other in results[1:]:
    assert jax.tree.structure(other) == jax.tree.structure(results[0])
    for a, b in zip(ref, jax.tree.leaves(other)):
      np.testing.assert_array_equal(a, b)


def test_unmapped_and_misshaped_tensors_raise():
  model = resnet.make_resnet('resnet18', width=16, output_stride=32)
  target = pretrained.abstract_variables(model)
  state = _tiny_tv_state_dict()

  extra = dict(state, **{'layer1.0.extra.weight': np.zeros((3,), np.float32)})
  with pytest.raises(ValueError, match=r'no target: layer1\.0\.extra\.weight'):
    pretrained.import_resnet(extra, target, None)

  bad = dict(state)
  bad['layer2.1.conv2.weight'] = np.zeros((32, 32, 1, 1), np.float32)
  with pytest.raises(ValueError,
                     match=r'wrong shape: layer2\.1\.conv2\.weight'):
    pretrained.import_resnet(bad, target, None)

  with pytest.raises(ValueError, match="prefix 'encoder'"):
    pretrained.import_resnet(state, target, 'encoder')


def test_backbone_into_parser_reports_heads_not_loaded(tmp_path):
  state = _tiny_tv_state_dict()
  pretrained.save_npz(state, tmp_path / 'w.npz')
  model = parser.ParsingNetwork(num_classes={'lip': 20},
                                backbone='resnet18', width=16,
                                output_stride=32, context_features=32,
                                decoder_features=16)
  # Concrete stand-in for model.init (whose eager random init is slow on CPU).
  variables = jax.tree.map(lambda s: np.full(s.shape, 0.5, s.dtype),
                           pretrained.abstract_variables(model))
  loaded, report = pretrained.load_backbone_into(variables, tmp_path / 'w.npz')

  assert report.not_loaded
  assert not any(n.split('/')[1] == 'backbone' for n in report.not_loaded)
  assert 'params/head_lip/kernel' in report.not_loaded
  assert any(n.startswith('params/decoder/') for n in report.not_loaded)
  assert any(n.startswith('batch_stats/context/') for n in report.not_loaded)
  np.testing.assert_array_equal(
      loaded['params']['backbone']['layer1_0']['conv1']['kernel'],
      state['layer1.0.conv1.weight'].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(
      loaded['batch_stats']['backbone']['bn1']['var'], state['bn1.running_var'])
  # Leaves outside the backbone are passed through untouched.
  assert (loaded['params']['head_lip']['kernel']
          is variables['params']['head_lip']['kernel'])
  logits, _ = model.apply(loaded, jnp.zeros((1, 64, 64, 3)))
  assert logits['lip'].shape == (1, 16, 16, 20)


def test_missing_torch_file_raises(tmp_path):
  with pytest.raises(FileNotFoundError, match='nothere.pth'):
    pretrained.load_torch_state_dict(tmp_path / 'nothere.pth')


# ---------------------------------------------------------------------------
# SCHP AugmentCE2P.
# ---------------------------------------------------------------------------

SMALL_SCHP = dict(sizes=(3, 4, 6, 3), width=16, context=64, edge=32,
                  decoder=32, skip=16, fusion=32)


def _schp_checkpoint(num_classes, seed=0):
  tmodel = randomize_(TorchAugmentCE2P(num_classes, **SMALL_SCHP), seed)
  # As saved by SCHP's training: nn.DataParallel names, wrapped.
  wrapped = {'state_dict': {f'module.{k}': v
                            for k, v in tmodel.state_dict().items()}}
  return tmodel, wrapped


def test_schp_parity(tmp_path):
  tmodel, checkpoint = _schp_checkpoint(20)
  path = tmp_path / 'exp-schp-lip.pth'
  torch.save(checkpoint, path)
  module, variables = pretrained.import_schp(path, 'lip')
  assert module.backbone == 'resnet50' and module.width == 16

  image = random_image(64, seed=3)
  logits, aux = module.apply(variables, image, train=False)
  with torch.no_grad():
    (ref_seg, ref_fusion), (ref_edge,) = tmodel(
        torch.from_numpy(image.transpose(0, 3, 1, 2)))
  pairs = {'fusion': (logits['lip'], ref_fusion),
           'decoder': (aux['decoder_logits'], ref_seg),
           'edge': (aux['edge'], ref_edge)}
  for key, (ours, ref) in pairs.items():
    assert ours.shape == to_nhwc(ref).shape, key
    diff = max_diff(ours, to_nhwc(ref))
    print(f'schp {key}: max abs diff {diff:.2e}')
    assert diff <= ATOL, (key, diff)
  assert logits['lip'].shape == (2, 16, 16, 20)
  assert logits['lip'].dtype == jnp.float32


def test_schp_wrong_class_count_and_missing_tensor_raise():
  _, checkpoint = _schp_checkpoint(20)
  with pytest.raises(ValueError, match=r"20 classes.*'atr' has 18"):
    pretrained.import_schp(checkpoint, 'atr')
  with pytest.raises(KeyError, match='unknown label domain'):
    pretrained.import_schp(checkpoint, 'no_such_domain')
  state = dict(checkpoint['state_dict'])
  del state['module.edge.conv5.bias']
  with pytest.raises(ValueError, match=r'params/edge/conv5/bias'):
    pretrained.import_schp(state, 'lip')
  state = dict(checkpoint['state_dict'])
  state['module.edge.conv6.weight'] = state['module.edge.conv5.weight']
  with pytest.raises(ValueError, match=r'edge\.conv6\.weight'):
    pretrained.import_schp(state, 'lip')


# Keys that the public SCHP checkpoints hold (after stripping ``module.``).
SCHP_KEYS = (
    'conv1.weight', 'bn1.weight', 'conv2.weight', 'bn2.running_mean',
    'conv3.weight', 'bn3.running_var', 'layer1.0.conv1.weight',
    'layer1.0.downsample.0.weight', 'layer1.0.downsample.1.weight',
    'layer3.22.conv3.weight', 'layer4.2.bn3.bias',
    'context_encoding.stages.0.1.weight', 'context_encoding.stages.0.2.weight',
    'context_encoding.stages.3.2.running_var',
    'context_encoding.bottleneck.0.weight',
    'context_encoding.bottleneck.1.weight', 'edge.conv1.0.weight',
    'edge.conv3.1.running_mean', 'edge.conv4.weight', 'edge.conv4.bias',
    'edge.conv5.weight', 'edge.conv5.bias', 'decoder.conv1.0.weight',
    'decoder.conv2.1.weight', 'decoder.conv3.0.weight',
    'decoder.conv3.3.running_var', 'decoder.conv4.bias', 'fushion.0.weight',
    'fushion.1.running_mean', 'fushion.3.weight', 'fushion.3.bias')


@pytest.mark.parametrize('domain,num_classes',
                         [('lip', 20), ('atr', 18), ('pascal_person_part', 7)])
def test_schp_resnet101_key_set(domain, num_classes):
  # Shapes only: the torch model lives on the meta device, the Flax one in
  # jax.eval_shape; nothing is allocated or run.
  with torch.device('meta'):
    tmodel = TorchAugmentCE2P(num_classes)
  expected = {k: tuple(v.shape) for k, v in tmodel.state_dict().items()
              if not k.endswith('num_batches_tracked')}
  assert set(SCHP_KEYS) <= set(expected)
  assert expected['context_encoding.bottleneck.0.weight'] == (512, 4096, 3, 3)
  assert expected['fushion.0.weight'] == (256, 1024, 1, 1)

  config = pretrained.schp_config_from_state_dict(
      {k: _Shape(v) for k, v in expected.items()})
  assert config['backbone'] == 'resnet101' and config['width'] == 64
  assert config['num_classes'] == num_classes
  module = schp.AugmentCE2P(num_classes={domain: num_classes})
  target = pretrained.abstract_variables(module, (473, 473))
  ours = helpers.expected_torch_shapes(target, pretrained.schp_name_fn())
  assert ours == expected
  # Every target leaf is named: nothing would be left unloaded.
  assert len(jax.tree.leaves(target)) == len(ours)


class _Shape:
  """Stands in for a tensor where only ``.shape`` is read."""

  def __init__(self, shape):
    self.shape = shape


def test_preprocessing():
  image = np.zeros((1, 8, 8, 3), np.uint8)
  image[..., 0] = 255  # red
  x = pretrained.schp_preprocess(image)
  # BGR order: red is the last channel, normalized with the R statistics.
  np.testing.assert_allclose(x[0, 0, 0], [(0 - 0.406) / 0.225,
                                          (0 - 0.456) / 0.224,
                                          (1 - 0.485) / 0.229], rtol=1e-6)
  y = pretrained.imagenet_preprocess(image)
  np.testing.assert_allclose(y[0, 0, 0], [(1 - 0.485) / 0.229,
                                          (0 - 0.456) / 0.224,
                                          (0 - 0.406) / 0.225], rtol=1e-6)
  assert pretrained.SCHP_PREPROCESSING.input_sizes['lip'] == (473, 473)


def test_schp_affine_matrix_centres_and_fits_the_image():
  m = pretrained.schp_affine_matrix(101, 201, (473, 473))
  corners = np.array([[0, 0, 1], [200, 100, 1], [100, 50, 1]], np.float32)
  out = corners @ m.T
  # The wide image's first and last pixel centres land on the input's first
  # and last (SCHP maps onto [0, size - 1]); it is centred vertically.
  np.testing.assert_allclose(out[0, 0], 0.0, atol=1e-4)
  np.testing.assert_allclose(out[1, 0], 472.0, atol=1e-3)
  np.testing.assert_allclose(out[2], [236.0, 236.0], atol=1e-3)
  # An image of the input's size is copied: identity.
  np.testing.assert_array_equal(
      pretrained.schp_affine_matrix(473, 473, (473, 473)),
      [[1, 0, 0], [0, 1, 0]])


def test_inplace_abn_weights_become_abs_plus_eps():
  _, checkpoint = _schp_checkpoint(20)
  weight = checkpoint['state_dict']['module.edge.conv1.1.weight'].numpy()
  assert (weight < 0).any()
  _, variables = pretrained.import_schp(checkpoint, 'lip')
  np.testing.assert_array_equal(
      variables['params']['edge']['conv1']['bn']['scale'],
      np.abs(weight) + np.float32(1e-5))


def test_schp_checkpoint_initializes_a_parser_backbone(tmp_path):
  """SCHP weights -> the backbone of a multi-head parser for SST training."""
  _, checkpoint = _schp_checkpoint(20, seed=4)
  path = tmp_path / 'exp-schp-lip.pth'
  torch.save(checkpoint, path)
  state = pretrained.load_torch_state_dict(path)
  model = parser.ParsingNetwork(
      num_classes={'lip': 20, 'pascal_person_part': 7}, backbone='resnet50',
      width=16, output_stride=16, deep_stem=True, dilate_first_block=True,
      context_features=32, decoder_features=16)
  variables = jax.tree.map(lambda s: np.full(s.shape, 0.5, s.dtype),
                           pretrained.abstract_variables(model))
  loaded, report = pretrained.load_backbone_into(variables, path)
  assert any(n.startswith('fushion.') for n in report.ignored)
  assert any(n.startswith('context_encoding.') for n in report.ignored)
  assert not any(n.split('/')[1] == 'backbone' for n in report.not_loaded)
  np.testing.assert_array_equal(
      loaded['params']['backbone']['conv3']['kernel'],
      state['conv3.weight'].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(
      loaded['batch_stats']['backbone']['layer4_2']['bn2']['mean'],
      state['layer4.2.bn2.running_mean'])
  # An SCHP checkpoint's norms are InPlace-ABN: |weight| + eps.
  assert (state['layer1.0.bn1.weight'] < 0).any()
  np.testing.assert_array_equal(
      loaded['params']['backbone']['layer1_0']['bn1']['scale'],
      pretrained.inplace_abn_scale(state['layer1.0.bn1.weight']))
  # The backbone computes what SCHP's backbone computes.
  module, schp_vars = pretrained.import_schp(path, 'lip')
  image = random_image(64, seed=5)
  _, ours = model.apply(loaded, image)
  _, theirs = module.apply(schp_vars, image)
  np.testing.assert_allclose(ours['res5'], theirs['res5'], atol=1e-4)
