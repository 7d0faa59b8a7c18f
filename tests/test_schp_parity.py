"""An SCHP checkpoint in sst_jax computes what SCHP's own code computes.

The reference is SCHP's code from the installed ``schp`` package (see
``schp_reference.py``: its AugmentCE2P network with the compiled InPlaceABN,
``simple_extractor``'s dataset, warp and inverse warp, ``evaluate.py``'s flip
test-time augmentation, ``utils/miou.py``), not a re-implementation. SCHP's
ResNet class is built at ResNet-50 depth (``ResNet(Bottleneck, [3, 4, 6, 3])``,
every other width as in the public checkpoints) with random weights, about a
third of its InPlaceABN weights negative and non-trivial running statistics,
saved with SCHP's ``save_schp_checkpoint`` from SCHP's ``DataParallelModel``,
and loaded with ``sst_jax.Parser.load(path, domain='lip')``.

Needs ``pip install -e ".[test,torch,schp]" && pip install --no-deps
schp==0.1``; skipped without it, except under CI (which installs it), where a
missing piece is an error.
"""

import os

import numpy as np
from PIL import Image
import pytest

import schp_reference

_MISSING = schp_reference.missing()
if _MISSING:
  if os.environ.get('CI'):
    raise RuntimeError(f'SCHP parity test cannot run in CI: {_MISSING}')
  pytest.skip(_MISSING, allow_module_level=True)

# pylint: disable=g-import-not-at-top,wrong-import-position
import skimage.data
import torch

from sst_jax import api
from sst_jax import evaluate
from sst_jax import metrics
from sst_jax import predict
from sst_jax.models import pretrained
# pylint: enable=g-import-not-at-top,wrong-import-position

torch.set_num_threads(2)

NUM_CLASSES = 20  # LIP
# Network input side of the end-to-end tests: SCHP's pipeline at a small size
# (the LIP default, 473, is covered by the preprocessing test).
SIZE = 65
# float32 noise of two implementations of the same network.
RTOL = 1e-4


@pytest.fixture(scope='module')
def ref():
  return schp_reference.load()


