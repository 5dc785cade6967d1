"""cikg-jax: CIKGRec (Hu et al., AAAI 2025) in JAX/Flax."""

from cikg_jax import jraph_compat  # noqa: F401

__version__ = "0.1.0"
