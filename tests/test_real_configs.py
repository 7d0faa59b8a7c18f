"""Every file in configs/ loads, with each documented variant, and builds.

Models are built abstractly (``jax.eval_shape`` of ``init_train_state``), so
ResNet-101 at 473x473 costs tracing only. Synthetic configs also open their
data sources; the real-benchmark configs must fail with a clear
FileNotFoundError when their data_dir holds no build.
"""

import importlib.util
import pathlib

import jax
import numpy as np
import pytest

from sst_jax import config_lib
from sst_jax import domains as domains_lib
from sst_jax import optim
from sst_jax import recipe
from sst_jax.data import sources as sources_lib

CONFIG_DIR = pathlib.Path(__file__).resolve().parent.parent / 'configs'
CONFIG_FILES = sorted(p.name for p in CONFIG_DIR.glob('*.py')
                      if not p.name.startswith('_'))

# The variant arguments each config's docstring documents (None = default).
_SYNTHETIC_VARIANTS = [None, 'baseline', 'pascal', 'dedicated', 'finetune',
                       'msa_mse']
VARIANTS = {
    'synthetic.py': _SYNTHETIC_VARIANTS,
    'tiny.py': _SYNTHETIC_VARIANTS,
    'universal_r101.py': [None, 'lip', 'with_lip', 'baseline',
                          'with_lip,baseline,data_dir=/data/tfds', 'msa_mse',
                          'pascal_person_part'],
    'dedicated_r101.py': [None, 'target=pascal_person_part', 'target=atr',
                          'target=cihp', 'target=lip',
                          'target=cihp,baseline', 'with_lip,init_from=/w',
                          'target=atr,data_dir=/data/tfds'],
}
REAL = ('universal_r101.py', 'dedicated_r101.py')


def load(filename):
  spec = importlib.util.spec_from_file_location(
      f'_config_{filename[:-3]}', CONFIG_DIR / filename)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def cases():
  for filename in CONFIG_FILES:
    for arg in VARIANTS.get(filename, [None]):
      yield pytest.param(filename, arg, id=f'{filename}:{arg}')


def test_every_config_file_has_documented_variants():
  assert set(VARIANTS) <= set(CONFIG_FILES)
  for filename in CONFIG_FILES:
    doc = load(filename).__doc__
    assert doc and f'--config=configs/{filename}' in doc, filename


@pytest.mark.parametrize('filename,arg', list(cases()))
def test_config_builds_model_and_domains(filename, arg):
  config = load(filename).get_config(arg)
  assert config.is_locked
  if (config.parsing == 'dedicated' and config.sst.enabled
      and not config.init_from):
    # Dedicated parsing starts from a trained source model.
    with pytest.raises(ValueError, match='config.init_from'):
      config_lib.validate_config(config)
    config.init_from = '/source_workdir'
  domains = config_lib.validate_config(config)
  assert [d.name for d in domains] == list(config.domains)
  model, sst_model = recipe.build_models(config, domains)
  assert (sst_model is not None) == bool(config.sst.enabled)
  tx = optim.make_optimizer(config.optim, config.total_steps)
  state = jax.eval_shape(
      lambda rng: recipe.init_train_state(
          rng, model=model, sst_model=sst_model, tx=tx,
          image_size=config.data.crop_size), jax.random.key(0))
  heads = state.params['parser']
  for d in domains:  # One head per domain, with that domain's class count.
    leaves = jax.tree.leaves(
        {k: v for k, v in heads.items() if d.name in k})
    assert leaves, f'no head for {d.name} in {sorted(heads)}'
    assert any(x.shape[-1] == d.num_classes for x in leaves), d.name
  if config.parsing == 'dedicated':
    assert config.target in config.domains
    # Dedicated batches: the target's rows, then dedicated_aux_batch rows
    # of the source domains.
    assert not config.data.mix
  # The pipeline refuses a mix that names a domain outside config.domains.
  assert set(config.data.mix) <= set(config.domains)


