"""Prediction: any image format/size, flip TTA, index PNGs, CLI behaviour."""

import os
import subprocess
import sys

import jax
import numpy as np
from PIL import Image
import pytest

import sst_jax
from sst_jax import api
from sst_jax import checkpointing
from sst_jax import config_lib
from sst_jax import export as export_lib
from sst_jax import optim
from sst_jax import predict
from sst_jax import recipe
from sst_jax import train
from sst_jax import visualize

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', 'configs'))
import tiny  # pylint: disable=g-import-not-at-top,wrong-import-position

import helpers  # pylint: disable=g-import-not-at-top,wrong-import-position

SIZE = 32  # tiny.py's data.eval_input_size


def _write_random_checkpoint(workdir, seed=0):
  """A baseline tiny checkpoint (training's own save path), random weights."""
  config = tiny.get_config('baseline')
  domains = config_lib.validate_config(config)
  model, sst_model = recipe.build_models(config, domains)
  tx = optim.make_optimizer(config.optim, config.total_steps)
  abstract = jax.eval_shape(lambda r: recipe.init_train_state(
      r, model=model, sst_model=sst_model, tx=tx, image_size=SIZE),
                            jax.random.key(0))
  state = helpers.random_like(abstract, seed)
  manager = checkpointing.make_manager(workdir, async_save=False)
  checkpointing.save(manager, 1, state, {'next_index': 1},
                     train.checkpoint_metadata(config, domains, 1), force=True)
  manager.wait_until_finished()
  manager.close()


@pytest.fixture(scope='module')
def model_dirs(tmp_path_factory):
  root = tmp_path_factory.mktemp('predict')
  workdir, exported = str(root / 'work'), str(root / 'export')
  _write_random_checkpoint(workdir)
  export_lib.export(workdir, exported, serialize=False)
  return workdir, exported


@pytest.fixture(scope='module')
def parser(model_dirs):
  return sst_jax.Parser.load(model_dirs[1])


def _photo(h, w, seed=0):
  """A smooth random colour image (so resizing keeps structure)."""
  rng = np.random.default_rng(seed)
  small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
  return np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR))


def test_import_is_light_and_parser_is_lazy():
  code = ('import sys, sst_jax; assert "jax" not in sys.modules; '
          'P = sst_jax.Parser; assert P.__module__ == "sst_jax.api"')
  subprocess.run([sys.executable, '-c', code], check=True, timeout=120)


def test_any_format_and_size_gives_original_size(parser, tmp_path):
  rgb = _photo(37, 53)
  Image.fromarray(rgb).save(tmp_path / 'odd.png')
  Image.fromarray(rgb).convert('L').save(tmp_path / 'grey.png')
  rgba = np.concatenate([rgb, np.full((37, 53, 1), 255, np.uint8)], -1)
  rgba[:10, :10, 3] = 0  # transparent corner -> white
  Image.fromarray(rgba).save(tmp_path / 'rgba.png')
  Image.fromarray(rgb).convert('P').save(tmp_path / 'palette.png')
  # Stored 40 wide x 24 tall, EXIF orientation 6 (rotate 90 CW to display).
  exif = Image.Exif()
  exif[0x0112] = 6
  Image.fromarray(_photo(24, 40)).save(tmp_path / 'rot.jpg', exif=exif)
  expected = {'odd.png': (37, 53), 'grey.png': (37, 53), 'rgba.png': (37, 53),
              'palette.png': (37, 53), 'rot.jpg': (40, 24)}
  for name, shape in expected.items():
    label = parser.parse(str(tmp_path / name))
    assert label.shape == shape and label.dtype == np.uint8, name
  assert api.read_image(str(tmp_path / 'rgba.png'))[:10, :10].min() == 255
  assert api.read_image(rgba)[:10, :10].min() == 255
  grey = api.read_image(str(tmp_path / 'grey.png'))
  assert grey.shape == (37, 53, 3)
  np.testing.assert_array_equal(grey[..., 0], grey[..., 2])
  # Arrays and PIL images work too; multi-scale keeps the size.
  assert parser.parse(rgb, scales=(0.75, 1.0, 1.25)).shape == (37, 53)
  assert parser.parse(Image.fromarray(rgb)).shape == (37, 53)
  probs = parser.probabilities(rgb, 'synthetic_cihp')
  assert probs.shape == (37, 53, 20)
  np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
  all_labels = parser.parse_all(rgb)
  assert {k: v.shape for k, v in all_labels.items()} == {
      'synthetic_pascal': (37, 53), 'synthetic_cihp': (37, 53)}
  np.testing.assert_array_equal(all_labels['synthetic_cihp'],
                                parser.parse(rgb, 'synthetic_cihp'))


