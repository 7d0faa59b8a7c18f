"""Flip with per-domain label swap, scale/crop, evaluation resize matrices.

(Flip test-time augmentation, ``steps.predict_logits``: tests/test_steps.py.)
"""

import numpy as np
import pytest

import helpers
from sst_jax import domains as domains_lib
from sst_jax.data import transforms

ALL = sorted(domains_lib.DOMAINS)


@pytest.mark.parametrize('name', ALL)
def test_flip_twice_is_identity(name):
  d = domains_lib.get_domain(name)
  rng = np.random.default_rng(0)
  rec = helpers.random_record(rng, c=d.num_classes)
  rec['label'][0, :3] = 255
  img, lab = transforms.hflip(*transforms.hflip(rec['image'], rec['label'], d),
                              d)
  np.testing.assert_array_equal(img, rec['image'])
  np.testing.assert_array_equal(lab, rec['label'])


@pytest.mark.parametrize('name', ALL)
def test_flip_swaps_exactly_the_domain_pairs(name):
  d = domains_lib.get_domain(name)
  label = np.arange(d.num_classes, dtype=np.uint8)[None, :].repeat(2, 0)
  label = np.concatenate([label, np.full((2, 1), 255, np.uint8)], axis=1)
  _, flipped = transforms.hflip(np.zeros(label.shape + (3,), np.uint8), label,
                                d)
  back = flipped[:, ::-1]  # undo the spatial flip, keep the class swap
  expected = np.arange(d.num_classes)
  for a, b in d.flip_pairs:
    expected[a], expected[b] = b, a
  np.testing.assert_array_equal(back[0, :-1], expected)
  assert back[0, -1] == 255
  assert (len(d.flip_pairs) == 0) == ('pascal' in name)


def test_train_transform_never_invents_label_values():
  d = domains_lib.get_domain('cihp')
  rng = np.random.default_rng(3)
  rec = helpers.random_record(rng, 40, 50, c=6)
  values = set(np.unique(rec['label'])) | {255}
  for seed in range(5):
    img, lab = transforms.train_transform(
        rec, np.random.default_rng(seed), d, (32, 32), (0.5, 1.7),
        rotation=15, jitter=0.3)
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8
    assert lab.shape == (32, 32)
    flipped_values = {int(d.flip_permutation[v]) if v < d.num_classes else v
                      for v in values}
    assert set(np.unique(lab)) <= values | flipped_values


def test_eval_transform_resize_matrix_is_identity_at_native_size():
  rng = np.random.default_rng(4)
  rec = helpers.random_record(rng, 16, 16)
  out = transforms.eval_transform(rec, 16, 20)
  np.testing.assert_allclose(out['resize_h'][:16, :16], np.eye(16))
  assert not out['resize_h'][16:].any()
  assert (out['label'][16:] == 255).all()
