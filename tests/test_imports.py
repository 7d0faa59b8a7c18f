"""Every module of sst_jax imports, and the modules import no cycle.

The import graph is read from the source with ``ast``: an edge ``a -> b``
for every ``import``/``from ... import`` in module ``a`` that names module
``b`` of sst_jax, at the top of the module or inside a function (a
deferred import still ties the two modules together). A package's own
deferred imports are lazy attributes (``sst_jax.Parser`` loads
``sst_jax.api`` on first use, once the package has loaded) and are left
out.
"""

import ast
import importlib
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / 'sst_jax'


def _module_files() -> dict[str, pathlib.Path]:
  files = {}
  for path in sorted(ROOT.rglob('*.py')):
    parts = list(path.relative_to(ROOT.parent).with_suffix('').parts)
    if parts[-1] == '__init__':
      parts.pop()
    files['.'.join(parts)] = path
  return files


MODULES = _module_files()


def _imported(node: ast.AST, modules) -> set[str]:
  """The sst_jax modules an import statement names."""
  names = set()
  if isinstance(node, ast.Import):
    names = {a.name for a in node.names}
  elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
    for alias in node.names:
      full = f'{node.module}.{alias.name}'
      names.add(full if full in modules else node.module)
  return names & set(modules)


def import_graph(modules=None) -> dict[str, set[str]]:
  """``{module: modules it imports}`` over sst_jax."""
  modules = modules or MODULES
  graph = {}
  for name, path in modules.items():
    tree = ast.parse(path.read_text(), str(path))
    nodes = (tree.body if path.name == '__init__.py'
             else list(ast.walk(tree)))
    graph[name] = set().union(*(_imported(n, modules) for n in nodes)) - {
        name}
  return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One import cycle ``[a, b, ..., a]``, or None."""
  state, stack = {}, []

  def visit(node):
    state[node] = 'open'
    stack.append(node)
    for nxt in sorted(graph[node]):
      if state.get(nxt) == 'open':
        return stack[stack.index(nxt):] + [nxt]
      if nxt not in state:
        cycle = visit(nxt)
        if cycle:
          return cycle
    stack.pop()
    state[node] = 'done'
    return None

  for node in sorted(graph):
    if node not in state:
      cycle = visit(node)
      if cycle:
        return cycle
  return None


def reachable(graph, start: str) -> set[str]:
  seen, todo = set(), [start]
  while todo:
    for nxt in graph[todo.pop()] - seen:
      seen.add(nxt)
      todo.append(nxt)
  return seen


@pytest.mark.parametrize('name', sorted(MODULES))
def test_every_module_imports(name):
  assert importlib.import_module(name).__name__ == name


def test_the_import_graph_has_no_cycle():
  graph = import_graph()
  # The graph is read correctly: edges that exist, deferred ones included.
  assert {'sst_jax.evaluate', 'sst_jax.config_lib'} <= graph['sst_jax.train']
  assert 'sst_jax.api' in graph['sst_jax.evaluate']  # inside a function
  assert 'sst_jax.models.layers' in graph['sst_jax.models.parser']
  assert find_cycle(graph) is None, ' -> '.join(find_cycle(graph))


def test_a_cycle_is_found(tmp_path):
  """The check can fail: two modules that import each other, one lazily."""
  package = tmp_path / 'sst_jax'
  package.mkdir()
  (package / '__init__.py').write_text('')
  (package / 'a.py').write_text('from sst_jax import b\n')
  (package / 'b.py').write_text('def f():\n  from sst_jax import a\n')
  graph = import_graph({'sst_jax': package / '__init__.py',
                        'sst_jax.a': package / 'a.py',
                        'sst_jax.b': package / 'b.py'})
  assert find_cycle(graph) == ['sst_jax.a', 'sst_jax.b', 'sst_jax.a']


def test_evaluation_and_the_models_do_not_import_training():
  graph = import_graph()
  for name in ('sst_jax.evaluate', 'sst_jax.export', 'sst_jax.api',
               'sst_jax.predict', 'sst_jax.config_lib', 'sst_jax.recipe'):
    assert 'sst_jax.train' not in reachable(graph, name), name
  for name in MODULES:
    if name.startswith('sst_jax.models'):
      assert not {m for m in reachable(graph, name)
                  if m.startswith(('sst_jax.data', 'sst_jax.train'))}, name
