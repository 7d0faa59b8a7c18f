"""sst_jax: Scalable Semantic Transfer for human parsing, in JAX/Flax."""

__version__ = '0.1.0'

__all__ = ['Parser']


def __getattr__(name):
  # Lazy, so that ``import sst_jax`` stays light (no jax/flax import) and
  # has no side effects; ``sst_jax.Parser`` imports ``sst_jax.api`` on use.
  if name == 'Parser':
    from sst_jax import api  # pylint: disable=g-import-not-at-top
    return api.Parser
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
