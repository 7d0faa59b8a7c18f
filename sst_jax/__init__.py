"""sst_jax: Scalable Semantic Transfer for human parsing, in JAX/Flax."""

__version__ = '0.1.0'
