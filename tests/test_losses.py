import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cikg_jax.models import losses
from cikg_jax.training import schedules


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def test_bpr_and_l2_against_numpy_with_padding():
  rng = np.random.default_rng(0)
  u, i, j = (rng.standard_normal((6, 4)).astype(np.float32) for _ in range(3))
  mask = np.array([1, 1, 1, 1, 0, 0], np.float32)
  got = losses.bpr_loss(u, i, j, mask, cf_weight=1.5)
  s = (u * i).sum(1) - (u * j).sum(1)
  ref = 1.5 * np.mean(-np.log(_sigmoid(s[:4]) + 1e-10))
  assert float(got) == pytest.approx(ref, rel=1e-5)
  reg = losses.l2_reg((u, i, j), mask, 1e-2)
  ref_reg = 1e-2 * 0.5 * sum((x[:4] ** 2).sum() for x in (u, i, j)) / 4
  assert float(reg) == pytest.approx(ref_reg, rel=1e-5)


def test_bpr_hand_value():
  # s = 0 -> -log(0.5) = log 2
  u = jnp.array([[1.0, 0.0]])
  assert float(losses.bpr_loss(u, u, u, jnp.ones(1))) == pytest.approx(np.log(2), rel=1e-6)


@pytest.mark.parametrize("gamma", [1.0, 2.0, 3.0])
def test_scaled_cosine_error(gamma):
  rng = np.random.default_rng(1)
  p, t = rng.standard_normal((5, 3)), rng.standard_normal((5, 3))
  rows = np.array([1, 0, 1, 1, 0], np.float32)
  cos = (p * t).sum(1) / np.linalg.norm(p, axis=1) / np.linalg.norm(t, axis=1)
  ref = np.mean(((1 - cos) ** gamma)[rows > 0])
  got = losses.scaled_cosine_error(jnp.asarray(p), jnp.asarray(t), rows, gamma)
  assert float(got) == pytest.approx(ref, rel=1e-5)
  # identical vectors -> zero error; opposite -> 2^gamma
  assert float(
    losses.scaled_cosine_error(jnp.ones((1, 2)), jnp.ones((1, 2)), jnp.ones(1), gamma)
  ) == pytest.approx(0.0, abs=1e-6)
  assert float(
    losses.scaled_cosine_error(jnp.ones((1, 2)), -jnp.ones((1, 2)), jnp.ones(1), gamma)
  ) == pytest.approx(2.0**gamma, rel=1e-6)


def test_info_nce_against_numpy():
  rng = np.random.default_rng(2)
  a = rng.standard_normal((4, 3))
  c = rng.standard_normal((7, 3))
  a /= np.linalg.norm(a, axis=1, keepdims=True)
  c /= np.linalg.norm(c, axis=1, keepdims=True)
  pos = np.array([0, 3, 6, 3])
  mask = np.array([1, 1, 1, 0], np.float32)
  tau = 0.2
  ref = []
  for r in range(3):
    s = c @ a[r] / tau
    ref.append(-np.log(np.exp(s[pos[r]]) / np.exp(s).sum()))  # positive in the denominator
  got = losses.info_nce(jnp.asarray(a), jnp.asarray(c), jnp.asarray(pos), mask, tau)
  assert float(got) == pytest.approx(np.mean(ref), rel=1e-5)


def test_transe_against_numpy():
  rng = np.random.default_rng(3)
  h, r, t, tn = (rng.standard_normal((5, 4)) for _ in range(4))
  pos = ((h + r - t) ** 2).sum(1)
  neg = ((h + r - tn) ** 2).sum(1)
  l2m = lambda x: np.mean((x**2).sum(1) / 2)
  ref = np.mean(-np.log(_sigmoid(neg - pos))) + 1e-3 * (l2m(h) + l2m(r) + l2m(t) + l2m(tn))
  got = losses.transe_loss(*(jnp.asarray(x) for x in (h, r, t, tn)), l2=1e-3)
  assert float(got) == pytest.approx(ref, rel=1e-5)


