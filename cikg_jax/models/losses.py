"""The loss terms of CIKGRec (docs/method.md §3) as pure functions of arrays.

Mini-batches have a static shape; a 0/1 `mask` marks the real rows of a padded batch and every
mean is over the real rows only. `count`, when given, is the number of real rows of the whole batch
of which this is a shard (data parallelism): shard losses then sum to the whole-batch loss.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from cikg_jax.graphs import propagation as prop


def _masked_mean(values, mask, count=None):
  denominator = jnp.sum(mask) if count is None else count
  return jnp.sum(values * mask) / jnp.maximum(denominator, 1.0)


def bpr_loss(u, i, j, mask, cf_weight: float = 1.0, count=None):
  """cf_weight * mean(-log(sigmoid(<u,i> - <u,j>) + 1e-10))."""
  diff = jnp.sum(u * i, axis=-1) - jnp.sum(u * j, axis=-1)
  return cf_weight * _masked_mean(-jnp.log(jax.nn.sigmoid(diff) + 1e-10), mask, count)


def l2_reg(ego_rows, mask, l2: float, count=None):
  """l2 * 0.5 * sum of squared norms of the batch's ego rows / batch size."""
  sq = sum(jnp.sum(e * e, axis=-1) for e in ego_rows)
  return l2 * 0.5 * _masked_mean(sq, mask, count)


def l2_normalize(x, eps: float = 1e-12):
  """x / max(|x|, eps), with a finite gradient at x = 0. (jnp.linalg.norm's gradient there is
  NaN, and a NaN crosses even zero-weight edges in the backward propagation: a masked interest
  node whose edges were all dropped decodes to an exact zero row.)"""
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def l2_normalize_keeping_output(x, eps: float = 1e-12):
  """l2_normalize whose backward pass keeps only its output and the rows' inverse norms, not its
  input: for an (N, d) table whose normalised copy is kept anyway (InfoNCE's candidates), the
  unnormalised one can be freed after the forward pass. Same values; gradients equal autodiff's
  to float rounding (the formula r (g - z (z . g)) is evaluated instead)."""
  return l2_normalize(x, eps)


def _l2_normalize_fwd(x, eps):
  squares = jnp.sum(x * x, axis=-1, keepdims=True)
  r = jax.lax.rsqrt(jnp.maximum(squares, eps * eps))
  z = x * r
  # where the norm is clamped at eps, r is a constant: d z = r d x
  return z, (z, r, squares >= eps * eps)


def _l2_normalize_bwd(eps, res, g):
  z, r, unclamped = res
  radial = jnp.where(unclamped, jnp.sum(g * z, axis=-1, keepdims=True), 0.0)
  return (r * (g - z * radial),)


l2_normalize_keeping_output.defvjp(_l2_normalize_fwd, _l2_normalize_bwd)


def scaled_cosine_error(pred, target, row_mask, gamma: float):
  """GraphMAE's SCE: mean over the masked rows of (1 - cos(pred, target))^gamma."""
  cos = jnp.sum(l2_normalize(pred) * l2_normalize(target), axis=-1)
  return _masked_mean((1.0 - cos) ** gamma, row_mask)


def info_nce(anchors, candidates, positive_index, mask, tau: float, count=None):
  """InfoNCE with the positive in the denominator:
  mean over anchors of logsumexp_c((s(a, c) - s(a, pos)) / tau); inputs L2-normalised.

  Where `fused_info_nce()` says so (on CPU by default) the loss and its gradients come from
  `_info_nce_fwd`, one pass over blocks of anchors: the same loss, gradients equal to autodiff of
  the formula to float32 rounding (tests/test_speed.py), 1.8x faster on CPU.
  """
  if not fused_info_nce() or not isinstance(tau, (int, float)):
    return _info_nce_value(anchors, candidates, positive_index, mask, count, tau)
  return _info_nce(anchors, candidates, positive_index, mask, count, float(tau))


def _info_nce_value(anchors, candidates, positive_index, mask, count, tau):
  # 1/tau scales the (batch x d) anchors, not the (batch x candidates) product, and the positive
  # logit is a row-wise dot, not a gather from the product: a gather's transpose is a scatter
  # into a zeroed (batch x candidates) matrix in the backward pass. Together 2x faster on
  # book-crossing's 1024 x 9776 product (README "Speed"); equal to float rounding.
  logits = (anchors * (1.0 / tau)) @ candidates.T
  pos = jnp.sum(anchors * candidates[positive_index], axis=-1) / tau
  # Unit vectors bound every logit by 1/tau, so shifting by that constant is as stable as the
  # row max and saves a pass over the (batch x candidates) matrix forward and backward.
  shift = 1.0 / tau
  lse = jnp.log(jnp.sum(jnp.exp(logits - shift), axis=1)) + shift
  return _masked_mean(lse - pos, mask, count)


