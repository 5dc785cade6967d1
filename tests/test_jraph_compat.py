import jax
import jax.numpy as jnp
import numpy as np

import cikg_jax  # noqa: F401  (installs the shim)
import jraph


def test_shim_makes_jraph_tree_helpers_work():
  """jraph 0.0.6 calls jax.tree_map / jax.tree_leaves, removed from current jax."""
  assert jax.tree_map is jax.tree_util.tree_map
  g = jraph.GraphsTuple(nodes=jnp.ones((3, 2)), edges=jnp.ones((2, 1)),
                        senders=jnp.array([0, 1]), receivers=jnp.array([1, 2]),
                        globals=jnp.ones((1, 1)), n_node=jnp.array([3]), n_edge=jnp.array([2]))
  padded = jraph.pad_with_graphs(g, n_node=5, n_edge=4, n_graph=2)
  zeroed = jraph.zero_out_padding(padded)  # uses jax.tree_map internally
  assert np.asarray(zeroed.nodes)[3:].sum() == 0
