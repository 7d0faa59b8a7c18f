"""Tests of the embedded synthetic multi-domain human dataset."""

from __future__ import annotations

import numpy as np
import pytest

from sst_jax import domains
from sst_jax.data import synthetic

_GARMENT_DOMAINS = ('synthetic_atr', 'synthetic_cihp', 'synthetic_lip')
_SIZE = (96, 96)


def _render(domain, index, split='train', seed=0, size=_SIZE):
  rng = synthetic.example_rng(seed, domain, split, index)
  return synthetic.render_example(domain, rng, size)


def _part_flip_lut():
  lut = np.arange(256, dtype=np.uint8)
  for a, b in synthetic.PART_FLIP_PAIRS:
    lut[a], lut[b] = b, a
  return lut


def test_tables_cover_every_pair_with_valid_ids():
  for name in synthetic.SYNTHETIC_DOMAINS:
    table = synthetic.DOMAIN_TABLES[name]
    assert table.shape == (len(synthetic.PART_NAMES),
                           len(synthetic.APPEARANCE_NAMES))
    assert table.dtype == np.uint8
    assert table.max() < domains.get_domain(name).num_classes
    # Background part with background appearance is background everywhere.
    assert table[0, 0] == 0


def test_default_split_sizes_keep_pascal_smallest():
  sizes = {d: len(synthetic.SyntheticSource(d))
           for d in synthetic.SYNTHETIC_DOMAINS}
  assert sizes == synthetic.TRAIN_SIZES
  assert min(sizes, key=sizes.get) == 'synthetic_pascal'
  assert len(synthetic.SyntheticSource('synthetic_lip', 'validation')) == 100


def test_source_is_deterministic_and_indices_differ():
  a = synthetic.SyntheticSource('synthetic_cihp', image_size=_SIZE,
                                num_examples=5)
  b = synthetic.SyntheticSource('synthetic_cihp', image_size=_SIZE,
                                num_examples=5)
  x, y = a[3], b[np.int64(3)]
  np.testing.assert_array_equal(x['image'], y['image'])
  np.testing.assert_array_equal(x['label'], y['label'])
  assert x['id'] == y['id'] == 'synthetic_cihp/train/000003'
  other = a[4]
  assert not np.array_equal(x['image'], other['image'])
  assert not np.array_equal(x['label'], other['label'])
  reseeded = synthetic.SyntheticSource('synthetic_cihp', image_size=_SIZE,
                                       num_examples=5, seed=1)[3]
  assert not np.array_equal(x['image'], reseeded['image'])


def test_train_and_validation_streams_differ():
  for domain in synthetic.SYNTHETIC_DOMAINS:
    train = synthetic.SyntheticSource(domain, 'train', image_size=_SIZE)
    val = synthetic.SyntheticSource(domain, 'validation', image_size=_SIZE)
    for i in range(3):
      assert not np.array_equal(train[i]['image'], val[i]['image'])
    assert val[0]['id'].startswith(f'{domain}/validation/')


def test_example_arrays_and_any_resolution():
  for size in [(97, 61), (32, 48), (128, 128)]:
    ex = synthetic.SyntheticSource('synthetic_lip', image_size=size,
                                   num_examples=2)[1]
    assert ex['image'].shape == size + (3,) and ex['image'].dtype == np.uint8
    assert ex['label'].shape == size and ex['label'].dtype == np.uint8
    assert set(ex) == {'image', 'label', 'id'}
  ex = _render('synthetic_cihp', 0, size=(97, 61))
  for key in ('parts', 'appearance', 'label'):
    assert ex[key].shape == (97, 61) and ex[key].dtype == np.uint8
  # People are drawn at that size, not clipped away.
  assert 0.1 < np.mean(ex['parts'] > 0) < 0.9


def test_people_scale_with_resolution():
  small = np.mean([np.mean(_render('synthetic_atr', i, size=(64, 64))
                           ['parts'] > 0) for i in range(10)])
  large = np.mean([np.mean(_render('synthetic_atr', i, size=(192, 192))
                           ['parts'] > 0) for i in range(10)])
  assert small == pytest.approx(large, rel=0.15)


