"""The baseline parser and its SGD train step in PyTorch eager (reference).

Usage (times JAX and PyTorch in the same run)::

  python benchmarks/torch_reference.py --preset=synthetic
  python benchmarks/torch_reference.py --preset=resnet101 --resolution=257

is ``benchmarks/train_step.py --torch --variants baseline``. PyTorch is an
optional dependency (``pip install -e .[torch]``).

The modules mirror ``sst_jax/models/parser.py`` and ``resnet.py`` layer for
layer (same channels, strides, dilations, padding, bilinear upsampling with
``align_corners=False``, BatchNorm momentum 0.1 = flax 0.9, eps 1e-5) and use
the flax parameter names as attribute names, so that the JAX initial
variables load one-to-one (``load_flax_variables``): parameter counts,
inference logits and the first training loss can then be compared exactly.
The step is the one of ``configs/*`` with ``optim.name='sgd'``: multi-head
cross-entropy at label resolution (each sample against its own domain's
head, mean over valid pixels), weight decay on convolution kernels only,
SGD with momentum. On a GPU with ``channels_last`` and bfloat16 autocast
(``train_step.py --torch --channels_last --dtype=bfloat16``) it is the
mixed-precision step a PyTorch user would write: float32 parameters and
SGD update, convolutions in bfloat16, cuDNN autotuned.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

IGNORE_ID = 255


class ConvBN(nn.Module):
  """conv (no bias) -> BN (-> ReLU); attribute names as the flax module."""

  def __init__(self, cin, cout, kernel, stride=1, dilation=1, relu=True,
               padding=None):
    super().__init__()
    pad = kernel // 2 * dilation if padding is None else padding
    self.conv = nn.Conv2d(cin, cout, kernel, stride, pad, dilation,
                          bias=False)
    self.bn = nn.BatchNorm2d(cout, eps=1e-5, momentum=0.1)
    self.relu = relu

  def forward(self, x):
    x = self.bn(self.conv(x))
    return F.relu(x) if self.relu else x


def stage_strides(output_stride):
  return {32: ((1, 1), (2, 1), (2, 1), (2, 1)),
          16: ((1, 1), (2, 1), (2, 1), (1, 2)),
          8: ((1, 1), (2, 1), (1, 2), (1, 4))}[output_stride]


class BasicBlock(nn.Module):
  expansion = 1

  def __init__(self, cin, features, stride, dilation):
    super().__init__()
    d = dilation
    self.conv1 = nn.Conv2d(cin, features, 3, stride, d, d, bias=False)
    self.bn1 = nn.BatchNorm2d(features)
    self.conv2 = nn.Conv2d(features, features, 3, 1, d, d, bias=False)
    self.bn2 = nn.BatchNorm2d(features)
    self.downsample = cin != features or stride != 1
    if self.downsample:
      self.downsample_conv = nn.Conv2d(cin, features, 1, stride, bias=False)
      self.downsample_bn = nn.BatchNorm2d(features)

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    if self.downsample:
      x = self.downsample_bn(self.downsample_conv(x))
    return F.relu(x + y)


class Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, cin, features, stride, dilation):
    super().__init__()
    d, out = dilation, features * 4
    self.conv1 = nn.Conv2d(cin, features, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(features)
    self.conv2 = nn.Conv2d(features, features, 3, stride, d, d, bias=False)
    self.bn2 = nn.BatchNorm2d(features)
    self.conv3 = nn.Conv2d(features, out, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(out)
    self.downsample = cin != out or stride != 1
    if self.downsample:
      self.downsample_conv = nn.Conv2d(cin, out, 1, stride, bias=False)
      self.downsample_bn = nn.BatchNorm2d(out)

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = F.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    if self.downsample:
      x = self.downsample_bn(self.downsample_conv(x))
    return F.relu(x + y)


SPECS = {'resnet_tiny': (BasicBlock, (1, 1, 1, 1)),
         'resnet18': (BasicBlock, (2, 2, 2, 2)),
         'resnet34': (BasicBlock, (3, 4, 6, 3)),
         'resnet50': (Bottleneck, (3, 4, 6, 3)),
         'resnet101': (Bottleneck, (3, 4, 23, 3))}


class ResNet(nn.Module):
  """Dilated ResNet; torchvision/DeepLab first-block dilation convention."""

  def __init__(self, arch, width, output_stride, deep_stem):
    super().__init__()
    block, sizes = SPECS[arch]
    self.deep_stem = deep_stem
    if deep_stem:
      self.conv1 = nn.Conv2d(3, width, 3, 2, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(width)
      self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
      self.bn2 = nn.BatchNorm2d(width)
      self.conv3 = nn.Conv2d(width, width * 2, 3, 1, 1, bias=False)
      self.bn3 = nn.BatchNorm2d(width * 2)
      cin = width * 2
    else:
      self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
      self.bn1 = nn.BatchNorm2d(width)
      cin = width
    self.stages = []
    for i, (n, (stride, dilation)) in enumerate(
        zip(sizes, stage_strides(output_stride))):
      names = []
      for j in range(n):
        d = max(dilation // 2, 1) if j == 0 else dilation
        features = width * 2**i
        setattr(self, f'layer{i + 1}_{j}',
                block(cin, features, stride if j == 0 else 1, d))
        cin = features * block.expansion
        names.append(f'layer{i + 1}_{j}')
      self.stages.append(names)
    self.out_channels = cin

  def forward(self, x):
    if self.deep_stem:
      x = F.relu(self.bn1(self.conv1(x)))
      x = F.relu(self.bn2(self.conv2(x)))
      x = F.relu(self.bn3(self.conv3(x)))
    else:
      x = F.relu(self.bn1(self.conv1(x)))
    x = F.max_pool2d(x, 3, 2, 1)
    feats = {}
    for i, names in enumerate(self.stages):
      for name in names:
        x = getattr(self, name)(x)
      feats[f'res{i + 2}'] = x
    return feats


def resize(x, size):
  return F.interpolate(x, size=size, mode='bilinear', align_corners=False)


class PyramidPooling(nn.Module):

  def __init__(self, cin, features, bins):
    super().__init__()
    self.bins = tuple(bins)
    for b in self.bins:
      setattr(self, f'stage{b}', ConvBN(cin, features, 1))
    self.bottleneck = ConvBN(cin + len(self.bins) * features, features, 3)

  def forward(self, x):
    size = x.shape[2:]
    branches = [x]
    for b in self.bins:
      y = getattr(self, f'stage{b}')(F.adaptive_avg_pool2d(x, b))
      branches.append(resize(y, size))
    return self.bottleneck(torch.cat(branches, 1))


class Decoder(nn.Module):

  def __init__(self, context_in, skip_in, features, skip_features=48):
    super().__init__()
    self.context = ConvBN(context_in, features, 1)
    self.skip = ConvBN(skip_in, skip_features, 1)
    self.fuse1 = ConvBN(features + skip_features, features, 3)
    self.fuse2 = ConvBN(features, features, 3)

  def forward(self, context, skip):
    context = resize(self.context(context), skip.shape[2:])
    x = torch.cat([context, self.skip(skip)], 1)
    return self.fuse2(self.fuse1(x))


class ParsingNetwork(nn.Module):
  """ResNet -> PSP context -> decoder -> one 1x1 head per domain.

  ``parser.ParsingNetwork`` without the edge branch.
  """

  def __init__(self, model_cfg, num_classes: dict):
    super().__init__()
    if model_cfg.edge:
      raise NotImplementedError('the reference has no edge branch')
    self.backbone = ResNet(model_cfg.backbone, model_cfg.width,
                           model_cfg.output_stride, model_cfg.deep_stem)
    block = SPECS[model_cfg.backbone][0]
    self.context = PyramidPooling(self.backbone.out_channels,
                                  model_cfg.context_features,
                                  model_cfg.psp_bins)
    self.decoder = Decoder(model_cfg.context_features,
                           model_cfg.width * block.expansion,
                           model_cfg.decoder_features)
    self.heads = list(num_classes)
    for name, c in num_classes.items():
      setattr(self, f'head_{name}',
              nn.Conv2d(model_cfg.decoder_features, c, 1))

  def forward(self, image):
    feats = self.backbone(image)
    decoder = self.decoder(self.context(feats['res5']), feats['res2'])
    return {n: getattr(self, f'head_{n}')(decoder) for n in self.heads}


def load_flax_variables(model: nn.Module, variables) -> None:
  """Copies flax ``{'params', 'batch_stats'}`` into ``model`` by name.

  Raises:
    KeyError: when a torch tensor has no flax counterpart or vice versa.
  """
  flat = {}

  def walk(tree, prefix, collection):
    for k, v in tree.items():
      if isinstance(v, dict):
        walk(v, prefix + (k,), collection)
      else:
        flat[(collection,) + prefix + (k,)] = np.asarray(v)

  walk(variables['params'], (), 'params')
  walk(variables['batch_stats'], (), 'batch_stats')
  # Flax wraps plain convs in 'conv' only inside ConvBNReLU (as here).
  leaf_map = {'weight': ('params', ('kernel', 'scale')),
              'bias': ('params', ('bias',)),
              'running_mean': ('batch_stats', ('mean',)),
              'running_var': ('batch_stats', ('var',))}
  used = set()
  state = model.state_dict()
  for name, tensor in state.items():
    if name.endswith('num_batches_tracked'):
      continue
    *path, leaf = name.split('.')
    collection, candidates = leaf_map[leaf]
    key = next((k for k in ((collection, *path, c) for c in candidates)
                if k in flat), None)
    if key is None:
      raise KeyError(f'no flax variable for torch {name}')
    value = flat[key]
    if value.ndim == 4:  # HWIO -> OIHW
      value = value.transpose(3, 2, 0, 1)
    if tuple(value.shape) != tuple(tensor.shape):
      raise KeyError(f'{name}: torch {tuple(tensor.shape)} vs flax '
                     f'{value.shape}')
    tensor.copy_(torch.from_numpy(np.array(value, np.float32)))
    used.add(key)
  unused = set(flat) - used
  if unused:
    raise KeyError(f'flax variables not loaded: {sorted(unused)[:5]}')


def multi_head_cross_entropy(logits: dict, label, domain):
  total, count = 0.0, 0
  for k, name in enumerate(logits):
    lg = resize(logits[name], label.shape[1:])
    c = lg.shape[1]
    valid = (label != IGNORE_ID) & (label >= 0) & (label < c)
    mine = (domain == k)[:, None, None] & valid
    ce = F.cross_entropy(lg, torch.where(valid, label, 0), reduction='none')
    total = total + torch.where(mine, ce, 0.0).sum()
    count = count + mine.sum()
  return total / count.clamp(min=1)


def make_sgd(model, optim_cfg, lr):
  """Weight decay on conv kernels only (as optim._decay_mask)."""
  decay, no_decay = [], []
  for name, p in model.named_parameters():
    is_kernel = name.endswith('weight') and p.ndim == 4
    (decay if is_kernel else no_decay).append(p)
  return torch.optim.SGD(
      [{'params': decay, 'weight_decay': optim_cfg.weight_decay},
       {'params': no_decay, 'weight_decay': 0.0}],
      lr=lr, momentum=optim_cfg.momentum)


def _median_time(fn, warmup, steps):
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times), times


def benchmark_torch(config, flax_variables, batch: dict, *, warmup: int,
                    steps: int, threads: int = 0,
                    channels_last: bool = False, device: str = 'cpu',
                    autocast_dtype: torch.dtype | None = None,
                    time_now: bool = True) -> dict:
  """Times inference and the SGD train step from the JAX initial weights.

  Args:
    config: the sst_jax config (model, optim, domains).
    flax_variables: host ``{'params', 'batch_stats'}`` of the JAX parser.
    batch: host ``{'image' [B,H,W,3], 'label', 'domain'}``.
    warmup: untimed calls before the timed ones.
    steps: timed calls.
    threads: ``torch.set_num_threads`` (0: torch's default).
    channels_last: NHWC memory layout for the model and the images.
    device: ``'cpu'``, ``'cuda'``, ``'cuda:1'``...; on a GPU, cuDNN picks
      its fastest algorithms for these shapes during the warm-up.
    autocast_dtype: e.g. ``torch.bfloat16``: the forward passes (and the
      loss) under ``torch.autocast``; parameters, gradients and the SGD
      update stay float32.
    time_now: time here; otherwise see Returns.

  Returns:
    dict with ``params``, ``forward_s``, ``train_step_s``, ``first_loss``,
    ``forward_logits`` (``{head: [B,h,w,C]}`` float32, NHWC like JAX). With
    ``time_now=False`` each program runs once and ``'runners'``
    (``{'train': fn, 'forward': fn}``, each returning once the device is
    done) replaces the times.
  """
  from sst_jax import domains as domains_lib
  if config.optim.name != 'sgd':
    raise ValueError('the PyTorch reference implements optim.name=sgd only')
  if threads:
    torch.set_num_threads(threads)
  device = torch.device(device)
  on_cuda = device.type == 'cuda'
  if on_cuda:
    torch.backends.cudnn.benchmark = True
  domains = domains_lib.get_domains(list(config.domains))
  model = ParsingNetwork(config.model,
                         {d.name: d.num_classes for d in domains})
  with torch.no_grad():
    load_flax_variables(model, flax_variables)
  fmt = torch.channels_last if channels_last else torch.contiguous_format
  model = model.to(device=device, memory_format=fmt)
  image = torch.from_numpy(np.asarray(batch['image'], np.float32)).permute(
      0, 3, 1, 2).to(device).contiguous(memory_format=fmt)
  label = torch.from_numpy(batch['label']).long().to(device)
  domain = torch.from_numpy(batch['domain']).long().to(device)
  out = {'params': sum(p.numel() for p in model.parameters()),
         'threads': torch.get_num_threads()}

  def autocast():
    return torch.autocast(device.type, dtype=autocast_dtype,
                          enabled=autocast_dtype is not None)

  def finish():
    if on_cuda:
      torch.cuda.synchronize(device)

  model.eval()
  first = {}

  @torch.no_grad()
  def forward():
    model.eval()
    with autocast():
      logits = model(image)
    first.setdefault('logits', logits)
    finish()

  if time_now:
    out['forward_s'], out['forward_times'] = _median_time(forward, warmup,
                                                          steps)
  else:
    forward()
  out['forward_logits'] = {k: v.float().permute(0, 2, 3, 1).cpu().numpy()
                           for k, v in first['logits'].items()}

  # lr as the JAX step's first value (schedule at step 0); the value does not
  # change the cost.
  opt = make_sgd(model, config.optim, config.optim.lr)

  def train_step():
    model.train()
    opt.zero_grad(set_to_none=True)
    with autocast():
      loss = multi_head_cross_entropy(model(image), label, domain)
    loss.backward()
    opt.step()
    if 'loss' not in first:  # .item() waits for the device: once only.
      first['loss'] = loss.item()
    finish()

  if time_now:
    out['train_step_s'], out['train_times'] = _median_time(train_step, warmup,
                                                           steps)
  else:
    train_step()
    out['runners'] = {'train': train_step, 'forward': forward}
  out['first_loss'] = first['loss']
  return out


if __name__ == '__main__':
  import sys
  import train_step
  train_step.main(['--torch', '--variants', 'baseline'] + sys.argv[1:])
