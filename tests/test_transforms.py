"""Flip with per-domain label swap, scale/crop, flip test-time augmentation."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sst_jax import domains as domains_lib
from sst_jax import steps
from sst_jax.data import transforms

ALL = sorted(domains_lib.DOMAINS)


def _record(rng, h=24, w=30, c=20):
  return {'image': rng.integers(0, 255, (h, w, 3), dtype=np.uint8),
          'label': rng.integers(0, c, (h, w), dtype=np.uint8)}


@pytest.mark.parametrize('name', ALL)
def test_flip_twice_is_identity(name):
  d = domains_lib.get_domain(name)
  rng = np.random.default_rng(0)
  rec = _record(rng, c=d.num_classes)
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
  rec = _record(rng, 40, 50, c=6)
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
  rec = _record(rng, 16, 16)
  out = transforms.eval_transform(rec, 16, 20)
  np.testing.assert_allclose(out['resize_h'][:16, :16], np.eye(16))
  assert not out['resize_h'][16:].any()
  assert (out['label'][16:] == 255).all()


class PixelModel(nn.Module):
  """A position-sensitive fake parser: logits depend on x and image content."""
  num_classes: dict

  @nn.compact
  def __call__(self, image, train=False, heads=None):
    names = heads or list(self.num_classes)
    w = image.shape[2]
    ramp = jnp.linspace(-1, 1, w)[None, None, :, None]
    out = {}
    for n in names:
      c = self.num_classes[n]
      base = nn.Conv(c, (3, 3), name=f'head_{n}')(image)
      out[n] = base + ramp * jnp.arange(c)
    return out, {}


@pytest.mark.parametrize('name', ['synthetic_cihp', 'atr', 'lip', 'pascal_person_part'])
def test_flip_tta_swaps_the_right_channels(name):
  d = domains_lib.get_domain(name)
  model = PixelModel({name: d.num_classes})
  image = jax.random.normal(jax.random.key(0), (2, 12, 14, 3))
  variables = model.init(jax.random.key(1), image)
  got = steps.predict_logits(variables, image, model=model, heads=(name,),
                             flip_perms={name: d.flip_permutation})[name]
  plain = model.apply(variables, image)[0][name]
  flipped = model.apply(variables, image[:, :, ::-1])[0][name]
  unflipped = flipped[:, :, ::-1][..., d.flip_permutation]
  expected = jnp.log((jax.nn.softmax(plain) + jax.nn.softmax(unflipped)) / 2)
  np.testing.assert_allclose(got, expected, atol=1e-5)
  if d.flip_pairs:  # Without the swap the result must differ.
    wrong = jnp.log((jax.nn.softmax(plain) +
                     jax.nn.softmax(flipped[:, :, ::-1])) / 2)
    assert not np.allclose(got, wrong, atol=1e-3)
  # SCHP's rule: the mean of the two views' logits.
  mean_logits = steps.predict_logits(
      variables, image, model=model, heads=(name,),
      flip_perms={name: d.flip_permutation}, average='logits')[name]
  np.testing.assert_allclose(mean_logits, (plain + unflipped) / 2, atol=1e-5)
  assert not np.allclose(mean_logits, got, atol=1e-3)


class StrideFourModel(nn.Module):
  """A fake parser whose logits, like the real one's, are at stride 4."""
  num_classes: dict

  @nn.compact
  def __call__(self, image, train=False, heads=None):
    x = nn.avg_pool(image, (4, 4), (4, 4))
    ramp = jnp.linspace(-1, 1, x.shape[2])[None, None, :, None]
    return {n: nn.Conv(self.num_classes[n], (3, 3), name=f'head_{n}')(x) +
               ramp * jnp.arange(self.num_classes[n])
            for n in heads or list(self.num_classes)}, {}


def test_label_grid_logits_compose_the_two_resizes_exactly():
  """One view: the composed [L, h] matrices equal upsample-then-map."""
  names = ('pascal_person_part', 'lip')
  model = StrideFourModel({n: domains_lib.get_domain(n).num_classes
                           for n in names})
  rng = np.random.default_rng(5)
  # Originals smaller and larger than the 32x32 input, non-square, padded
  # into a 56x56 label grid: the resize matrices are far from the identity.
  records = [_record(rng, 37, 50), _record(rng, 50, 29), _record(rng, 20, 24)]
  examples = [transforms.eval_transform(r, 32, 56) for r in records]
  batch = {k: jnp.asarray(np.stack([e[k] for e in examples]))
           for k in examples[0]}
  batch['domain'] = jnp.asarray([0, 1, 1], jnp.int32)
  variables = model.init(jax.random.key(0), steps.normalize_images(
      batch['image'], batch['image_hw']))
  got = steps.label_grid_logits(variables, batch, model=model,
                                domain_names=names)
  logits = steps.predict_logits(variables, batch['image'], model=model,
                                heads=names, image_hw=batch['image_hw'])
  assert logits['lip'].shape[1:3] == (32, 32)
  own = steps.own_domain_logits(logits, batch['domain'], names)
  want = jnp.einsum('bmw,blwc->blmc', batch['resize_w'],
                    jnp.einsum('blh,bhwc->blwc', batch['resize_h'], own))
  assert got.shape == (3, 56, 56, 20)
  # Sample 0 is PASCAL (7 classes): its padding channels stay out of argmax.
  assert (got[0, :37, :50, 7:] < -1e8).all()
  valid = np.asarray(want) > -1e8
  np.testing.assert_allclose(np.asarray(got)[valid], np.asarray(want)[valid],
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(
      steps.eval_predictions(variables, batch, model=model,
                             domain_names=names), jnp.argmax(want, -1))