def test_flip_tta_matches_manual_flip(parser):
  """Flip TTA == flip, predict, flip back, swap left/right, average probs.

  A SIZE x SIZE image fills the network input exactly (no resize, no pad),
  so flipping the image is flipping the network input.
  """
  domain = parser.label_domains['synthetic_cihp']
  assert domain.flip_pairs
  assert parser.average == 'probs'  # sst_jax's rule for its own models.
  image = _photo(SIZE, SIZE, seed=4)
  plain = parser.logits(image, domain.name)
  mirrored = parser.logits(image[:, ::-1].copy(), domain.name)[:, ::-1]
  swapped = mirrored[..., domain.flip_permutation]
  manual = (api.softmax(plain) + api.softmax(swapped)) / 2
  tta = api.softmax(parser.logits(image, domain.name, flip=True))
  diff = np.abs(tta - manual).max()
  unswapped = np.abs(tta - (api.softmax(plain) + api.softmax(mirrored)) / 2
                     ).max()
  print(f'flip TTA vs manual: {diff:.2e}; without the swap: {unswapped:.2e}')
  assert diff < 1e-5
  assert unswapped > 100 * max(diff, 1e-7)


def test_cli_index_png_round_trip_and_workdir_equals_export(model_dirs,
                                                            tmp_path):
  workdir, exported = model_dirs
  images = tmp_path / 'in'
  images.mkdir()
  rgb = _photo(37, 53, seed=1)
  Image.fromarray(rgb).save(images / 'a.png')
  Image.fromarray(_photo(50, 30, seed=2)).save(images / 'b.jpg')
  outs = {}
  for name, model in (('work', workdir), ('export', exported)):
    out = tmp_path / name
    assert predict.main([f'--model={model}', f'--input={images}',
                         f'--output={out}', '--domain=all', '--save_probs',
                         '--batch_size=2']) == 0
    outs[name] = out
  parser = sst_jax.Parser.load(exported)
  labels = parser.parse_all(rgb)
  for d, label in labels.items():
    index = Image.open(outs['work'] / f'a_{d}_index.png')
    assert index.mode == 'P'
    np.testing.assert_array_equal(np.asarray(index), label)
    color = np.asarray(Image.open(outs['work'] / f'a_{d}_color.png'))
    np.testing.assert_array_equal(
        color, visualize.colorize(label, parser.label_domains[d].palette))
    overlay = Image.open(outs['work'] / f'a_{d}_overlay.png')
    assert overlay.size == (53, 37)
    probs = np.load(outs['work'] / f'a_{d}_probs.npy')
    assert probs.dtype == np.float16
    assert probs.shape == (37, 53, parser.label_domains[d].num_classes)
    # The label's class holds the top probability (up to float16 ties).
    at_label = np.take_along_axis(probs, label[..., None].astype(int), -1)
    assert (at_label[..., 0] >= probs.max(-1) - 1e-3).all()
    np.testing.assert_allclose(probs.astype(np.float32).sum(-1), 1, atol=1e-2)
  assert len(set(np.unique(labels['synthetic_cihp']))) > 1
  files = sorted(os.listdir(outs['work']))
  assert files == sorted(os.listdir(outs['export'])) and len(files) == 16
  for f in files:
    if f.endswith('_index.png'):
      np.testing.assert_array_equal(
          np.asarray(Image.open(outs['work'] / f)),
          np.asarray(Image.open(outs['export'] / f)))


def test_cli_corrupt_image_is_reported_and_others_written(model_dirs,
                                                          tmp_path, capsys):
  images = tmp_path / 'in'
  images.mkdir()
  for i in range(3):
    Image.fromarray(_photo(20 + 7 * i, 31, seed=i)).save(images / f'ok{i}.png')
  (images / 'broken.jpg').write_bytes(b'\xff\xd8 this is not a jpeg')
  (images / 'notes.txt').write_text('ignored: not an image extension')
  out = tmp_path / 'out'
  status = predict.main([f'--model={model_dirs[1]}', f'--input={images}',
                         f'--output={out}', '--domain=synthetic_pascal',
                         '--flip', '--batch_size=2'])
  err = capsys.readouterr().err
  assert status == 1
  assert [l for l in err.splitlines() if 'broken.jpg' in l] == [
      l for l in err.splitlines() if l.startswith('error:')]
  assert 'img/s' in err and 'ETA' in err
  assert 'parsed 3 of 4 images (1 failed)' in err
  for i in range(3):
    label = np.asarray(Image.open(out / f'ok{i}_synthetic_pascal_index.png'))
    assert label.shape == (20 + 7 * i, 31)
  assert not [f for f in os.listdir(out) if f.startswith('broken')]


def test_cli_unknown_domain_lists_model_domains(model_dirs, tmp_path, capsys):
  Image.fromarray(_photo(9, 9)).save(tmp_path / 'x.png')
  status = predict.main([f'--model={model_dirs[0]}',
                         f'--input={tmp_path / "x.png"}',
                         f'--output={tmp_path / "o"}', '--domain=lip'])
  err = capsys.readouterr().err
  assert status == 2
  assert "unknown domain 'lip'" in err
  assert 'synthetic_pascal, synthetic_cihp' in err


