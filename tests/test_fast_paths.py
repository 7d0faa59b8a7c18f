"""The speed paths (sst_jax.models.fast_paths) against their plain forms."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import helpers
from sst_jax import config_lib
from sst_jax import recipe
from sst_jax.models import fast_paths
from sst_jax.models import layers
from sst_jax.models import parser as parser_lib
from sst_jax.models import resnet
from sst_jax.models import schp

PLAIN = fast_paths.Implementations()


def _lax_conv(x, k, strides, padding, dilation):
  return jax.lax.conv_general_dilated(
      x, k, (strides, strides), [(padding, padding)] * 2,
      rhs_dilation=(dilation, dilation),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def _tiny_parser(implementations, **kwargs):
  fields = dict(num_classes={'a': 3, 'b': 5}, backbone='resnet_tiny',
                width=16, output_stride=16, context_features=24,
                decoder_features=16)
  return parser_lib.ParsingNetwork(**{**fields, **kwargs},
                                   implementations=implementations)


def test_for_backend_picks_the_kernel_gradient_by_backend():
  cpu = fast_paths.for_backend('cpu')
  assert cpu == fast_paths.CPU and cpu.conv is fast_paths.conv
  assert cpu.residual_act is fast_paths.relu_as_select
  assert cpu.concat_conv.func is fast_paths.FactoredConcatConv
  assert cpu.concat_conv.keywords == {'convolution': fast_paths.conv_nhwc}
  for backend in ('gpu', 'tpu'):
    other = fast_paths.for_backend(backend)
    assert other == fast_paths.ACCELERATOR
    # XLA's own convolution gradients; the other paths as on the CPU.
    assert other.conv is layers.conv
    assert other.concat_conv is fast_paths.FactoredConcatConv
    assert other.residual_act is fast_paths.relu_as_select
  # Built from keyword arguments, a module runs the plain forms.
  assert parser_lib.ParsingNetwork(
      num_classes={'a': 3}).implementations == PLAIN
  assert (PLAIN.conv, PLAIN.concat_conv, PLAIN.residual_act) == (
      layers.conv, layers.ResizeConcatConv, jax.nn.relu)


def test_the_backend_is_asked_once_where_the_model_is_built(monkeypatch):
  asked = []
  default_backend = jax.default_backend
  monkeypatch.setattr(jax, 'default_backend',
                      lambda: asked.append(1) or default_backend())
  config = config_lib.base_config()
  config.model.backbone = 'resnet_tiny'
  config.model.width = 8
  config.model.context_features = 16
  config.model.decoder_features = 16
  model = parser_lib.make_parser(config.model, ['a'], [3],
                                 implementations=recipe.speed_paths())
  assert len(asked) == 1
  assert model.implementations == fast_paths.for_backend(default_backend())
  explicit = parser_lib.make_parser(config.model, ['a'], [3],
                                    implementations=PLAIN)
  assert len(asked) == 1 and explicit.implementations == PLAIN

  def unexpected():
    raise AssertionError('a model asked for the backend while traced')

  monkeypatch.setattr(jax, 'default_backend', unexpected)
  image = jnp.zeros((2, 32, 32, 3))
  variables = model.init(jax.random.key(0), image)

  def loss(params):
    (logits, _), _ = model.apply({**variables, 'params': params}, image,
                                 train=True, mutable=['batch_stats'])
    return jnp.sum(logits['a'] ** 2)

  jax.grad(loss)(variables['params'])


def test_the_library_builders_default_to_the_plain_forms(monkeypatch):
  """Only the entry points ask for the speed paths (``recipe.speed_paths``)."""
  config = helpers.tiny_config()
  domains = config_lib.validate_config(config)

  def unexpected():
    raise AssertionError('a library builder asked for the backend')

  monkeypatch.setattr(jax, 'default_backend', unexpected)
  model, _ = recipe.build_models(config, domains)
  assert model.implementations == PLAIN
  assert parser_lib.make_parser(config.model, ['a'],
                                [3]).implementations == PLAIN
  assert schp.AugmentCE2P(num_classes={'lip': 20}).implementations == PLAIN
  backbone = resnet.make_resnet('resnet_tiny')
  assert (backbone.conv, backbone.residual_act) == (PLAIN.conv,
                                                    PLAIN.residual_act)


@pytest.mark.parametrize('shape,kernel,strides,padding,dilation', [
    ((2, 9, 9, 24), (3, 3, 24, 16), 1, 1, 1),   # in > out
    ((2, 9, 9, 16), (3, 3, 16, 24), 1, 1, 1),   # in < out
    ((2, 11, 10, 16), (3, 3, 16, 8), 2, 1, 1),  # strided, odd sizes
    ((1, 12, 12, 16), (3, 3, 16, 16), 1, 2, 2),  # dilated
    ((2, 13, 13, 16), (5, 5, 16, 8), 2, 0, 1),   # 5x5, no padding
])
def test_matmul_kernel_grad_matches_xla(shape, kernel, strides, padding,
                                        dilation):
  kx, kk, kg = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, shape)
  k = jax.random.normal(kk, kernel) * 0.1
  args = (strides, padding, dilation)
  y_ref = _lax_conv(x, k, *args)
  g = jax.random.normal(kg, y_ref.shape)

  def loss(fn):
    return lambda x, k: jnp.sum(fn(x, k, *args) * g)

  y = fast_paths.conv_matmul_kernel_grad(x, k, *args)
  np.testing.assert_array_equal(np.asarray(y), np.asarray(y_ref))
  dx, dk = jax.grad(loss(fast_paths.conv_matmul_kernel_grad), (0, 1))(x, k)
  dx_ref, dk_ref = jax.grad(loss(_lax_conv), (0, 1))(x, k)
  np.testing.assert_allclose(dx, dx_ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dk, dk_ref, rtol=1e-4, atol=1e-4)
  # The kernel gradient is not trivially small: the comparison has teeth.
  assert float(jnp.abs(dk_ref).max()) > 1.0


def test_parser_kernel_gradients_agree(monkeypatch):
  """Same parameters, outputs and gradients with either kernel gradient."""
  # The tiny parser's convolutions are narrower than the threshold above
  # which the per-tap products apply; lower it so every KxK conv but the
  # RGB stem takes them here.
  monkeypatch.setattr(fast_paths, 'MATMUL_KERNEL_GRAD_MIN_CHANNELS', 8)
  calls = []
  original = fast_paths.conv_matmul_kernel_grad
  monkeypatch.setattr(fast_paths, 'conv_matmul_kernel_grad',
                      lambda *a: calls.append(a[1].shape) or original(*a))
  # CPU and ACCELERATOR differ in the kernel gradient only.
  assert fast_paths.CPU.residual_act is fast_paths.ACCELERATOR.residual_act
  image = jax.random.normal(jax.random.key(1), (2, 64, 64, 3))
  xla_model = _tiny_parser(fast_paths.ACCELERATOR)
  mm_model = _tiny_parser(fast_paths.CPU)
  variables = xla_model.init(jax.random.key(0), image)
  mm_variables = mm_model.init(jax.random.key(0), image)
  assert (jax.tree.map(np.shape, variables) ==
          jax.tree.map(np.shape, mm_variables))
  calls.clear()  # mm_model.init ran the convolutions too.

  def loss(model):
    def fn(params):
      logits, _ = model.apply({**variables, 'params': params}, image,
                              train=True, mutable=['batch_stats'])[0]
      return sum(jnp.mean(v**2) for v in logits.values())
    return fn

  l_ref, g_ref = jax.value_and_grad(loss(xla_model))(variables['params'])
  assert not calls
  l_mm, g_mm = jax.value_and_grad(loss(mm_model))(variables['params'])
  # Every 3x3 conv of the backbone, the PSP bottleneck and the decoder.
  assert len(calls) == 8 + 1 + 2, calls
  np.testing.assert_allclose(l_mm, l_ref, rtol=1e-6)
  flat_ref = jax.tree_util.tree_leaves_with_path(g_ref)
  flat_mm = dict(jax.tree_util.tree_leaves_with_path(g_mm))
  for path, ref in flat_ref:
    np.testing.assert_allclose(flat_mm[path], ref, rtol=1e-3, atol=1e-5,
                               err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize('align_corners', [False, True])
@pytest.mark.parametrize('size,padding,dilation', [
    ((11, 13), 1, 1),  # non-integer upsampling factors, odd sizes
    ((12, 12), 1, 1),  # integer factors (the two-tap resize path)
    ((10, 9), 2, 2),   # dilated
])
def test_conv_of_upsampled_equals_resize_then_conv(size, padding, dilation,
                                                   align_corners):
  """Mixing channels before upsampling is the same linear map, gradients
  included, for every bin size (1x1 broadcasts, 6x6 interpolates)."""
  rng = np.random.default_rng(0)
  bins = [(1, 1), (2, 3), (3, 3), (6, 5)]
  ys = [jnp.asarray(rng.standard_normal((2, h, w, 4)), jnp.float32)
        for h, w in bins]
  ks = [jnp.asarray(rng.standard_normal((3, 3, 4, 5)), jnp.float32)
        for _ in bins]

  def reference(ys, ks):
    return sum(_lax_conv(layers.resize_bilinear(y, size, align_corners), k,
                         1, padding, dilation) for y, k in zip(ys, ks))

  def factored(ys, ks):
    return fast_paths.conv_of_upsampled(ys, ks, size, padding=padding,
                                        dilation=dilation,
                                        align_corners=align_corners)

  out, ref = factored(ys, ks), reference(ys, ks)
  assert out.shape == ref.shape == (2, *size, 5)
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-4)
  # The borders differ from the interior (zero padding is folded in).
  assert float(jnp.abs(ref[:, 0] - ref[:, size[0] // 2]).max()) > 1.0
  w = jnp.asarray(rng.standard_normal(ref.shape), jnp.float32)
  loss = lambda f: lambda ys, ks: jnp.sum(f(ys, ks) * w)
  got = jax.grad(loss(factored), (0, 1))(ys, ks)
  want = jax.grad(loss(reference), (0, 1))(ys, ks)
  for g, r in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize('full_index', [0, 1, 2])
def test_concat_convs_equal_conv_of_concatenation(full_index):
  """The literal and the factored form: same parameter (channel order
  included) and output as one Conv over the concatenation with the small
  inputs resized."""
  rng = np.random.default_rng(1)
  shapes = [(2, 3, 3, 6), (2, 5, 4, 3), (2, 1, 1, 2)]
  shapes[full_index] = (2, 10, 8, 7)
  inputs = [jnp.asarray(rng.standard_normal(s), jnp.float32) for s in shapes]
  size = shapes[full_index][1:3]
  concat = jnp.concatenate([layers.resize_bilinear(x, size) for x in inputs],
                           axis=-1)
  reference = layers.Conv(4, (3, 3), padding=1)
  ref_variables = reference.init(jax.random.key(0), concat)
  want = reference.apply(ref_variables, concat)
  for cls in (layers.ResizeConcatConv, fast_paths.FactoredConcatConv):
    module = cls(4, 3, 1, full_index)
    variables = module.init(jax.random.key(0), inputs)
    kernel = variables['params']['kernel']
    assert kernel.shape == (3, 3, sum(s[-1] for s in shapes), 4)
    # Same initializer over the same shape: identical initial kernels.
    np.testing.assert_array_equal(ref_variables['params']['kernel'], kernel)
    np.testing.assert_allclose(module.apply(variables, inputs), want,
                               rtol=1e-5, atol=1e-5, err_msg=cls.__name__)


def test_parser_factored_convs_same_model_fewer_flops():
  """The factored concat convolutions change neither parameters nor logits,
  and remove the upsampled inputs' share of the PSP bottleneck and decoder
  FLOPs."""
  plain = _tiny_parser(PLAIN, output_stride=8, context_features=64,
                       decoder_features=32)
  factored = _tiny_parser(
      dataclasses.replace(PLAIN, concat_conv=fast_paths.FactoredConcatConv),
      output_stride=8, context_features=64, decoder_features=32)
  image = jax.random.normal(jax.random.key(1), (2, 64, 64, 3))
  variables = plain.init(jax.random.key(0), image)
  f_variables = factored.init(jax.random.key(0), image)
  assert jax.tree.structure(variables) == jax.tree.structure(f_variables)
  for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(f_variables)):
    np.testing.assert_array_equal(a, b)
  out = factored.apply(variables, image)[0]
  ref = plain.apply(variables, image)[0]
  for name in ref:
    np.testing.assert_allclose(out[name], ref[name], rtol=1e-5, atol=1e-5)

  def flops(model):
    fn = jax.jit(lambda v, x: model.apply(v, x)[0])
    cost = fn.lower(variables, image).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return cost['flops']

  # The literal forms: 3x3 convs over 4 x 64 upsampled PSP channels at 8x8
  # and over 32 upsampled context channels at 16x16.
  removed = 2 * 2 * 9 * (8 * 8 * 4 * 64 * 64 + 16 * 16 * 32 * 32)
  saved = flops(plain) - flops(factored)
  # The factored form adds the small-size products and the interpolation
  # (about 40 % of what it removes at these tiny sizes; ResNet-101 at 473x473
  # saves 231 of 1454 GFLOP per image, docs/results.md).
  assert 0.5 * removed < saved < removed, (saved, removed)


def test_relu_as_select_is_jax_relu_in_values_and_gradients():
  relu = fast_paths.relu_as_select
  x = jnp.asarray([-2.0, -0.0, 0.0, 1e-30, 3.0, -jnp.inf, jnp.inf, jnp.nan])
  np.testing.assert_array_equal(np.asarray(relu(x)),
                                np.asarray(jax.nn.relu(x)))
  assert np.isnan(np.asarray(relu(x))[-1])  # NaN is not masked
  g = jnp.arange(1.0, 8.0)
  grad = jax.grad(lambda v: jnp.sum(relu(v) * g))(x[:-1])
  ref = jax.grad(lambda v: jnp.sum(jax.nn.relu(v) * g))(x[:-1])
  np.testing.assert_array_equal(np.asarray(grad), np.asarray(ref))
  assert float(grad[2]) == 0.0  # relu's convention at exactly 0


def test_parser_residual_relu_as_select_same_model():
  # In float64, so that XLA's different fusion (and float32 rounding) of the
  # two forms does not hide a real difference. The gradient rule is checked
  # in test_relu_as_select_is_jax_relu_in_values_and_gradients.
  select = dataclasses.replace(PLAIN, residual_act=fast_paths.relu_as_select)
  models = {name: _tiny_parser(impl, num_classes={'a': 3}, width=8,
                               context_features=16, dtype=jnp.float64)
            for name, impl in (('select', select), ('max', PLAIN))}
  with jax.enable_x64(True):
    image = jax.random.normal(jax.random.key(1), (2, 32, 32, 3), jnp.float64)
    variables = jax.tree.map(
        lambda v: v.astype(jnp.float64),
        jax.jit(models['select'].init)(jax.random.key(0), image))
    logits = {
        name: jax.jit(lambda v, x, model=model: model.apply(
            v, x, train=True, mutable=['batch_stats'])[0][0]['a'])(
                variables, image)
        for name, model in models.items()}
    np.testing.assert_allclose(logits['select'], logits['max'], rtol=1e-12,
                               atol=1e-12)


def _largest_fusion(compiled) -> int:
  """Instruction count of the largest fused computation in the program."""
  sizes, current = [], None
  for line in compiled.as_text().splitlines():
    if line.lstrip('%').startswith('fused_computation'):
      current = 0
    elif line.startswith('}') and current is not None:
      sizes.append(current)
      current = None
    elif current is not None:
      current += 1
  return max(sizes)


@pytest.mark.platform_behaviour
@pytest.mark.parametrize('train', [False, True])
def test_resnet_fusions_do_not_grow_with_depth(train):
  """With the select ReLU, XLA:CPU fuses each residual block on its own.

  This measures XLA:CPU's fusion pass, not sst_jax: a failure after a jax
  or jaxlib upgrade may be a change of the compiler rather than a
  regression here. With ``jax.nn.relu`` after the residual sums, XLA:CPU
  duplicated the residual stream into every later block's fusion: the
  largest fusion of a 12-block stage was about 6x that of a 2-block stage,
  and this failed.
  """
  x = jnp.ones((2, 33, 33, 3))
  largest = []
  for blocks in (2, 12):
    net = resnet.ResNet(stage_sizes=(1, 1, blocks, 1), block='bottleneck',
                        width=8, output_stride=16,
                        residual_act=fast_paths.relu_as_select)
    variables = net.init(jax.random.key(0), x)

    def loss(params, net=net, variables=variables):
      out, _ = net.apply({**variables, 'params': params}, x, train=train,
                         mutable=['batch_stats'])
      return sum(jnp.sum(v ** 2) for v in out.values())

    fn = jax.grad(loss) if train else loss
    largest.append(_largest_fusion(
        jax.jit(fn).lower(variables['params']).compile()))
  assert largest[1] <= largest[0] + 10, largest


def test_no_model_module_asks_for_the_backend():
  """The backend is chosen by the entry points (recipe.speed_paths)."""
  import ast  # pylint: disable=g-import-not-at-top
  import pathlib  # pylint: disable=g-import-not-at-top
  models_dir = pathlib.Path(parser_lib.__file__).parent
  calls = []
  for path in sorted(models_dir.glob('*.py')):
    for node in ast.walk(ast.parse(path.read_text())):
      if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
          and node.func.attr == 'default_backend'):
        calls.append(f'{path.name}:{node.lineno}')
  assert not calls, calls
  # ... and the check would see one.
  tree = ast.parse('jax.default_backend()')
  assert any(isinstance(n, ast.Call) and n.func.attr == 'default_backend'
             for n in ast.walk(tree) if isinstance(n, ast.Call))
