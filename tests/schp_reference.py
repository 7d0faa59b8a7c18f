"""SCHP's own code, loaded from the installed ``schp`` package.

The parity tests (``test_schp_parity.py``) compare sst_jax with the code of
Self-Correction Human Parsing (Li et al., github PeikeLi/
Self-Correction-Human-Parsing) as the ``schp`` package on PyPI ships it:
``networks/AugmentCE2P.py`` with its compiled InPlaceABN,
``datasets/simple_extractor_dataset.py`` and ``utils/transforms.py`` (the
preprocessing and inverse warp of ``simple_extractor.py``),
``evaluate.multi_scale_testing`` (flip test-time augmentation),
``utils/miou.py`` and ``utils/schp.save_schp_checkpoint``. Nothing of it is
copied into this repository: its files are imported from site-packages and
InPlaceABN's C++ source is compiled from there. Install with::

    pip install -e ".[test,torch,schp]"
    pip install --no-deps schp==0.1

(``--no-deps``: the package declares torchvision, whose PyPI build does not
load with the CPU torch, and gdown; none of the code used here needs them.)

Three things stand between that code and a CPU-only process, and are handled
here without changing what the code computes:

* ``schp/__init__.py`` imports ``schp/model.py``, which imports torchvision
  and gdown. The package is registered without running its ``__init__``.
* ``schp/modules/functions.py`` compiles InPlaceABN's CPU and CUDA sources
  when it is imported. Its CPU sources (``inplace_abn.cpp``,
  ``inplace_abn_cpu.cpp``) are compiled here, with the CUDA entry points that
  ``inplace_abn.cpp`` dispatches to defined as functions that raise, and that
  build is handed to ``functions.py`` in place of its own. The two backward
  kernels pass ``Tensor.type()`` to ``AT_DISPATCH_FLOATING_TYPES``, which the
  current torch no longer accepts; a forced-include header gives the dispatch
  macro back that overload. The forward kernel is compiled as it is.
* Scripts that import their siblings as top-level modules (``import
  networks``, ``from utils.transforms import ...``) are imported with those
  names aliased to the package's modules, restored afterwards.

The build lives in the temporary directory, keyed by the torch version, so a
test run compiles it once (about 70 s on two cores) and later runs on the same
machine reuse it; torch's ``cpp_extension`` locks the directory, so parallel
test workers wait for one build.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import os
import sys
import tempfile
import types
from unittest import mock

import numpy as np

INSTALL_HINT = ('pip install -e ".[test,torch,schp]" && '
                'pip install --no-deps schp==0.1')

# The CUDA functions inplace_abn.cpp dispatches to (inplace_abn.h), as
# (return type, name, parameters).
_CUDA_ENTRY_POINTS = (
    ('std::vector<at::Tensor>', 'mean_var_cuda', 'at::Tensor x'),
    ('std::vector<at::Tensor>', 'mean_var_cuda_h', 'at::Tensor x'),
    ('at::Tensor', 'forward_cuda',
     'at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, bool, float'),
    ('at::Tensor', 'forward_cuda_h',
     'at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, bool, float'),
    ('std::vector<at::Tensor>', 'edz_eydz_cuda',
     'at::Tensor, at::Tensor, at::Tensor, at::Tensor, bool, float'),
    ('std::vector<at::Tensor>', 'edz_eydz_cuda_h',
     'at::Tensor, at::Tensor, at::Tensor, at::Tensor, bool, float'),
    ('at::Tensor', 'backward_cuda',
     'at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, '
     'at::Tensor, bool, float'),
    ('at::Tensor', 'backward_cuda_h',
     'at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, '
     'at::Tensor, bool, float'),
    ('void', 'leaky_relu_backward_cuda', 'at::Tensor, at::Tensor, float'),
    ('void', 'leaky_relu_backward_cuda_h', 'at::Tensor, at::Tensor, float'),
    ('void', 'elu_backward_cuda', 'at::Tensor, at::Tensor'),
)

_COMPAT_HEADER = """\
#pragma once
#include <ATen/ATen.h>
// AT_DISPATCH_* resolves its type argument through detail::scalar_type; the
// overload for Tensor.type() (DeprecatedTypeProperties) is gone from torch.
namespace detail {
inline at::ScalarType scalar_type(const at::DeprecatedTypeProperties& t) {
  return t.scalarType();
}
}  // namespace detail
"""


def missing() -> str | None:
  """Why SCHP's code cannot be run here, or None when it can."""
  for name in ('torch', 'cv2'):
    if importlib.util.find_spec(name) is None:
      return f'{name} is not installed ({INSTALL_HINT})'
  if importlib.util.find_spec('schp') is None:
    return f'the schp package is not installed ({INSTALL_HINT})'
  from torch.utils import cpp_extension  # pylint: disable=g-import-not-at-top
  try:
    cpp_extension.verify_ninja_availability()
  except RuntimeError:
    return f'ninja is not installed ({INSTALL_HINT})'
  return None


