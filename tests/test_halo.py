"""cikg_jax.graphs.halo: the exchange plan against numpy, and a propagation layer through the exchange on
4 simulated devices against the dense product, value and gradient."""

import os
import subprocess
import sys

import numpy as np

from cikg_jax.graphs import halo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _blocks(rng, n_blocks, block, n_edges):
  """Random edges cut by receiver block: (senders, local receivers) per block."""
  n = n_blocks * block
  senders = rng.integers(0, n, n_edges)
  receivers = rng.integers(0, n, n_edges)
  return [
    (senders[receivers // block == k], receivers[receivers // block == k] - k * block)
    for k in range(n_blocks)
  ]


def test_every_block_reads_its_senders_rows_from_the_halo_buffer():
  rng = np.random.default_rng(0)
  d, block = 4, 25
  blocks = _blocks(rng, d, block, 300)
  p = halo.plan([s for s, _ in blocks], d, block)
  x = rng.normal(size=(d * block, 3))
  local = x.reshape(d, block, 3)
  for k, (senders, _) in enumerate(blocks):
    # device k's buffer: its rows, then what all_to_all delivers, chunk o = owner o's send[o, k]
    buffer = np.concatenate([local[k]] + [local[o][p["send"][o, k]] for o in range(d)])
    assert buffer.shape == (block + d * p["halo"], 3)
    np.testing.assert_array_equal(buffer[p["halo_senders"][k]], x[senders])
  # H is the longest list of distinct senders another owner sends a block
  want = max(
    len(np.unique(s[s // block == o]))
    for k, (s, _) in enumerate(blocks)
    for o in range(d)
    if o != k
  )
  assert p["halo"] == want
  s = halo.stats(p, block)
  assert s["buffer_rows"] == block + d * want and s["all_gather_rows"] == d * block


def test_a_local_graph_has_a_small_halo():
  """Edges only between neighbouring rows: each block needs a few rows of its two neighbours."""
  d, block = 4, 100
  n = d * block
  senders = np.concatenate([np.arange(n - 1), np.arange(1, n)])
  receivers = np.concatenate([np.arange(1, n), np.arange(n - 1)])
  per = [senders[receivers // block == k] for k in range(d)]
  p = halo.plan(per, d, block)
  assert p["halo"] == 1  # one row of each neighbour
  assert p["needed"][1].tolist() == [1, block, 1, 0]
  assert halo.stats(p, block)["buffer_rows"] == block + d


def test_bad_sender_ids_are_refused():
  import pytest

  with pytest.raises(ValueError, match="block 1: sender ids outside"):
    halo.plan([np.array([0]), np.array([8])], 2, 4)


WORKER = r"""
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, PartitionSpec as P
from cikg_jax.graphs import halo
rng = np.random.default_rng(1)
d, block, dim = 4, 30, 5
n = d * block
senders = rng.integers(0, n, 600); receivers = np.sort(rng.integers(0, n, 600))
weight = rng.normal(size=600).astype(np.float32)
cut = [(receivers // block) == k for k in range(d)]
p = halo.plan([senders[c] for c in cut], d, block)
per = max(c.sum() for c in cut)
def pad(a, fill):
  return np.concatenate([a, np.full(per - len(a), fill, a.dtype)])
hs = np.concatenate([pad(p["halo_senders"][k], 0) for k in range(d)])
hr = np.concatenate([pad((receivers[c] - k * block).astype(np.int32), block - 1) for k, c in enumerate(cut)])
hw = np.concatenate([pad(weight[c], np.float32(0)) for c in cut])
send = p["send"].reshape(d * d, p["halo"])  # device o's rows: send[o]
x = rng.normal(size=(n, dim)).astype(np.float32)
mesh = Mesh(np.array(jax.devices()), ("graph",))
def layer(x_local, send, s, r, w):
  buf = halo.exchange(x_local, send, "graph")
  return jax.ops.segment_sum(buf[s] * w[:, None], r, block)
sharded = jax.shard_map(layer, mesh=mesh, in_specs=(P("graph"),) * 5, out_specs=P("graph"))
def loss(x):
  y = sharded(x, send, hs, hr, hw)
  return jnp.sum(jnp.sin(y) * jnp.arange(y.size).reshape(y.shape))
a = np.zeros((n, n), np.float32); np.add.at(a, (receivers, senders), weight)
def dense_loss(x):
  y = jnp.asarray(a) @ x
  return jnp.sum(jnp.sin(y) * jnp.arange(y.size).reshape(y.shape))
y = jax.jit(sharded)(x, send, hs, hr, hw)
np.testing.assert_allclose(np.asarray(y), a @ x, rtol=1e-5, atol=1e-5)
g, g_ref = jax.jit(jax.grad(loss))(x), jax.grad(dense_loss)(x)
np.testing.assert_allclose(np.asarray(g), np.asarray(g_ref), rtol=1e-4, atol=1e-3)
print("ok", p["halo"], n)
"""


def test_a_layer_through_the_exchange_equals_the_dense_product_and_its_gradient():
  env = dict(
    os.environ,
    XLA_FLAGS="--xla_force_host_platform_device_count=4",
    JAX_PLATFORMS="cpu",
    PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
  )
  p = subprocess.run(
    [sys.executable, "-c", WORKER], capture_output=True, text=True, env=env, timeout=300
  )
  assert p.returncode == 0 and p.stdout.startswith("ok"), p.stderr[-3000:]
