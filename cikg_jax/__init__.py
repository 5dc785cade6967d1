"""cikg-jax: CIKGRec (Hu et al., AAAI 2025) in JAX/Flax."""

__version__ = "0.1.0"
