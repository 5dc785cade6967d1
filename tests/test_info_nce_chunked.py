"""InfoNCE over chunks of candidate rows (losses.info_nce_chunked) against autodiff of the plain
formula: value and both gradients, chunk sizes that do and do not divide the candidates, padded
anchors, a shard's row count; and its memory: no (batch x candidates) buffer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cikg_jax.models import losses


def _inputs(b=37, n=203, d=16, seed=0):
  rng = np.random.default_rng(seed)
  unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
  a = jnp.asarray(unit(rng.normal(size=(b, d))), jnp.float32)
  c = jnp.asarray(unit(rng.normal(size=(n, d))), jnp.float32)
  pos = jnp.asarray(rng.integers(0, n, b), jnp.int32)
  mask = jnp.asarray((np.arange(b) < b - 5).astype(np.float32))
  return a, c, pos, mask


def _numpy_loss(a, c, pos, mask, tau, count=None):
  a, c = np.asarray(a, np.float64), np.asarray(c, np.float64)
  logits = a @ c.T / tau
  lse = np.log(np.exp(logits).sum(1))
  rows = lse - logits[np.arange(len(a)), np.asarray(pos)]
  m = np.asarray(mask, np.float64)
  return (rows * m).sum() / (m.sum() if count is None else count)


@pytest.mark.parametrize("chunk", [1, 7, 64, 203, 500])
def test_value_and_gradients_equal_the_formula(chunk):
  a, c, pos, mask = _inputs()
  tau = 0.2
  ref = lambda a, c: losses._info_nce_value(a, c, pos, mask, None, tau)
  got = lambda a, c: losses.info_nce_chunked(a, c, pos, mask, tau, chunk=chunk)
  assert float(got(a, c)) == pytest.approx(_numpy_loss(a, c, pos, mask, tau), rel=1e-5)
  assert float(got(a, c)) == pytest.approx(float(ref(a, c)), rel=1e-6)
  g_ref = jax.grad(ref, argnums=(0, 1))(a, c)
  g_got = jax.grad(got, argnums=(0, 1))(a, c)
  for x, y in zip(g_got, g_ref):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-7)


def test_shard_count_and_jit():
  a, c, pos, mask = _inputs(seed=1)
  f = jax.jit(
    lambda a, c: losses.info_nce_chunked(a, c, pos, mask, 0.15, count=100.0, chunk=50),
  )
  assert float(f(a, c)) == pytest.approx(_numpy_loss(a, c, pos, mask, 0.15, 100.0), rel=1e-5)
  g = jax.grad(lambda a, c: losses._info_nce_value(a, c, pos, mask, 100.0, 0.15), (0, 1))(a, c)
  h = jax.grad(f, (0, 1))(a, c)
  for x, y in zip(h, g):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-7)


def test_no_batch_by_candidates_buffer():
  """The compiled loss-and-gradient keeps (batch x chunk) temporaries: its temp bytes stay far
  below one (batch x candidates) float32 matrix, which autodiff of the formula allocates."""
  b, n, d, chunk = 256, 20000, 16, 512
  a, c, pos, mask = _inputs(b, n, d, seed=2)

  def temp_bytes(fn):
    grad = jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))
    return grad.lower(a, c).compile().memory_analysis().temp_size_in_bytes

  full = b * n * 4
  plain = temp_bytes(lambda a, c: losses._info_nce_value(a, c, pos, mask, None, 0.2))
  chunked = temp_bytes(lambda a, c: losses.info_nce_chunked(a, c, pos, mask, 0.2, chunk=chunk))
  assert plain >= full
  assert chunked < full / 4


def test_cikgrec_loss_with_chunked_denominators(tmp_path):
  """config cl.chunk: CIKGRec's full loss and gradients equal the unchunked ones to rounding."""
  from cikg_jax.training import steps
  from configs import tiny

  c = tiny.get_config()
  c.synthetic_dir = str(tmp_path / "data")
  ds, c, net, graphs = steps.setup(c)
  params = net.init_params(jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)
  batch = {
    "users": rng.integers(0, ds.n_users, 64).astype(np.int32),
    "pos": rng.integers(0, ds.n_items, 64).astype(np.int32),
    "neg": rng.integers(0, ds.n_items, 64).astype(np.int32),
    "mask": np.ones(64, np.float32),
  }
  out = []
  for chunk in (0, 37):
    c.cl.chunk = chunk
    m = steps.create_model(c, ds)
    assert m.contrastive.chunk == chunk
    f = lambda p, m=m: m.apply(
      {"params": p}, graphs, batch, jax.random.PRNGKey(1), 0.3, method="loss"
    )
    out.append(jax.value_and_grad(lambda p, f=f: f(p)[0])(params))
  (v0, g0), (v1, g1) = out
  assert float(v1) == pytest.approx(float(v0), rel=1e-6)
  for x, y in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g0)):
    scale = float(np.abs(np.asarray(y)).max()) or 1.0
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=1e-5 * scale)