def test_index_errors_and_bad_arguments():
  source = synthetic.SyntheticSource('synthetic_atr', num_examples=3,
                                     image_size=(16, 16))
  assert len(source) == 3
  with pytest.raises(IndexError):
    source[3]
  with pytest.raises(IndexError):
    source[np.int32(7)]
  np.testing.assert_array_equal(source[-1]['label'], source[2]['label'])
  with pytest.raises(ValueError, match='synthetic_pascal'):
    synthetic.SyntheticSource('pascal')
  with pytest.raises(ValueError, match='validation'):
    synthetic.SyntheticSource('synthetic_atr', 'test')
  with pytest.raises(ValueError, match='synthetic_lip'):
    synthetic.to_domain_label(np.zeros((2, 2), np.uint8),
                              np.zeros((2, 2), np.uint8), 'lip')
  assert source.domain is domains.get_domain('synthetic_atr')


def test_labels_within_domain_range_and_are_the_mapping():
  for domain in synthetic.SYNTHETIC_DOMAINS:
    num_classes = domains.get_domain(domain).num_classes
    for i in range(6):
      ex = _render(domain, i)
      assert ex['label'].max() < num_classes
      assert ex['parts'].max() < len(synthetic.PART_NAMES)
      assert ex['appearance'].max() < len(synthetic.APPEARANCE_NAMES)
      np.testing.assert_array_equal(
          ex['label'],
          synthetic.to_domain_label(ex['parts'], ex['appearance'], domain))


def test_same_render_is_consistent_across_domains():
  pascal = domains.get_domain('synthetic_pascal').classes
  cihp = domains.get_domain('synthetic_cihp').classes
  atr = domains.get_domain('synthetic_atr').classes
  head_classes = [cihp.index(c) for c in ('hat', 'hair', 'sunglasses', 'face')]
  arm_classes = [cihp.index(c) for c in ('left-arm', 'right-arm', 'glove')]
  for i in range(8):
    ex = _render('synthetic_cihp', i)
    labels = {d: synthetic.to_domain_label(ex['parts'], ex['appearance'], d)
              for d in synthetic.SYNTHETIC_DOMAINS}
    p, c, a = (labels['synthetic_pascal'], labels['synthetic_cihp'],
               labels['synthetic_atr'])
    # PASCAL's head is exactly hat + hair + sunglasses + face (incl. neck).
    np.testing.assert_array_equal(p == pascal.index('head'),
                                  np.isin(c, head_classes))
    # Arm skin and gloves are arm parts in PASCAL.
    assert np.all(np.isin(p[np.isin(c, arm_classes)],
                          [pascal.index('upper-arms'),
                           pascal.index('lower-arms')]))
    # Backgrounds agree, except that ATR labels bags.
    np.testing.assert_array_equal(p == 0, c == 0)
    assert np.all((a == 0) <= (p == 0))
    np.testing.assert_array_equal((p == 0) & (a != 0), a == atr.index('bag'))
    # The same pixel carries different labels in different domains.
    person = p > 0
    assert np.any(c[person] != p[person])


def test_sides_come_from_the_body_part_map():
  for domain in _GARMENT_DOMAINS:
    table = synthetic.DOMAIN_TABLES[domain]
    classes = domains.get_domain(domain).classes
    for part, part_name in enumerate(synthetic.PART_NAMES):
      for app in range(len(synthetic.APPEARANCE_NAMES)):
        name = classes[table[part, app]]
        if name.startswith(('left-', 'right-')):
          assert part_name.split('-')[0] == name.split('-')[0], (
              domain, part_name, synthetic.APPEARANCE_NAMES[app], name)