def test_schp_checkpoint_file(tmp_path):
  """An SCHP-layout state dict (tiny widths, random) parses via --model."""
  helpers.fake_schp_npz(tmp_path / 'schp.npz', 'pascal_person_part')
  Image.fromarray(_photo(45, 30)).save(tmp_path / 'p.png')
  status = predict.main([f'--model={tmp_path / "schp.npz"}',
                         '--schp_domain=pascal_person_part', '--flip',
                         '--input_size=48', f'--input={tmp_path / "p.png"}',
                         f'--output={tmp_path / "o"}'])
  assert status == 0
  label = np.asarray(Image.open(
      tmp_path / 'o' / 'p_pascal_person_part_index.png'))
  assert label.shape == (45, 30) and label.max() < 7


@pytest.mark.parametrize('fit', ['pad', 'schp'])
def test_fit_and_map_back_are_aligned(fit):
  """Network input -> original size lands on the original pixel centres.

  Bilinear resampling reproduces a linear ramp exactly, so fitting the ramp
  into the input and mapping the input back must return it (up to uint8
  rounding); half a pixel of misalignment would be off by 5.
  """
  from sst_jax.models import pretrained  # pylint: disable=g-import-not-at-top
  h, w = 20, 13
  yy, xx = np.mgrid[:h, :w]
  ramp = (10 * yy + 3 * xx).astype(np.float32)
  image = np.repeat(ramp[..., None], 3, -1).astype(np.uint8)
  if fit == 'pad':
    canvas, layout = api.fit_pad(image, 32)
    assert canvas.dtype == np.uint8  # normalized by the compiled forward
    pixels = canvas.astype(np.float32)
  else:
    canvas, layout = api.fit_schp(image, 32)
    pre = pretrained.SCHP_PREPROCESSING
    pixels = (canvas * np.array(pre.std) + np.array(pre.mean)) * 255
  back = api.map_back(pixels.astype(np.float32), layout)[..., 0]
  assert back.shape == (h, w)
  # Border pixels are clamped by the resampling; compare the interior.
  err = np.abs(back - ramp)[1:-1, 1:-1].max()
  print(f'{fit}: max interior error {err:.3f}')
  assert err < 1.5  # Both fits round their bilinear output to uint8.


def test_schp_layout_writes_what_simple_extractor_writes(model_dirs, parser,
                                                         tmp_path):
  """``--layout=schp --logits``: ``<stem>.png`` and ``<stem>.npy`` only.

  The PNG is paletted with exactly the domain's colours (SCHP's
  ``get_palette``, checked against SCHP's own code in
  ``test_schp_parity.py``) at the original size, its pixels the argmax of
  the float32 logits in the ``.npy``, which are ``Parser.logits``.
  """
  domain = 'synthetic_cihp'
  photos = tmp_path / 'photos'
  photos.mkdir()
  sizes = {'a': (37, 53), 'b': (64, 20)}
  Image.fromarray(_photo(*sizes['a'])).save(photos / 'a.jpg')
  Image.fromarray(_photo(*sizes['b'], seed=1)).save(photos / 'b.png')
  out = tmp_path / 'out'
  status = predict.main([f'--model={model_dirs[1]}', f'--input={photos}',
                         f'--output={out}', f'--domain={domain}',
                         '--layout=schp', '--logits', '--batch_size=2'])
  assert status == 0
  assert sorted(os.listdir(out)) == ['a.npy', 'a.png', 'b.npy', 'b.png']
  num_classes = parser.label_domains[domain].num_classes
  palette = predict.schp_palette(num_classes)
  np.testing.assert_array_equal(np.reshape(palette, (-1, 3)),
                                parser.label_domains[domain].palette)
  for stem, (h, w) in sizes.items():
    with Image.open(out / f'{stem}.png') as im:
      assert (im.format, im.mode, im.size) == ('PNG', 'P', (w, h))
      assert im.getpalette() == palette
      label = np.asarray(im)
    logits = np.load(out / f'{stem}.npy')
    assert logits.dtype == np.float32
    assert logits.shape == (h, w, num_classes)
    np.testing.assert_array_equal(label, np.argmax(logits, axis=-1))
    assert len(np.unique(label)) > 1
    path = next(photos.glob(f'{stem}.*'))
    np.testing.assert_allclose(logits, parser.logits(path, domain),
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize('flags', [['--domain=all'], ['--save_probs']])
def test_schp_layout_refuses_what_it_cannot_write(model_dirs, tmp_path,
                                                  capsys, flags):
  Image.fromarray(_photo(20, 20)).save(tmp_path / 'p.png')
  status = predict.main([f'--model={model_dirs[1]}',
                         f'--input={tmp_path / "p.png"}',
                         f'--output={tmp_path / "out"}', '--layout=schp',
                         *flags])
  assert status == 2
  assert '--layout=schp' in capsys.readouterr().err
  assert not (tmp_path / 'out').exists()
