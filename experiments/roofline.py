"""This machine's roofline with the installed JAX build: peak matrix-product GFLOP/s (square and
the InfoNCE shapes of a CIKGRec step), memory bandwidth in GB/s (a streaming read+write), the
CSR propagation kernel's rate and the PRNG's. Medians of several runs; prints one JSON object
with the machine (cikg_jax.runtime.machine).

  python experiments/roofline.py [--repeats=7]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from cikg_jax import runtime  # noqa: E402


def median_seconds(fn, *args, repeats=7):
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def measure(r: int = 7) -> dict:
  """The figures above as a dict (peak_matmul_gflops, peak_bandwidth_gbps and the details)."""
  rng = np.random.default_rng(0)
  out = {"jax": jax.__version__, "devices": [str(d) for d in jax.devices()]}
  mm = {}
  # (m, k, n): square; InfoNCE forward (anchors x d @ d x candidates) and its two backward products
  for name, (m, k, n) in {
    "square_2048": (2048, 2048, 2048),
    "nce_fwd_1024x64x9776": (1024, 64, 9776),
    "nce_bwd_dA_1024x9776x64": (1024, 9776, 64),
    "nce_bwd_dC_9776x1024x64": (9776, 1024, 64),
  }.items():
    a = jnp.asarray(rng.standard_normal((m, k)), jnp.float32)
    b = jnp.asarray(rng.standard_normal((k, n)), jnp.float32)
    t = median_seconds(jax.jit(jnp.matmul), a, b, repeats=r)
    mm[name] = {"seconds": t, "gflops": 2 * m * k * n / t / 1e9}
  out["matmul"] = mm
  out["peak_matmul_gflops"] = max(v["gflops"] for v in mm.values())
  bw = {}
  n = 64 * 1024 * 1024 // 4  # 64 MiB of float32 (well past the last-level cache)
  x = jnp.asarray(rng.standard_normal(n), jnp.float32)
  t = median_seconds(jax.jit(lambda v: v * 1.5 + 1.0), x, repeats=r)
  bw["scale_add_64MiB"] = {"seconds": t, "gbps": 2 * 4 * n / t / 1e9}  # read + write
  t = median_seconds(jax.jit(jnp.sum), x, repeats=r)
  bw["sum_64MiB"] = {"seconds": t, "gbps": 4 * n / t / 1e9}  # read only
  e = jnp.asarray(rng.standard_normal((16384, 1024)), jnp.float32)  # a (batch x candidates) block
  t = median_seconds(jax.jit(lambda v: jnp.sum(jnp.exp(v - 5.0), axis=1)), e, repeats=r)
  bw["exp_rowsum_64MiB"] = {
    "seconds": t,
    "gbps": 4 * e.size / t / 1e9,
    "gelem_per_s": e.size / t / 1e9,
  }
  out["bandwidth"] = bw
  out["peak_bandwidth_gbps"] = max(v["gbps"] for v in bw.values())
  shape = (16384, 64)
  prng = {}
  for impl in ("threefry2x32", "rbg", "unsafe_rbg"):
    key = jax.random.key(0, impl=impl)
    f = jax.jit(lambda kk: jax.random.uniform(kk, shape))
    t = median_seconds(f, key, repeats=r)
    prng[impl] = {"seconds": t, "gvalues_per_s": np.prod(shape) / t / 1e9}
  out["uniform_16384x64"] = prng
  return out


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--repeats", type=int, default=7)
  out = {"machine": runtime.machine(), **measure(p.parse_args().repeats)}
  print(json.dumps(out, indent=2))


if __name__ == "__main__":
  main()