@pytest.mark.parametrize(
  "groups",
  [
    [0, 2, 2, 1, 2, 0, 2, 2, 2, 2, 2],  # a group longer than a tile, an unused group (3)
    [1] * 11,  # every row in one group: the most tiles a group can need
    [3, 2, 1, 0, 3, 2, 1, 0, 3, 2, 1],  # every group partly filled
    [0],
  ],
)
def test_grouped_matmul_against_per_row_products(groups):
  """x[i] @ w[group[i]] row by row in numpy (float64), values and gradients; tiles of 4 rows so
  the cases above fill, split and pad tiles."""
  rng = np.random.default_rng(len(groups))
  group = np.asarray(groups)
  x = rng.standard_normal((len(group), 3, 5))
  w = rng.standard_normal((4, 5, 2))
  ref = np.stack([x[i] @ w[g] for i, g in enumerate(group)])
  f = lambda x, w: losses.grouped_matmul(x, w, jnp.asarray(group, jnp.int32), tile=4)
  got = jax.jit(f)(jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32))
  np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-5, atol=1e-5)
  # gradients of sum(out * c): dx[i] = c[i] @ w[g].T, dw[g] = sum over its rows x[i].T @ c[i]
  c = rng.standard_normal(ref.shape)
  dx, dw = jax.grad(lambda x, w: jnp.sum(f(x, w) * c), argnums=(0, 1))(
    jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32)
  )
  ref_dx = np.stack([c[i] @ w[g].T for i, g in enumerate(group)])
  ref_dw = np.zeros_like(w)
  for i, g in enumerate(group):
    ref_dw[g] += x[i].T @ c[i]
  np.testing.assert_allclose(np.asarray(dx), ref_dx, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(dw), ref_dw, rtol=1e-5, atol=1e-5)


def test_transr_against_numpy():
  rng = np.random.default_rng(4)
  h, r, t, tn = (rng.standard_normal((6, 4)) for _ in range(4))
  w = rng.standard_normal((3, 4, 4))
  rel = np.array([2, 0, 2, 2, 1, 0])
  proj = lambda x: np.einsum("bd,bdk->bk", x, w[rel])
  ph, pt, pn = proj(h), proj(t), proj(tn)
  pos = ((ph + r - pt) ** 2).sum(1)
  neg = ((ph + r - pn) ** 2).sum(1)
  l2m = lambda x: np.mean((x**2).sum(1) / 2)
  ref = np.mean(-np.log(_sigmoid(neg - pos))) + 1e-3 * (l2m(ph) + l2m(r) + l2m(pt) + l2m(pn))
  args = (jnp.asarray(x, jnp.float32) for x in (h, r, t, tn, w))
  got = losses.transr_loss(*args, jnp.asarray(rel, jnp.int32), l2=1e-3)
  assert float(got) == pytest.approx(ref, rel=1e-5)


def test_mask_rate_schedules():
  # exp: p0 * (pmax/p0)^(t/T), capped
  assert schedules.mask_rate(0, "exp", 0.05, 0.75, 150) == pytest.approx(0.05)
  assert schedules.mask_rate(75, "exp", 0.05, 0.75, 150) == pytest.approx(0.05 * 15**0.5)
  assert schedules.mask_rate(150, "exp", 0.05, 0.75, 150) == pytest.approx(0.75)
  assert schedules.mask_rate(400, "exp", 0.05, 0.75, 150) == pytest.approx(0.75)
  assert schedules.mask_rate(60, "lin", 0.05, 0.65, 120) == pytest.approx(0.35)
  assert schedules.mask_rate(500, "lin", 0.05, 0.65, 120) == pytest.approx(0.65)
  assert schedules.mask_rate(99, "const", 0.1, 0.95, 80) == pytest.approx(0.1)
  with pytest.raises(ValueError, match="schedule"):
    schedules.mask_rate(0, "cosine", 0.1, 0.9, 10)


def test_zero_rows_have_finite_gradients():
  import jax

  pred = jnp.array([[0.0, 0.0], [1.0, 2.0]])
  target = jnp.array([[1.0, 0.0], [0.0, 1.0]])
  g = jax.grad(lambda p: losses.scaled_cosine_error(p, target, jnp.ones(2), 2.0))(pred)
  assert np.all(np.isfinite(np.asarray(g)))
  assert float(losses.scaled_cosine_error(pred[:1], target[:1], jnp.ones(1), 2.0)) == 1.0
  np.testing.assert_allclose(
    np.asarray(losses.l2_normalize(jnp.array([[3.0, 4.0]]))), [[0.6, 0.8]], rtol=1e-6
  )


def test_l2_normalize_keeping_output_equals_autodiff():
  """Same values; the gradient from (output, inverse norms) equals autodiff's, a zero row (the
  clamped norm) included."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(6, 5)).astype(np.float32)
  x[2] = 0.0
  g = rng.normal(size=(6, 5)).astype(np.float32)
  for fn in (losses.l2_normalize, losses.l2_normalize_keeping_output):
    assert np.array_equal(np.asarray(fn(x)), np.asarray(losses.l2_normalize(x)))
  want = jax.grad(lambda v: jnp.sum(losses.l2_normalize(v) * g))(x)
  got = jax.grad(lambda v: jnp.sum(losses.l2_normalize_keeping_output(v) * g))(x)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(got)[2], g[2] * 1e12)  # d z = r d x where clamped