@functools.lru_cache(maxsize=None)
def package_dir() -> str:
  return importlib.util.find_spec('schp').submodule_search_locations[0]


def _stub_source() -> str:
  lines = ['#include <ATen/ATen.h>', '#include <stdexcept>',
           '#include <vector>']
  for ret, name, params in _CUDA_ENTRY_POINTS:
    lines.append(f'{ret} {name}({params}) {{ throw std::runtime_error('
                 f'"{name}: this InPlaceABN build has no CUDA"); }}')
  return '\n'.join(lines) + '\n'


def _write_if_changed(path: str, text: str) -> None:
  # Rewriting an unchanged file would make cpp_extension rebuild.
  if os.path.isfile(path):
    with open(path) as f:
      if f.read() == text:
        return
  tmp = f'{path}.{os.getpid()}'
  with open(tmp, 'w') as f:
    f.write(text)
  os.replace(tmp, path)


@functools.lru_cache(maxsize=None)
def inplace_abn_backend():
  """SCHP's InPlaceABN extension, CPU sources only (compiled once, cached)."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch.utils import cpp_extension  # pylint: disable=g-import-not-at-top
  build = os.path.join(
      tempfile.gettempdir(),
      f'sst_jax_schp_inplace_abn_torch{torch.__version__}'.replace('+', '_'))
  os.makedirs(build, exist_ok=True)
  stubs = os.path.join(build, 'cuda_stubs.cpp')
  compat = os.path.join(build, 'compat.h')
  _write_if_changed(stubs, _stub_source())
  _write_if_changed(compat, _COMPAT_HEADER)
  src = os.path.join(package_dir(), 'modules', 'src')
  return cpp_extension.load(
      name='schp_inplace_abn_cpu',
      sources=[os.path.join(src, 'inplace_abn.cpp'),
               os.path.join(src, 'inplace_abn_cpu.cpp'), stubs],
      # SCHP's own flag, then the compat header; -w silences the deprecation
      # warnings of the 2019 source.
      extra_cflags=['-O3', '-include', compat, '-w'],
      build_directory=build, verbose=False)


@contextlib.contextmanager
def _aliased_modules(aliases: dict[str, types.ModuleType]):
  """Temporarily makes ``sys.modules[name]`` the given modules."""
  saved = {name: sys.modules.get(name) for name in aliases}
  sys.modules.update(aliases)
  try:
    yield
  finally:
    for name, module in saved.items():
      if module is None:
        sys.modules.pop(name, None)
      else:
        sys.modules[name] = module


def _import_file(name: str, path: str) -> types.ModuleType:
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@functools.lru_cache(maxsize=None)
def load() -> types.SimpleNamespace:
  """Imports the SCHP modules the parity tests use.

  Returns:
    a namespace with ``networks`` (``networks/AugmentCE2P.py``),
    ``modules`` (``modules/``: ``ABN``, ``InPlaceABNSync``), ``transforms``
    (``utils/transforms.py``), ``extractor_dataset``
    (``datasets/simple_extractor_dataset.py``), ``evaluate``
    (``evaluate.py``), ``miou`` (``utils/miou.py``), ``schp_utils``
    (``utils/schp.py``), ``encoding`` (``utils/encoding.py``) and
    ``simple_extractor_settings`` (``dataset_settings`` of
    ``simple_extractor.py``, read from its source).
  """
  from torch.utils import cpp_extension  # pylint: disable=g-import-not-at-top
  root = package_dir()
  if 'schp' not in sys.modules:
    # The package object without executing its __init__.py.
    sys.modules['schp'] = importlib.util.module_from_spec(
        importlib.util.find_spec('schp'))
  backend = inplace_abn_backend()

  def load_backend(name, sources, **unused_kwargs):
    if name != 'inplace_abn' or not any(
        s.endswith('inplace_abn_cpu.cpp') for s in sources):
      raise AssertionError(f'unexpected extension build {name}: {sources}')
    return backend

  with mock.patch.object(cpp_extension, 'load', load_backend):
    networks = importlib.import_module('schp.networks.AugmentCE2P')
  transforms = importlib.import_module('schp.utils.transforms')
  extractor_dataset = importlib.import_module(
      'schp.datasets.simple_extractor_dataset')
  encoding = importlib.import_module('schp.utils.encoding')
  modules = importlib.import_module('schp.modules')
  utils = importlib.import_module('schp.utils')
  datasets = importlib.import_module('schp.datasets')
  top_level = {'networks': importlib.import_module('schp.networks'),
               'modules': modules, 'utils': utils,
               'utils.transforms': transforms, 'datasets': datasets}
  with _aliased_modules(top_level):
    miou = _import_file('schp_utils_miou', os.path.join(root, 'utils',
                                                        'miou.py'))
    schp_utils = _import_file('schp_utils_schp',
                              os.path.join(root, 'utils', 'schp.py'))
    datasets_datasets = _import_file(
        'schp_datasets_datasets', os.path.join(root, 'datasets',
                                               'datasets.py'))
    # evaluate.py imports torchvision.transforms at the top for its main();
    # multi_scale_testing does not use it.
    torchvision = types.ModuleType('torchvision')
    torchvision.transforms = types.ModuleType('torchvision.transforms')
    with _aliased_modules({'utils.miou': miou,
                           'datasets.datasets': datasets_datasets,
                           'torchvision': torchvision,
                           'torchvision.transforms': torchvision.transforms}):
      evaluate = _import_file('schp_evaluate',
                              os.path.join(root, 'evaluate.py'))
  return types.SimpleNamespace(
      networks=networks, modules=modules, transforms=transforms,
      extractor_dataset=extractor_dataset, evaluate=evaluate, miou=miou,
      schp_utils=schp_utils, encoding=encoding,
      simple_extractor_settings=_simple_extractor_settings(root))


def _simple_extractor_settings(root: str) -> dict:
  """``dataset_settings`` of ``simple_extractor.py`` (a literal), by ast.

  The script cannot be imported (it imports torchvision and its siblings as
  top-level modules); its settings are a plain literal.
  """
  import ast  # pylint: disable=g-import-not-at-top
  with open(os.path.join(root, 'simple_extractor.py')) as f:
    tree = ast.parse(f.read())
  for node in tree.body:
    if (isinstance(node, ast.Assign) and
        getattr(node.targets[0], 'id', None) == 'dataset_settings'):
      return ast.literal_eval(node.value)
  raise AssertionError('simple_extractor.py has no dataset_settings')


def _torchvision_transforms() -> types.ModuleType:
  """``torchvision.transforms`` with what ``simple_extractor.py`` uses.

  torchvision cannot be imported next to the CPU torch. ``Compose``,
  ``ToTensor`` (HWC uint8 -> CHW float in [0, 1]) and ``Normalize``
  (``(x - mean) / std`` per channel) compute what torchvision's do.
  """
  import torch  # pylint: disable=g-import-not-at-top

  class Compose:

    def __init__(self, transforms):
      self.transforms = transforms

    def __call__(self, x):
      for t in self.transforms:
        x = t(x)
      return x

  class ToTensor:

    def __call__(self, image):
      x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
      return x.contiguous().float().div(255)

  class Normalize:

    def __init__(self, mean, std):
      self.mean = torch.tensor(mean, dtype=torch.float32)[:, None, None]
      self.std = torch.tensor(std, dtype=torch.float32)[:, None, None]

    def __call__(self, x):
      return x.sub(self.mean).div(self.std)

  module = types.ModuleType('torchvision.transforms')
  module.Compose, module.ToTensor, module.Normalize = (Compose, ToTensor,
                                                       Normalize)
  return module


@functools.lru_cache(maxsize=None)
def simple_extractor() -> types.ModuleType:
  """``simple_extractor.py`` imported as a module.

  Its sibling imports (``networks``, ``utils.transforms``,
  ``datasets.simple_extractor_dataset``) are the package's modules and
  ``torchvision.transforms`` is ``_torchvision_transforms``; ``main``,
  ``get_palette`` and ``dataset_settings`` are the script's own.
  """
  ref = load()
  transforms = _torchvision_transforms()
  torchvision = types.ModuleType('torchvision')
  torchvision.transforms = transforms
  aliases = {
      'networks': importlib.import_module('schp.networks'),
      'utils': importlib.import_module('schp.utils'),
      'utils.transforms': ref.transforms,
      'datasets': importlib.import_module('schp.datasets'),
      'datasets.simple_extractor_dataset': ref.extractor_dataset,
      'torchvision': torchvision,
      'torchvision.transforms': transforms,
  }
  with _aliased_modules(aliases):
    return _import_file('schp_simple_extractor',
                        os.path.join(package_dir(), 'simple_extractor.py'))


def run_simple_extractor(argv: list[str], *, init_model,
                         input_size: tuple[int, int] | None = None) -> None:
  """Runs ``simple_extractor.py``'s ``main()`` with command-line ``argv``.

  The script runs as it is, with three things replaced around it:
  ``.cuda()`` of modules and tensors returns them unchanged (it moves both to
  the GPU; this is a CPU process), ``networks.init_model`` is ``init_model``
  (the script builds ResNet-101; the tests' checkpoints are smaller), and
  with ``input_size`` the chosen dataset's input size is that (the script's
  are 473 and 512). The environment variable it sets is restored.
  """
  import torch  # pylint: disable=g-import-not-at-top
  script = simple_extractor()
  with mock.patch.object(sys, 'argv', ['simple_extractor.py', *argv]):
    name = script.get_arguments().dataset
  settings = dict(script.dataset_settings[name])
  if input_size is not None:
    settings['input_size'] = list(input_size)
  with contextlib.ExitStack() as stack:
    stack.enter_context(mock.patch.object(
        torch.nn.Module, 'cuda', lambda self, *a, **k: self))
    stack.enter_context(mock.patch.object(
        torch.Tensor, 'cuda', lambda self, *a, **k: self))
    stack.enter_context(mock.patch.object(script.networks, 'init_model',
                                          init_model))
    stack.enter_context(mock.patch.dict(script.dataset_settings,
                                        {name: settings}))
    stack.enter_context(mock.patch.dict(os.environ))
    stack.enter_context(mock.patch.object(
        sys, 'argv', ['simple_extractor.py', *argv]))
    script.main()


def to_tensor_normalize(networks):
  """``transforms.Compose([ToTensor(), Normalize(mean, std)])`` of
  ``simple_extractor.py``, with SCHP's ``pretrained_settings`` statistics.

  torchvision cannot be imported next to the CPU torch; these are the two
  operations torchvision applies: HWC uint8 -> CHW float in [0, 1], then
  ``(x - mean) / std`` per channel.
  """
  import torch  # pylint: disable=g-import-not-at-top
  settings = networks.pretrained_settings['resnet101']['imagenet']
  mean = torch.tensor(settings['mean'], dtype=torch.float32)[:, None, None]
  std = torch.tensor(settings['std'], dtype=torch.float32)[:, None, None]

  def transform(image):
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    return x.float().div(255).sub(mean).div(std)

  return transform