def _num_params(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize('filename', REAL)
def test_real_configs_follow_the_protocol(filename):
  config = load(filename).get_config()
  assert config.model.backbone == 'resnet101' and config.model.width == 64
  assert config.model.output_stride == 8
  assert config.batch_size == 16 and config.data.crop_size == 473
  assert config.optim.name == 'sgd' and config.optim.lr == 7e-3
  assert config.optim.momentum == 0.9 and config.optim.weight_decay == 5e-4
  assert config.optim.schedule == 'poly' and config.optim.warmup_steps > 0
  assert config.total_steps == 16088  # ceil(150 * 1716 / 16)
  assert tuple(config.data.scale_range) == (0.5, 1.5)
  assert config.data.eval_input_size == 473
  assert set(config.domains) == {'pascal_person_part', 'atr', 'cihp'}
  if config.parsing == 'dedicated':
    config.init_from = '/source_workdir'  # stage 2 starts from a source
  domains = config_lib.validate_config(config)
  model, _ = recipe.build_models(config, domains)
  variables = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jax.numpy.zeros((1, 65, 65, 3)),
                         train=False))
  # ResNet-101 alone has 42.5M parameters (without its classifier).
  assert 42e6 < _num_params(variables['params']) < 80e6


def test_total_steps_follows_batch_size():
  config = load('universal_r101.py').get_config()
  config.batch_size = 32
  assert config.total_steps == 8044


def test_bad_arguments_are_refused():
  with pytest.raises(ValueError, match='unknown'):
    load('universal_r101.py').get_config('datadir=/x')
  with pytest.raises(ValueError, match='target'):
    load('dedicated_r101.py').get_config('target=synthetic_pascal')


@pytest.mark.parametrize('filename', CONFIG_FILES)
def test_every_config_parses_its_argument_with_the_one_parser(filename):
  """config_lib.parse_arg: unknown keys named, with the keys it takes."""
  module = load(filename)
  with pytest.raises(ValueError) as error:
    module.get_config('no_such_key=1')
  message = str(error.value)
  assert message.startswith(f"configs/{filename}: unknown argument "
                            "'no_such_key=1'"), message
  assert 'baseline' in message  # the keys it does take
  with pytest.raises(ValueError, match="'baseline' takes no value"):
    module.get_config('baseline=1')
  with pytest.raises(ValueError, match="'baseline' given twice"):
    module.get_config('baseline,baseline')


@pytest.mark.parametrize('filename', [f for f in CONFIG_FILES
                                      if f not in REAL])
def test_synthetic_configs_have_data(filename):
  config = load(filename).get_config()
  data_cfg = config.data.copy_and_resolve_references()
  data_cfg.cache = False  # Caching would render whole splits up front.
  for name in config.domains:
    assert domains_lib.get_domain(name)
    for split in (data_cfg.train_split, data_cfg.eval_split):
      source = sources_lib.make_source(name, split, data_cfg)
      assert len(source) > 0, (name, split)
  rec = sources_lib.make_source(config.domains[0], data_cfg.train_split,
                                data_cfg)[0]
  assert rec['image'].dtype == np.uint8 and rec['label'].dtype == np.uint8


@pytest.mark.parametrize('filename', REAL)
def test_real_config_without_build_names_dataset_and_command(filename,
                                                             tmp_path):
  pytest.importorskip('tensorflow_datasets')
  config = load(filename).get_config(f'data_dir={tmp_path}')
  for name in config.domains:
    with pytest.raises(FileNotFoundError) as error:
      sources_lib.make_source(name, config.data.train_split, config.data)
    message = str(error.value)
    assert repr(name) in message and str(tmp_path) in message
    assert (f'python -m datasets.build datasets/{name} --manual_dir='
            in message)
    assert '--file_format=array_record' in message
    assert len(message) < 1000, 'the tfds list of every dataset leaked in'