def test_person_left_arm_is_on_the_image_right():
  cihp = domains.get_domain('synthetic_cihp').classes
  for i in range(10):
    ex = _render('synthetic_atr', i)  # one frontal person per image
    _, xs = np.nonzero(ex['parts'] == synthetic.PART_NAMES.index('torso'))
    torso_x = xs.mean()
    for part, sign in (('left-upper-arm', 1), ('right-upper-arm', -1)):
      _, ax = np.nonzero(ex['parts'] == synthetic.PART_NAMES.index(part))
      assert sign * (ax.mean() - torso_x) > 0, (i, part)
    label = synthetic.to_domain_label(ex['parts'], ex['appearance'],
                                      'synthetic_cihp')
    _, lx = np.nonzero(label == cihp.index('left-arm'))
    _, rx = np.nonzero(label == cihp.index('right-arm'))
    if lx.size and rx.size:
      assert lx.mean() > torso_x > rx.mean()


def test_flip_with_domain_lut_matches_flipped_body_parts():
  part_lut = _part_flip_lut()
  for domain in synthetic.SYNTHETIC_DOMAINS:
    lut = domains.get_domain(domain).flip_label_lut()
    for i in range(4):
      ex = _render(domain, i)
      flipped_label = lut[ex['label'][:, ::-1]]
      expected = synthetic.to_domain_label(part_lut[ex['parts'][:, ::-1]],
                                           ex['appearance'][:, ::-1], domain)
      np.testing.assert_array_equal(flipped_label, expected)
    # Without the swap the flipped labelling is wrong wherever sides show.
    if domain != 'synthetic_pascal':
      ex = _render(domain, 0)
      naive = ex['label'][:, ::-1]
      expected = synthetic.to_domain_label(part_lut[ex['parts'][:, ::-1]],
                                           ex['appearance'][:, ::-1], domain)
      assert np.any(naive != expected)


def _class_pixels(domain, class_name, num_images):
  index = domains.get_domain(domain).classes.index(class_name)
  pixels = [ex['image'][ex['label'] == index]
            for ex in (_render(domain, i) for i in range(num_images))]
  return np.concatenate(pixels).astype(np.float64)


def test_colour_does_not_identify_garments():
  upper = _class_pixels('synthetic_cihp', 'upper-clothes', 40)
  pants = _class_pixels('synthetic_cihp', 'pants', 40)
  assert len(upper) > 1000 and len(pants) > 1000
  assert np.linalg.norm(upper.mean(0) - pants.mean(0)) < 30
  bins = np.linspace(0, 256, 5)
  hist_u, _ = np.histogramdd(upper, bins=(bins, bins, bins))
  hist_p, _ = np.histogramdd(pants, bins=(bins, bins, bins))
  overlap = np.minimum(hist_u / hist_u.sum(), hist_p / hist_p.sum()).sum()
  assert overlap > 0.6


def test_every_class_appears_in_a_good_share_of_images():
  for domain in synthetic.SYNTHETIC_DOMAINS:
    classes = domains.get_domain(domain).classes
    present = np.zeros(len(classes))
    num_images = 40
    for i in range(num_images):
      ex = _render(domain, i, split='validation')
      present += np.bincount(ex['label'].ravel(), minlength=len(classes)) > 0
    share = present / num_images
    assert np.all(share >= 0.05), (domain, dict(zip(classes, share)))


def test_domain_styles_differ():
  def mean_people(domain):
    counts = []
    for i in range(12):
      rng = synthetic.example_rng(0, domain, 'train', i)
      people = synthetic._sample_people(rng, synthetic.STYLES[domain], 64, 64)
      counts.append(len(people))
    return np.mean(counts)
  assert mean_people('synthetic_atr') == mean_people('synthetic_lip') == 1
  assert mean_people('synthetic_cihp') > mean_people('synthetic_pascal') > 1


def test_contact_sheet_is_an_rgb_image():
  sheet = synthetic.contact_sheet(num_per_domain=1, size=(40, 40))
  assert sheet.dtype == np.uint8 and sheet.ndim == 3 and sheet.shape[2] == 3
  assert sheet.shape[0] > 4 * 2 * 40