# The fused InfoNCE pass below: None picks it per backend (FUSED_INFO_NCE_BACKENDS), True/False
# force it on/off. It is read when the loss is traced.
FUSED_INFO_NCE = None
# On CPU the fused pass is 1.8x faster than autodiff's (batch x candidates) passes through memory
# (README "Speed"). On GPU autodiff's fused kernels stay the default: the blocked scan was not
# measured there.
FUSED_INFO_NCE_BACKENDS = ("cpu",)
# Anchors per block of the fused pass: a (block x candidates) slab of logits stays in the last-level
# cache (256 x 9776 floats = 10 MB); 128-512 measured within 10% of each other (README "Speed").
INFO_NCE_BLOCK = 256


def fused_info_nce() -> bool:
  """Whether info_nce takes the fused pass: FUSED_INFO_NCE, or with None, whether JAX's default
  backend is one of FUSED_INFO_NCE_BACKENDS."""
  if FUSED_INFO_NCE is None:
    return jax.default_backend() in FUSED_INFO_NCE_BACKENDS
  return bool(FUSED_INFO_NCE)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _info_nce(anchors, candidates, positive_index, mask, count, tau):
  return _info_nce_value(anchors, candidates, positive_index, mask, count, tau)


def _info_nce_fwd(anchors, candidates, positive_index, mask, count, tau):
  """The loss and its gradients in one pass. Per block of anchors: the logits against every
  candidate, their exp and row sums (complete rows, so each row's log-sum-exp and softmax P are
  final), then dA = P C and the block's share of dC = P^T A. Autodiff of the formula instead
  writes the (batch x candidates) logits, exp and softmax to memory and reads them back in the
  backward pass; here each slab is used while it is in cache: 1.7x on the two InfoNCE terms of
  a book-crossing step (README "Speed"). The loss is the formula's (the same row values, summed
  the same way); gradients equal to float rounding. The mask and the row count get no gradient.
  """
  b, d = anchors.shape
  shift = 1.0 / tau
  scaled = anchors * (1.0 / tau)
  pos = jnp.sum(anchors * candidates[positive_index], axis=-1) / tau
  # d loss / d row value = mask / count (_masked_mean)
  weight = mask / jnp.maximum(jnp.sum(mask) if count is None else count, 1.0)
  block = min(INFO_NCE_BLOCK, b)
  n_blocks = -(-b // block)
  pad = n_blocks * block - b  # padded anchors: weight 0, their rows dropped
  a_blocks = jnp.pad(scaled, ((0, pad), (0, 0))).reshape(n_blocks, block, d)
  w_blocks = jnp.pad(weight, (0, pad)).reshape(n_blocks, block)

  def one_block(d_candidates, blk):
    a, w = blk
    e = jnp.exp(a @ candidates.T - shift)
    total = jnp.sum(e, axis=1)
    p = e * (w / total)[:, None]  # softmax rows, times d loss / d row
    return d_candidates + p.T @ a, (jnp.log(total) + shift, p @ candidates)

  d_candidates, (lse, d_scaled) = jax.lax.scan(
    one_block, jnp.zeros_like(candidates), (a_blocks, w_blocks)
  )
  lse = lse.reshape(-1)[:b]
  loss = _masked_mean(lse - pos, mask, count)
  # the positive logit (anchors . candidates[positive]) / tau enters with a minus sign
  d_anchors = (
    d_scaled.reshape(-1, d)[:b] * (1.0 / tau) - (weight / tau)[:, None] * candidates[positive_index]
  )
  d_candidates = d_candidates.at[positive_index].add(-(weight / tau)[:, None] * anchors)
  return loss, (d_anchors, d_candidates)


def _info_nce_bwd(tau, res, g):
  d_anchors, d_candidates = res
  return g * d_anchors, g * d_candidates, None, None, None


_info_nce.defvjp(_info_nce_fwd, _info_nce_bwd)


def paired_info_nce(view1, view2, mask, tau: float):
  """SimGCL's InfoNCE between two views of the same rows: row r's positive is view2[r], the other
  real rows of view2 its negatives; mean over the real rows (`mask`), inputs L2-normalised."""
  logits = view1 @ view2.T / tau
  logits = jnp.where(mask[None, :] > 0, logits, -jnp.inf)  # padding is never a candidate
  shift = 1.0 / tau  # unit vectors: every logit <= 1/tau (see info_nce)
  lse = jnp.log(jnp.sum(jnp.exp(logits - shift), axis=1)) + shift
  pos = jnp.sum(view1 * view2, axis=-1) / tau
  return _masked_mean(lse - pos, mask)


def l2_mean(x):
  """KGAT's _L2_loss_mean: mean over rows of sum(x^2) / 2."""
  return jnp.mean(jnp.sum(x * x, axis=-1) / 2.0)


def transe_loss(h, r, t, t_neg, l2: float):
  """mean(-log sigmoid(|h+r-t'|^2 - |h+r-t|^2)) + l2 * (L2(h) + L2(r) + L2(t) + L2(t'))."""
  pos = jnp.sum((h + r - t) ** 2, axis=-1)
  neg = jnp.sum((h + r - t_neg) ** 2, axis=-1)
  kg = jnp.mean(-jax.nn.log_sigmoid(neg - pos))
  return kg + l2 * (l2_mean(h) + l2_mean(r) + l2_mean(t) + l2_mean(t_neg))


def transr_loss(h, r, t, t_neg, w, relation, l2: float):
  """KGAT's TransR: TransE's loss and L2 on the entities projected into the relation space,
  h W_r + r vs t W_r (w: the (n_relations, d, k) matrices, relation: each row's index)."""
  proj = grouped_matmul(jnp.stack([h, t, t_neg], axis=1), w, relation)
  return transe_loss(proj[:, 0], r, proj[:, 1], proj[:, 2], l2)


GROUP_TILE = 32  # rows per tile of grouped_matmul (fastest of 16, 32, 64 at 2048 rows, 28 groups)


def grouped_matmul(x, w, group, tile: int = GROUP_TILE):
  """x[i] @ w[group[i]] for x (n, s, d), w (g, d, k), group (n,): (n, s, k).

  Gathering one (d, k) matrix per row writes n * d * k floats and scatter-adds as many in the
  backward pass (KGAT's TransR: 2048 x 64 x 64 per batch), which is most of a TransR step's time
  on a CPU. Here the rows are sorted by group and cut into tiles of `tile` rows of one group,
  zero-padded, so the product is one batched GEMM over ceil(n / tile) + g tiles, each matrix
  gathered once per tile. Rows move to and from their slots as a permutation (unique indices), so
  the backward pass moves them back with a gather and a unique-index scatter, without
  accumulating. The same values as the per-row product up to float summation order."""
  n, g = x.shape[0], w.shape[0]
  n_tiles = -(-n // tile) + g
  group = jnp.asarray(group)
  order = jnp.argsort(group, stable=True)
  sorted_group = group[order]
  counts = jnp.bincount(group, length=g)
  tiles = -(-counts // tile)
  tile_end = jnp.cumsum(tiles)
  local = jnp.arange(n) - (jnp.cumsum(counts) - counts)[sorted_group]
  slot = ((tile_end - tiles)[sorted_group] + local // tile) * tile + local % tile
  slot_of_row = jnp.zeros(n, slot.dtype).at[order].set(slot, unique_indices=True)
  tile_group = jnp.minimum(jnp.searchsorted(tile_end, jnp.arange(n_tiles), side="right"), g - 1)
  rows = jnp.zeros((n_tiles * tile,) + x.shape[1:], x.dtype)
  rows = rows.at[slot_of_row].set(x, unique_indices=True).reshape((n_tiles, tile) + x.shape[1:])
  out = jnp.einsum("nbsd,ndk->nbsk", rows, w[tile_group]).reshape(
    (n_tiles * tile,) + x.shape[1:-1] + (w.shape[2],)
  )
  return out.at[slot_of_row].get(unique_indices=True)


def info_nce_chunked(anchors, candidates, positive_index, mask, tau: float, count=None, chunk=4096):
  """info_nce's value and gradients with memory (batch x chunk) instead of (batch x candidates):
  the denominator is `chunked_exp_sum` over chunks of candidate rows. Results equal info_nce's to
  float rounding (the sums are taken in another order). For large candidate sets, e.g. a
  graph-parallel device's block of rows, where a (batch x candidates) slab does not fit."""
  ones = jnp.ones(candidates.shape[0], candidates.dtype)
  total = chunked_exp_sum(anchors * (1.0 / tau), candidates, ones, 1.0 / tau, int(chunk))
  return info_nce_from_sums(total, anchors, candidates[positive_index], mask, tau, count)


def info_nce_from_sums(total, anchors, positives, mask, tau: float, count=None):
  """InfoNCE from each anchor's denominator `total` = sum_c exp((s(a, c) - 1) / tau) (the
  constant shift of `info_nce`) and its positive rows: the chunked form, and the graph-parallel
  one whose denominators are summed over the devices' row blocks."""
  shift = 1.0 / tau
  pos = jnp.sum(anchors * positives, axis=-1) / tau
  return _masked_mean(jnp.log(total) + shift - pos, mask, count)


def _chunk_starts(n: int, chunk: int):
  """(chunk, number of chunks, start of chunk i, rows of chunk i counted before it): chunks of
  `chunk` rows read in place; the last starts at n - chunk, so it may overlap the one before,
  and its overlapping rows are masked out (no padded copy of the candidates is made)."""
  chunk = max(1, min(chunk, n))
  n_chunks = -(-n // chunk)

  def start(i):
    return jnp.minimum(i * chunk, n - chunk)

  def fresh(i):  # 0/1 per row of chunk i: not already counted by an earlier chunk
    return (start(i) + jnp.arange(chunk) >= i * chunk).astype(jnp.float32)

  return chunk, n_chunks, start, fresh


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def chunked_exp_sum(scaled_anchors, candidates, weights, shift: float, chunk: int):
  """sum_c weights[c] * exp(scaled_anchors . candidates[c] - shift) for every anchor, computed
  (batch x chunk) logits at a time; the backward pass recomputes each chunk's logits instead of
  keeping them, and accumulates the candidates' gradient in place. With unit-vector inputs and
  shift = 1/tau every term is at most 1, so the chunks' sums add up without a running maximum.
  `weights` (0/1: which rows are candidates) get no gradient."""
  return _exp_sum_scan(scaled_anchors, candidates, weights, shift, chunk)


def _chunk(candidates, weights, i, chunk, start, fresh):
  s = start(i)
  c = jax.lax.dynamic_slice_in_dim(candidates, s, chunk)
  w = jax.lax.dynamic_slice_in_dim(weights, s, chunk) * fresh(i)
  return s, c, w


def _exp_sum_scan(scaled_anchors, candidates, weights, shift, chunk):
  chunk, n_chunks, start, fresh = _chunk_starts(candidates.shape[0], chunk)

  def part(i):
    _, c, w = _chunk(candidates, weights, i, chunk, start, fresh)
    return jnp.sum(jnp.exp(scaled_anchors @ c.T - shift) * w[None, :], axis=1)

  # The first chunk starts the carry (not zeros): inside shard_map the carry then has the type
  # (varying over the mesh axes or not) of every later chunk's sum.
  return jax.lax.fori_loop(1, n_chunks, lambda i, t: t + part(i), part(0))


def _chunked_exp_sum_fwd(scaled_anchors, candidates, weights, shift, chunk):
  total = _exp_sum_scan(scaled_anchors, candidates, weights, shift, chunk)
  return total, (scaled_anchors, candidates, weights)


def _chunked_exp_sum_bwd(shift, chunk, res, g):
  scaled_anchors, candidates, weights = res
  chunk, n_chunks, start, fresh = _chunk_starts(candidates.shape[0], chunk)

  def grads(i):
    s, c, w = _chunk(candidates, weights, i, chunk, start, fresh)
    p = jnp.exp(scaled_anchors @ c.T - shift) * w[None, :] * g[:, None]
    return s, p @ c, p.T @ scaled_anchors

  def one_chunk(i, carry):
    d_anchors, d_candidates = carry
    s, d_a, d_c = grads(i)
    old = jax.lax.dynamic_slice_in_dim(d_candidates, s, chunk)
    return d_anchors + d_a, jax.lax.dynamic_update_slice_in_dim(d_candidates, old + d_c, s, 0)

  # The first chunk starts both carries, as in _exp_sum_scan (its rows are written into a table
  # of zeros typed as the candidates vary).
  s0, first_a, first_c = grads(0)
  zeros = prop.as_varying(jnp.zeros_like(candidates), prop.varying_axes(first_c))
  d_candidates = jax.lax.dynamic_update_slice_in_dim(zeros, first_c, s0, 0)
  d_anchors, d_candidates = jax.lax.fori_loop(1, n_chunks, one_chunk, (first_a, d_candidates))
  return d_anchors, d_candidates, None


chunked_exp_sum.defvjp(_chunked_exp_sum_fwd, _chunked_exp_sum_bwd)
