"""Input pipeline: label integrity, determinism, resume, sharding, mixing, eval.

The unit tests read small in-memory sources with known label values (through
a patched ``make_source``); the end-to-end tests build the four benchmarks'
dummy data to array_record and train the real configs on it.
"""

import json
import os
import sys

import numpy as np
import pytest

from sst_jax import domains as domains_lib
from sst_jax import config_lib
from sst_jax.data import pipeline
from sst_jax.data import sources as sources_lib
from sst_jax.data import synthetic

# Label values per domain in the fake sources: neighbouring regions carry
# values far apart (0 | 2 | 14), so any interpolation would invent 1, 7, 8...
VALUES = {'cihp': (0, 2, 14), 'pascal_person_part': (0, 3, 6)}


class FakeSource:
  """``n`` examples of varied size; example ``i`` has ``label[0, 0] == i``."""

  def __init__(self, domain, n, values, min_size=12, max_size=40):
    self.domain = domains_lib.get_domain(domain)
    self._n, self._values = n, values
    self._sizes = (min_size, max_size)

  def __len__(self):
    return self._n

  def __getitem__(self, index):
    rng = np.random.default_rng(int(index))
    h, w = rng.integers(*self._sizes, size=2)
    label = np.full((h, w), self._values[0], np.uint8)
    label[:, w // 3:] = self._values[1]
    label[h // 2:, 2 * w // 3:] = self._values[2]
    label[0, 0] = index
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return {'image': image, 'label': label, 'id': str(index)}


def data_config(**overrides):
  cfg = config_lib.base_config().data
  cfg.crop_size = 24
  cfg.scale_range = (0.5, 1.7)
  cfg.eval_input_size = 32
  cfg.eval_label_size = 48
  cfg.num_threads = 2
  cfg.prefetch = 2
  for key, value in overrides.items():
    cfg[key] = value
  return cfg


@pytest.fixture
def fake_sources(monkeypatch):
  """Patches ``make_source``; train splits have 23/13 examples, eval 11."""
  def make_source(domain, split, data_config):
    del data_config
    n = {'train': 23 if domain == 'cihp' else 13}.get(split, 11)
    return FakeSource(domain, n, VALUES[domain])
  monkeypatch.setattr(sources_lib, 'make_source', make_source)


NAMES = ['cihp', 'pascal_person_part']


def batches(ds, n, start=0):
  return [ds[i] for i in range(start, start + n)]


def assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert set(x) == set(y)
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_scale_crop_rotate_never_interpolate_labels(fake_sources):
  cfg = data_config(rotation=20.0, color_jitter=0.3)
  ds = pipeline.train_dataset(NAMES, cfg, 8, seed=0)
  seen = set()
  for batch in batches(ds, 6):
    assert batch['image'].shape == (8, 24, 24, 3)
    assert batch['label'].dtype == np.uint8
    for label, k in zip(batch['label'], batch['domain']):
      domain = domains_lib.get_domain(NAMES[k])
      # label[0, 0] holds the example index (< 23): allowed as well.
      allowed = set(VALUES[domain.name]) | {255} | set(range(23))
      allowed |= {int(domain.flip_permutation[v]) for v in VALUES[domain.name]}
      values = set(np.unique(label).tolist())
      assert values <= allowed, (domain.name, values - allowed)
      seen |= values
  # The flip partner of CIHP's left-arm (14) shows up: flips happened.
  assert {14, 15, 255} <= seen


def test_labels_exact_value_set_without_index_pixel(fake_sources, monkeypatch):
  """Same check, stricter: the index pixel removed, only VALUES, pairs, 255."""
  class NoIndex(FakeSource):
    def __getitem__(self, index):
      rec = super().__getitem__(index)
      rec['label'][0, 0] = self._values[0]
      return rec
  monkeypatch.setattr(sources_lib, 'make_source',
                      lambda d, s, c: NoIndex(d, 17, VALUES[d]))
  ds = pipeline.train_dataset(['cihp'], data_config(rotation=10.0), 8, seed=3)
  values = set()
  for batch in batches(ds, 4):
    values |= set(np.unique(batch['label']).tolist())
  assert values <= {0, 2, 14, 15, 255}
  assert {0, 2} <= values


def test_rectangular_crops_match_the_batch_spec(fake_sources):
  cfg = data_config(crop_size=24, crop_width=16)
  assert pipeline.crop_hw(cfg) == (24, 16)
  assert pipeline.crop_hw(data_config(crop_size=24)) == (24, 24)
  batch = pipeline.train_dataset(NAMES, cfg, 4, seed=0)[0]
  assert batch['image'].shape == (4, 24, 16, 3)
  assert ({k: (v.shape, v.dtype) for k, v in batch.items()} ==
          pipeline.train_batch_spec(cfg, 4))


def test_same_seed_same_batches_other_seed_differs(fake_sources):
  cfg = data_config()
  a = batches(pipeline.train_dataset(NAMES, cfg, 8, seed=0), 3)
  b = batches(pipeline.train_dataset(NAMES, cfg, 8, seed=0), 3)
  c = batches(pipeline.train_dataset(NAMES, cfg, 8, seed=1), 3)
  assert_batches_equal(a, b)
  assert not all(np.array_equal(x['image'], y['image']) for x, y in zip(a, c))


def test_threaded_iterator_resumes_exactly(fake_sources):
  cfg = data_config(num_threads=2)
  ds = pipeline.train_dataset(NAMES, cfg, 8, seed=0)
  it = pipeline.train_iterator(ds, cfg)
  reference = [next(it) for _ in range(6)]
  assert_batches_equal(reference, batches(ds, 6))  # Threads keep the order.

  it = pipeline.train_iterator(ds, cfg, start_step=4)
  assert_batches_equal([next(it), next(it)], reference[4:6])

  it = pipeline.train_iterator(ds, cfg)
  next(it), next(it)
  state = it.get_state()
  resumed = pipeline.train_iterator(ds, cfg)
  resumed.set_state(state)
  assert_batches_equal([next(resumed) for _ in range(3)], reference[2:5])


def test_process_shards_concatenate_to_global_batch(fake_sources):
  cfg = data_config()
  whole = pipeline.train_dataset(NAMES, cfg, 8, seed=0)
  parts = [pipeline.train_dataset(NAMES, cfg, 8, seed=0, process_index=p,
                                  process_count=2) for p in range(2)]
  for step in range(4):
    local = [part[step] for part in parts]
    assert local[0]['image'].shape[0] == 4
    joined = {k: np.concatenate([b[k] for b in local]) for k in local[0]}
    assert_batches_equal([joined], [whole[step]])


def test_mix_weights_set_domain_fractions(fake_sources):
  cfg = data_config(crop_size=8, mix={'cihp': 3.0, 'pascal_person_part': 1.0})
  ds = pipeline.train_dataset(NAMES, cfg, 16, seed=0)
  domain = np.concatenate([b['domain'] for b in batches(ds, 40)])
  fraction = np.mean(domain == 0)
  assert abs(fraction - 0.75) < 0.03, fraction


COMPOSITION = [({'cihp': 1.0}, 5), ({'pascal_person_part': 1.0}, 3)]


def test_fixed_composition_rows_shards_and_target_stream(fake_sources):
  cfg = data_config(crop_size=8)
  whole = pipeline.train_dataset(NAMES, cfg, 8, seed=0, groups=COMPOSITION)
  parts = [pipeline.train_dataset(NAMES, cfg, 8, seed=0, process_index=p,
                                  process_count=2, groups=COMPOSITION)
           for p in range(2)]
  # The first group's rows are exactly the batches a cihp-only run reads.
  alone = pipeline.train_dataset(['cihp'], cfg, 5, seed=0)
  for step in range(5):
    batch = whole[step]
    np.testing.assert_array_equal(batch['domain'], [0] * 5 + [1] * 3)
    for key in ('image', 'label'):
      np.testing.assert_array_equal(batch[key][:5], alone[step][key])
    local = [part[step] for part in parts]
    assert local[0]['image'].shape[0] == 4
    joined = {k: np.concatenate([b[k] for b in local]) for k in local[0]}
    assert_batches_equal([joined], [batch])


def test_fixed_composition_is_checked(fake_sources):
  with pytest.raises(ValueError, match=r'\[5, 3\] does not add up .* 9'):
    pipeline.train_dataset(NAMES, data_config(), 9, seed=0,
                           groups=COMPOSITION)
  with pytest.raises(ValueError, match="'lip', not one of"):
    pipeline.train_dataset(NAMES, data_config(), 8, seed=0,
                           groups=[({'cihp': 1.0}, 5), ({'lip': 1.0}, 3)])


@pytest.mark.parametrize('process_count', [1, 2])
def test_eval_batches_see_every_example_once(fake_sources, process_count):
  cfg = data_config(num_threads=1)
  seen, padding, total = [], 0, 0
  for p in range(process_count):
    it, n = pipeline.eval_batches('cihp', 0, cfg, 4, p, process_count)
    assert n == 11
    for batch in it:
      assert batch['image'].shape == (4 // process_count, 32, 32, 3)
      assert batch['label'].shape == (4 // process_count, 48, 48)
      total += len(batch['valid'])
      for valid, label in zip(batch['valid'], batch['label']):
        if valid:
          seen.append(int(label[0, 0]))
        else:
          padding += 1
          assert (label == 255).all()
  assert sorted(seen) == list(range(11))
  assert total == 12 and padding == 1  # 11 examples in 3 batches of 4.


def test_eval_resize_matrices_recover_the_label():
  """An input-resolution 'prediction' equal to the resized label maps back."""
  from sst_jax.data import transforms
  domain = domains_lib.get_domain('cihp')
  source = FakeSource('cihp', 4, VALUES['cihp'], min_size=9, max_size=20)
  for i in range(len(source)):
    rec = source[i]
    rec['label'][0, 0] = 0
    h, w = rec['label'].shape
    out = transforms.eval_transform(rec, 32, 24)
    # The prediction the network would make at input resolution: the label
    # resized as the image was (nearest), one-hot, on the input canvas.
    r = 32 / max(h, w)
    nh, nw = int(round(h * r)), int(round(w * r))
    _, small = transforms.resize(rec['image'], rec['label'], (nh, nw))
    logits = np.zeros((32, 32, domain.num_classes), np.float32)
    logits[np.arange(nh)[:, None], np.arange(nw), small] = 1.0
    lg = np.einsum('lh,hwc->lwc', out['resize_h'], logits)
    lg = np.einsum('mw,lwc->lmc', out['resize_w'], lg)
    pred = lg.argmax(-1)
    np.testing.assert_array_equal(pred[:h, :w], rec['label'])
    assert (out['label'][:h, :w] == rec['label']).all()
    assert (out['label'][h:] == 255).all() and (out['label'][:, w:] == 255).all()
    assert not lg[h:].any() and not lg[:, w:].any()


# End to end on the benchmarks' dummy data, built to array_record.

BUILD_LAYOUTS = {'pascal_person_part': 'graphonomy', 'atr': 'graphonomy',
                 'cihp': 'graphonomy', 'lip': 'official'}


@pytest.fixture(scope='module')
def built_data_dir(tmp_path_factory):
  pytest.importorskip('tensorflow_datasets')
  import importlib
  from datasets import builder_testing
  data_dir = tmp_path_factory.mktemp('tfds')
  for name, layout in BUILD_LAYOUTS.items():
    module = importlib.import_module(f'datasets.{name}.{name}_dataset_builder')
    builder_testing.build(module.Builder, builder_testing.dummy_dir(
        name, layout), data_dir)
  return data_dir


def shrink(config, data_dir, steps):
  """The real config at test size: tiny model, 33 px crops, few steps."""
  with config.unlocked():
    config.data.data_dir = str(data_dir)
    config.total_steps = steps
    config.batch_size = 8
    config.log_every = 1
    config.eval_every = steps
    config.checkpoint_every = steps
    config.async_checkpoints = False
    config.model.backbone = 'resnet_tiny'
    config.model.width = 8
    config.model.context_features = 16
    config.model.decoder_features = 16
    config.model.psp_bins = (1, 2)
    config.optim.warmup_steps = 1
    config.data.crop_size = 33
    config.data.eval_input_size = 48
    config.data.eval_label_size = 48
    config.data.num_threads = 1
    config.eval.batch_size = 8
    config.eval.flip = False  # Half the evaluation program to compile.
    config.eval.num_vis = 1
    config.sst.dim = 16
  return config


def eval_records(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [r for r in map(json.loads, f) if r['kind'] == 'eval']


def test_universal_r101_trains_on_built_dummy_data(built_data_dir, tmp_path):
  from configs import universal_r101
  from sst_jax import train
  config = shrink(universal_r101.get_config('with_lip'), built_data_dir, 3)
  assert config.sst.enabled
  results = train.train_and_evaluate(config, str(tmp_path))
  names = ['pascal_person_part', 'atr', 'cihp', 'lip']
  assert sorted(results) == sorted(names)
  record = eval_records(tmp_path)[-1]
  assert record['step'] == 3
  for name in names:
    assert 0.0 <= record[name]['miou'] <= 1.0
  assert (tmp_path / 'checkpoints' / '3').is_dir()


def test_dedicated_r101_trains_on_built_dummy_data(built_data_dir, tmp_path):
  from configs import dedicated_r101
  from sst_jax import train
  # The dedicated layout without SST (SST's stage 2 needs a source model:
  # tests/test_dedicated.py).
  config = shrink(
      dedicated_r101.get_config('target=pascal_person_part,baseline'),
      built_data_dir, 2)
  assert config.parsing == 'dedicated'
  results = train.train_and_evaluate(config, str(tmp_path))
  assert 'pascal_person_part' in results
  record = eval_records(tmp_path)[-1]
  assert record['step'] == 2 and 'pascal_person_part' in record
  assert (tmp_path / 'checkpoints' / '2').is_dir()


def _synthetic_batches(monkeypatch, names, cfg, threshold):
  """Three batches of a fresh synthetic cache; the splits rendered in
  subprocesses (those with at least ``threshold`` examples)."""
  monkeypatch.setattr(sources_lib.CachedSource, '_cache', {})
  monkeypatch.setattr(sources_lib.CachedSource, 'subprocess_min_examples',
                      threshold)
  started, start = [], synthetic.start_render
  monkeypatch.setattr(synthetic, 'start_render',
                      lambda s: started.append(s.domain.name) or start(s))
  ds = pipeline.train_dataset(names, cfg, 4, seed=0)
  assert not sources_lib.CachedSource._pending
  return started, batches(ds, 3)


def test_synthetic_caches_rendered_in_subprocesses_give_the_same_batches(
    monkeypatch):
  names = ['synthetic_pascal', 'synthetic_lip', 'synthetic_atr']
  cfg = data_config(synthetic_size=32, cache=True, synthetic_examples={
      'synthetic_pascal:train': 6, 'synthetic_lip:train': 5,
      'synthetic_atr:train': 2}, mix={'synthetic_atr': 0.0})
  started, in_process = _synthetic_batches(monkeypatch, names, cfg, 10**9)
  assert not started
  started, rendered_apart = _synthetic_batches(monkeypatch, names, cfg, 3)
  # Every used split long enough, all started before the first is read.
  assert started == ['synthetic_pascal', 'synthetic_lip']
  assert_batches_equal(in_process, rendered_apart)
  cached = sources_lib.CachedSource._cache
  record = next(iter(cached.values()))[0]
  assert record['image'].dtype == np.uint8 and record['image'].shape == (
      32, 32, 3) and record['label'].shape == (32, 32)


def test_a_failed_render_subprocess_names_the_source(monkeypatch, tmp_path):
  fake = tmp_path / 'python'
  fake.write_text('#!/bin/sh\necho "render crashed" >&2\nexit 3\n')
  fake.chmod(0o755)
  monkeypatch.setattr(sys, 'executable', str(fake))
  source = synthetic.SyntheticSource('synthetic_atr', 'train',
                                     image_size=(16, 16), num_examples=2)
  with pytest.raises(RuntimeError, match=r"SyntheticSource\('synthetic_atr'"
                     r".*exit code 3.*render crashed"):
    synthetic.render_split(source, in_subprocess=True)