def _randomize_(model, ref, seed=0):
  """Random convs; InPlaceABN weights with both signs, non-trivial stats."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, torch.nn.Conv2d):
        fan_in = m.weight[0].numel()
        m.weight.copy_(torch.randn(m.weight.shape, generator=g)
                       * (1.0 / fan_in) ** 0.5)
        if m.bias is not None:
          m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
      elif isinstance(m, ref.modules.ABN):
        c = m.num_features
        sign = torch.where(torch.rand(c, generator=g) < 0.3, -1.0, 1.0)
        m.weight.copy_(sign * (torch.rand(c, generator=g) + 0.5))
        m.bias.copy_(torch.randn(c, generator=g) * 0.1)
        m.running_mean.copy_(torch.randn(c, generator=g) * 0.2)
        m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
  return model.eval()


@pytest.fixture(scope='module')
def checkpoint(ref, tmp_path_factory):
  """``(SCHP's torch model, path of its checkpoint as SCHP saves it)``."""
  net = ref.networks
  model = _randomize_(net.ResNet(net.Bottleneck, [3, 4, 6, 3], NUM_CLASSES),
                      ref)
  out = tmp_path_factory.mktemp('schp')
  # SCHP trains a DataParallelModel (names 'module.*') and saves
  # {'state_dict': ..., 'cycle_n': n} with save_schp_checkpoint.
  wrapped = ref.encoding.DataParallelModel(model)
  ref.schp_utils.save_schp_checkpoint(
      {'state_dict': wrapped.state_dict(), 'cycle_n': 1}, False, str(out),
      filename='schp_1_checkpoint.pth.tar')
  return model, str(out / 'schp_1_checkpoint.pth.tar')


@pytest.fixture(scope='module')
def schp_parser(checkpoint):
  return api.Parser.load(checkpoint[1], domain='lip', input_size=SIZE)


def _photo(h, w, name='astronaut'):
  """A real photo (scikit-image's sample data) resized to ``h x w``, RGB."""
  image = Image.fromarray(getattr(skimage.data, name)())
  return np.asarray(image.resize((w, h), Image.LANCZOS))


def _rel(ours, theirs):
  ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
  return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


def _schp_warp_is_copy(ref, meta, size):
  """SCHP's image -> input matrix is a pure integer translation."""
  m = ref.transforms.get_affine_transform(meta['center'], meta['scale'], 0,
                                          np.asarray(size))
  return bool(np.allclose(m[:, :2], np.eye(2), atol=1e-6) and
              np.allclose(m[:, 2], np.round(m[:, 2]), atol=1e-6))


def _ties(logits, tol):
  """Pixels whose two best classes are closer than ``tol``."""
  top2 = np.sort(logits, axis=-1)[..., -2:]
  return (top2[..., 1] - top2[..., 0]) < tol


def test_settings_match_simple_extractor(ref):
  settings = ref.simple_extractor_settings
  sizes = pretrained.SCHP_PREPROCESSING.input_sizes
  for schp_name, ours in (('lip', 'lip'), ('atr', 'atr'),
                          ('pascal', 'pascal_person_part')):
    assert tuple(settings[schp_name]['input_size']) == sizes[ours]
  imagenet = ref.networks.pretrained_settings['resnet101']['imagenet']
  assert imagenet['input_space'] == (
      pretrained.SCHP_PREPROCESSING.channel_order)
  np.testing.assert_array_equal(imagenet['mean'],
                                pretrained.SCHP_PREPROCESSING.mean)
  np.testing.assert_array_equal(imagenet['std'],
                                pretrained.SCHP_PREPROCESSING.std)


def test_network_logits_match_schp(checkpoint, schp_parser):
  """(a) Same input -> same fusion, decoder and edge logits.

  About a third of the InPlaceABN weights are negative: InPlaceABN scales by
  ``|weight| + eps``, so a plain BatchNorm reading of the weights would give
  a different network (relative difference above 1).
  """
  model, path = checkpoint
  state = torch.load(path)['state_dict']
  abn_weights = torch.cat([v for k, v in state.items()
                           if k.endswith('.weight') and v.ndim == 1])
  negative = float((abn_weights < 0).float().mean())
  print(f'{abn_weights.numel()} InPlaceABN weights, {negative:.0%} negative')
  assert 0.2 < negative < 0.4

  x = np.random.RandomState(0).randn(2, SIZE, SIZE, 3).astype(np.float32)
  with torch.no_grad():
    (seg, fusion), (edge,) = model(torch.from_numpy(x.transpose(0, 3, 1, 2)))
  logits, aux = schp_parser.module.apply(schp_parser.variables, x)
  for name, ours, theirs in (('fusion', logits['lip'], fusion),
                             ('decoder', aux['decoder_logits'], seg),
                             ('edge', aux['edge'], edge)):
    theirs = theirs.numpy().transpose(0, 2, 3, 1)
    assert ours.shape == theirs.shape, name
    rel = _rel(ours, theirs)
    print(f'{name}: max |diff| / max |SCHP| = {rel:.1e}')
    assert rel < RTOL, (name, rel)


# (height, width) of the photos at SCHP's LIP input (473): SCHP's warp is a
# pixel copy for the first three (scale 1, integer shift), not for the rest.
LIP_PHOTO_SIZES = ((473, 473), (301, 473), (473, 201), (512, 512),
                   (300, 451), (400, 600), (97, 130))


@pytest.mark.parametrize('size', LIP_PHOTO_SIZES)
def test_network_input_matches_simple_extractor(ref, size):
  """(b) The preprocessed network input, at LIP's 473 x 473.

  Identical where SCHP's warp copies pixels. Elsewhere both warps are
  bilinear with a zero border, but OpenCV rounds sample positions to 1/32
  pixel and weights to fixed point: a few values differ by one grey level.
  """
  h, w = size
  input_size = ref.simple_extractor_settings['lip']['input_size']
  rgb = _photo(h, w, 'coffee' if w > h else 'astronaut')
  dataset = ref.extractor_dataset.SimpleImagelistDataset(
      [rgb[..., ::-1]], input_size=input_size,
      transform=schp_reference.to_tensor_normalize(ref.networks))
  theirs, meta = dataset[0]
  theirs = theirs.numpy().transpose(1, 2, 0)

  matrix = ref.transforms.get_affine_transform(
      meta['center'], meta['scale'], 0, np.asarray(input_size))
  np.testing.assert_allclose(
      pretrained.schp_affine_matrix(h, w, tuple(input_size)), matrix,
      atol=1e-4)

  ours, layout = api.fit_schp(rgb, input_size[0])
  assert ours.shape == theirs.shape
  grey = np.abs(ours - theirs) * np.float32(
      pretrained.SCHP_PREPROCESSING.std) * 255
  off = float((grey > 0.5).mean())
  print(f'{h}x{w}: max {grey.max():.2f} grey levels apart, {off:.3%} of '
        'values differ')
  if _schp_warp_is_copy(ref, meta, input_size):
    assert size in LIP_PHOTO_SIZES[:3]
    np.testing.assert_array_equal(ours, theirs)
  else:
    assert size not in LIP_PHOTO_SIZES[:3]
    assert grey.max() < 1.01 and off < 0.002
  assert layout.size == (h, w)


def _simple_extractor(ref, model, folder, input_size):
  """``simple_extractor.py``'s main loop on ``folder``: ``{name: logits}``.

  The loop of the script (which cannot be run as is: it moves the model to
  CUDA), calling SCHP's dataset, network and ``transform_logits``.
  """
  dataset = ref.extractor_dataset.SimpleFolderDataset(
      root=folder, input_size=input_size,
      transform=schp_reference.to_tensor_normalize(ref.networks))
  out = {}
  with torch.no_grad():
    for i in range(len(dataset)):
      image, meta = dataset[i]
      output = model(image[None])
      upsample = torch.nn.Upsample(size=input_size, mode='bilinear',
                                   align_corners=True)
      upsample_output = upsample(output[0][-1][0].unsqueeze(0))
      upsample_output = upsample_output.squeeze().permute(1, 2, 0)
      out[meta['name']] = (ref.transforms.transform_logits(
          upsample_output.numpy(), meta['center'], meta['scale'],
          meta['width'], meta['height'], input_size=input_size),
                           _schp_warp_is_copy(ref, meta, input_size))
  return out


def _write_photos(folder, sizes):
  folder.mkdir()
  for i, (h, w) in enumerate(sizes):
    Image.fromarray(_photo(h, w, ('astronaut', 'coffee')[i % 2])).save(
        folder / f'p{i}.png')


def _compare_labels(label, logits, copy):
  """Label map vs SCHP's logits: equal off ties where SCHP's warps copy."""
  want = np.argmax(logits, axis=2)
  assert label.shape == want.shape
  ties = _ties(logits, RTOL * np.abs(logits).max())
  agree = float((label == want).mean())
  if copy:
    np.testing.assert_array_equal(label[~ties], want[~ties])
  else:
    assert agree > 0.99
  return agree, int(ties.sum())


# Photos at LIP's 473 input, where SCHP's warps copy pixels (the other case
# is covered at a smaller input below).
CLI_PHOTO_SIZES = ((473, 473), (301, 473))


def test_predict_cli_label_pngs_match_simple_extractor(ref, checkpoint,
                                                      tmp_path):
  """(c) ``python -m sst_jax.predict --model=F --schp_domain=lip`` writes
  ``simple_extractor.py``'s label PNGs (LIP's 473 x 473 input).

  Where SCHP's warps copy pixels, every label is SCHP's except at ties (best
  two logits within float32 noise).
  """
  model, path = checkpoint
  _write_photos(tmp_path / 'photos', CLI_PHOTO_SIZES)
  status = predict.main([f'--model={path}', '--schp_domain=lip',
                         f'--input={tmp_path / "photos"}',
                         f'--output={tmp_path / "out"}', '--batch_size=2'])
  assert status == 0
  theirs = _simple_extractor(ref, model, str(tmp_path / 'photos'),
                             ref.simple_extractor_settings['lip']['input_size'])
  copies = 0
  for i, (h, w) in enumerate(CLI_PHOTO_SIZES):
    logits, copy = theirs[f'p{i}.png']
    label = np.asarray(Image.open(tmp_path / 'out' / f'p{i}_lip_index.png'))
    assert label.shape == (h, w)
    agree, ties = _compare_labels(label, logits, copy)
    copies += copy
    print(f'{h}x{w} (copy: {copy}): labels agree on {agree:.3%}, {ties} ties')
  assert copies == 2


# Photos for the logits test at SIZE = 65: copies first, then not.
SMALL_PHOTO_SIZES = ((65, 65), (41, 65), (65, 33), (50, 80), (90, 70))


def test_logits_at_original_size_match_simple_extractor(ref, checkpoint,
                                                        schp_parser, tmp_path):
  """(c) ``Parser.logits`` vs ``simple_extractor``'s warped-back logits.

  At a 65 x 65 input: float32 noise where SCHP's warps copy pixels; within
  1% elsewhere (OpenCV's 1/32-pixel sample positions).
  """
  model, _ = checkpoint
  folder = tmp_path / 'photos'
  _write_photos(folder, SMALL_PHOTO_SIZES)
  theirs = _simple_extractor(ref, model, str(folder), [SIZE, SIZE])
  images = [api.read_image(folder / f'p{i}.png')
            for i in range(len(SMALL_PHOTO_SIZES))]
  ours = schp_parser.predict_batch(images, ['lip'])
  copies = 0
  for i, (h, w) in enumerate(SMALL_PHOTO_SIZES):
    logits, copy = theirs[f'p{i}.png']
    assert ours[i]['lip'].shape == logits.shape == (h, w, NUM_CLASSES)
    rel = _rel(ours[i]['lip'], logits)
    agree, ties = _compare_labels(api.argmax(ours[i]['lip']), logits, copy)
    print(f'{h}x{w} (copy: {copy}): logits rel diff {rel:.1e}, labels agree '
          f'on {agree:.3%}, {ties} ties')
    copies += copy
    assert rel < (RTOL if copy else 1e-2)
  assert copies == 3


def test_flip_tta_matches_schp_evaluate(ref, checkpoint, schp_parser):
  """SCHP's flip rule (``evaluate.multi_scale_testing``) is the default.

  SCHP averages the logits of the image and of its mirror image (left/right
  channels swapped back); ``average='probs'`` (sst_jax's rule for its own
  models) averages probabilities instead and gives other scores.
  """
  model, _ = checkpoint
  assert schp_parser.average == 'logits'
  rgb = _photo(SIZE, SIZE)  # SCHP's warp and its inverse are identities.
  dataset = ref.extractor_dataset.SimpleImagelistDataset(
      [rgb[..., ::-1]], input_size=[SIZE, SIZE],
      transform=schp_reference.to_tensor_normalize(ref.networks))
  image, meta = dataset[0]
  assert _schp_warp_is_copy(ref, meta, [SIZE, SIZE])
  batch = torch.stack([image, image.flip(dims=[-1])])
  with torch.no_grad():
    parsing, logits = ref.evaluate.multi_scale_testing(
        model, batch, crop_size=[SIZE, SIZE], flip=True, multi_scales=[1])
  ours = schp_parser.logits(rgb, flip=True)
  rel = _rel(ours, logits)
  print(f'flip TTA: rel diff {rel:.1e}')
  assert rel < RTOL
  ties = _ties(logits, RTOL * np.abs(logits).max())
  label = schp_parser.parse(rgb, flip=True)
  np.testing.assert_array_equal(label[~ties], parsing[~ties])
  probs_rule = schp_parser.logits(rgb, flip=True, average='probs')
  assert _rel(probs_rule, logits) > 0.01


def test_mean_iu_is_schp_miou_file(ref, tmp_path, capsys):
  """SCHP's "Mean IU" (``utils/miou.py``) is ``miou_all``; ``miou`` differs.

  Classes 12-19 never occur in the ground truth; 12-15 are predicted. SCHP
  averages IoU (and accuracy) over all 20 classes, absent ones scoring 0.
  """
  rng = np.random.default_rng(0)
  (tmp_path / 'segmentations').mkdir()
  (tmp_path / 'preds').mkdir()
  ids = [f'im{i}' for i in range(3)]
  (tmp_path / 'val_id.txt').write_text('\n'.join(ids) + '\n')
  confusion = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
  for name in ids:
    gt = rng.integers(0, 12, (24, 31)).astype(np.uint8)
    gt[rng.random(gt.shape) < 0.05] = 255
    pred = np.where(rng.random(gt.shape) < 0.6, gt,
                    rng.integers(0, 16, gt.shape)).astype(np.uint8)
    pred[gt == 255] = rng.integers(0, 16, int((gt == 255).sum()))
    Image.fromarray(gt).save(tmp_path / 'segmentations' / f'{name}.png')
    Image.fromarray(pred).save(tmp_path / 'preds' / f'{name}.png')
    confusion += np.asarray(metrics.confusion_matrix(pred, gt, NUM_CLASSES))
  theirs = ref.miou.compute_mean_ioU_file(str(tmp_path / 'preds'),
                                          NUM_CLASSES, str(tmp_path), 'val')
  ours = metrics.scores(confusion)
  assert ours['miou_all'] * 100 == pytest.approx(theirs['Mean IU'], abs=1e-9)
  assert ours['pixel_acc'] * 100 == pytest.approx(theirs['Pixel accuracy'],
                                                  abs=1e-9)
  assert ours['mean_acc_all'] * 100 == pytest.approx(theirs['Mean accuracy'],
                                                     abs=1e-9)
  assert ours['miou'] > ours['miou_all'] + 0.1
  line = evaluate.summary_line('lip', ours)
  assert f'{ours["miou"]:.4f}' in line and f'{ours["miou_all"]:.4f}' in line
  assert 'present' in line and 'Mean IU' in line
  capsys.readouterr()  # SCHP's function prints its scores.


def _png_chunks(path) -> dict:
  """``{chunk type: data}`` of a PNG's header and palette chunks."""
  data = open(path, 'rb').read()
  chunks, pos = {}, 8
  while pos < len(data):
    size = int.from_bytes(data[pos:pos + 4], 'big')
    kind = data[pos + 4:pos + 8].decode('ascii')
    if kind in ('IHDR', 'PLTE', 'tRNS'):
      chunks[kind] = data[pos + 8:pos + 8 + size]
    pos += 12 + size
  return chunks


# At SIZE = 65: SCHP's warps copy pixels for the first three, not the last.
LAYOUT_PHOTO_SIZES = ((65, 65), (41, 65), (65, 33), (50, 80))


def test_schp_layout_is_simple_extractor_output(ref, checkpoint, tmp_path):
  """(d) ``predict --layout=schp --logits`` writes SCHP's folder output.

  SCHP's ``simple_extractor.py`` itself (its ``main()``: dataset, network,
  inverse warp, ``get_palette``, PNG and ``.npy`` writing) and the CLI run
  on one folder with one checkpoint at a 65 x 65 input. The same files
  come out: same names, the same PNG header and palette chunks, labels
  equal off ties where SCHP's warps copy pixels, logits within float32
  noise there; and given SCHP's scores, the writer produces SCHP's PNG byte
  for byte.
  """
  model, path = checkpoint
  net = ref.networks

  def init_model(name, num_classes, pretrained):
    # The checkpoint's depth (the script hard-codes ResNet-101).
    assert (name, pretrained) == ('resnet101', None)
    return net.ResNet(net.Bottleneck, [3, 4, 6, 3], num_classes)

  folder, theirs, ours = (tmp_path / 'photos', tmp_path / 'schp',
                          tmp_path / 'ours')
  _write_photos(folder, LAYOUT_PHOTO_SIZES)
  schp_reference.run_simple_extractor(
      ['--dataset=lip', f'--model-restore={path}', f'--input-dir={folder}',
       f'--output-dir={theirs}', '--logits'],
      init_model=init_model, input_size=(SIZE, SIZE))
  # --batch_size=5: the program of test_logits_at_original_size (cached).
  status = predict.main([f'--model={path}', '--schp_domain=lip',
                         f'--input={folder}', f'--output={ours}',
                         f'--input_size={SIZE}', '--layout=schp', '--logits',
                         '--batch_size=5'])
  assert status == 0
  names = sorted(os.listdir(theirs))
  assert names == sorted(f'p{i}.{ext}' for i in range(4)
                         for ext in ('npy', 'png'))
  assert sorted(os.listdir(ours)) == names
  script = schp_reference.simple_extractor()
  assert predict.schp_palette(NUM_CLASSES) == script.get_palette(NUM_CLASSES)
  copies = 0
  for i, (h, w) in enumerate(LAYOUT_PHOTO_SIZES):
    their_png, our_png = theirs / f'p{i}.png', ours / f'p{i}.png'
    assert _png_chunks(our_png) == _png_chunks(their_png)
    with Image.open(their_png) as a, Image.open(our_png) as b:
      assert (a.mode, a.size) == (b.mode, b.size) == ('P', (w, h))
      assert a.getpalette() == b.getpalette()
      label = np.asarray(b)
    their_logits = np.load(theirs / f'p{i}.npy')
    our_logits = np.load(ours / f'p{i}.npy')
    assert our_logits.dtype == their_logits.dtype == np.float32
    assert our_logits.shape == their_logits.shape == (h, w, NUM_CLASSES)
    copy = (h, w) in LAYOUT_PHOTO_SIZES[:3]
    agree, ties = _compare_labels(label, their_logits, copy)
    rel = _rel(our_logits, their_logits)
    print(f'{h}x{w} (copy: {copy}): labels agree on {agree:.3%}, {ties} '
          f'ties, logits rel diff {rel:.1e}')
    assert rel < (RTOL if copy else 1e-2)
    copies += copy
    # The writer, given SCHP's own scores, writes SCHP's file exactly.
    (tmp_path / 'rewritten').mkdir(exist_ok=True)
    predict.write_schp_outputs(str(tmp_path / 'rewritten'), f'p{i}',
                               their_logits, save_logits=True)
    assert (tmp_path / 'rewritten' / f'p{i}.png').read_bytes() == (
        their_png.read_bytes())
    assert (tmp_path / 'rewritten' / f'p{i}.npy').read_bytes() == (
        (theirs / f'p{i}.npy').read_bytes())
  assert copies == 3
