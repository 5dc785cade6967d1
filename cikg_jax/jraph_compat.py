"""jraph's last release (2022) calls `jax.tree_map` / `jax.tree_leaves`, removed from current jax.
Aliasing them once here makes all of jraph work again (STACK.md); import this module before
using jraph anywhere."""

import jax

if not hasattr(jax, "tree_map"):
  jax.tree_map = jax.tree_util.tree_map
if not hasattr(jax, "tree_leaves"):
  jax.tree_leaves = jax.tree_util.tree_leaves
