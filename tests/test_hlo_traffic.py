"""experiments/hlo_traffic.py: the bytes a device receives per step, from the compiled HLO,
against hand-counted values (a hand-written module and a compiled shard_map program)."""

import json
import os
import subprocess
import sys

from experiments import hlo_traffic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# An entry that all-gathers once, a loop of 5 trips that all-to-alls twice per trip, a conditional
# whose branch all-reduces, and a reduction computation (called per element, no collective).
HLO = """HloModule m, num_partitions=4

%add (a: f32[], b: f32[]) -> f32[] {
  ROOT %s = f32[] add(f32[] %a, f32[] %b)
}

%body (p: (s32[], f32[8,4])) -> (s32[], f32[8,4]) {
  %x = f32[8,4]{1,0} get-tuple-element(%p), index=1
  %a2a = (f32[2,4]{1,0}, f32[2,4]{1,0}, f32[2,4]{1,0}, f32[2,4]{1,0}) all-to-all(%x0, %x1, %x2, %x3), channel_id=1, replica_groups={{0,1,2,3}}
  %a2a.1 = bf16[4,4]{1,0} all-to-all(%y), channel_id=2, replica_groups=[2,2]<=[4], dimensions={0}
  ROOT %t = (s32[], f32[8,4]{1,0}) tuple(%i, %x)
}

%cond (p: (s32[], f32[8,4])) -> pred[] {
  ROOT %lt = pred[] compare(%i, %n), direction=LT
}

%branch (q: f32[16]) -> f32[16] {
  ROOT %ar = f32[16]{0} all-reduce(%q), channel_id=3, replica_groups={{0,1,2,3}}, to_apply=%add
}

ENTRY %main (param: f32[8,4]) -> f32[8,4] {
  %ag = f32[32,4]{1,0} all-gather(%param), channel_id=4, replica_groups={{0,1,2,3}}, dimensions={0}
  %w = (s32[], f32[8,4]{1,0}) while(%init), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"5"}}
  %c = f32[16]{0} conditional(%pred, %q), branch_computations={%branch}
  ROOT %r = f32[8,4]{1,0} reduce(%x, %z), dimensions={}, to_apply=%add
}
"""


def test_hand_written_module():
  got = hlo_traffic.traffic(HLO, 4)
  all_gather = 32 * 4 * 4 * 3 / 4  # the other 3 devices' quarters
  all_to_all = 5 * (4 * 2 * 4 * 4 * 3 / 4 + 4 * 4 * 2 * 1 / 2)  # groups of 4, then of 2
  all_reduce = 2 * 16 * 4 * 3 / 4  # a ring: reduce-scatter then all-gather
  assert got["by_kind"] == {
    "all-gather": all_gather,
    "all-to-all": all_to_all,
    "all-reduce": all_reduce,
  }
  assert got["count"] == {"all-gather": 1, "all-to-all": 10, "all-reduce": 1}
  assert got["received_bytes"] == all_gather + all_to_all + all_reduce
  assert got["unknown_trip_counts"] == 0


_PROGRAM = """
import json, os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
sys.path.insert(0, sys.argv[1])
import jax, jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P
from experiments import hlo_traffic

def body(x):  # x: (8, 4) per device
  y = jax.lax.all_gather(x, "g", tiled=True)
  def f(c, _):
    return c + jax.lax.all_to_all(c, "g", 0, 0, tiled=True), None
  c, _ = jax.lax.scan(f, x, None, length=3)
  return jax.lax.psum(c, "g") + y[:8]

fn = jax.jit(jax.shard_map(body, mesh=Mesh(jax.devices(), ("g",)), in_specs=P("g"), out_specs=P("g")))
print(json.dumps(hlo_traffic.traffic(fn.lower(jnp.ones((32, 4))).compile().as_text(), 4)))
"""


def test_compiled_shard_map_program():
  out = subprocess.run(
    [sys.executable, "-c", _PROGRAM, ROOT],
    capture_output=True,
    text=True,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
    check=True,
  )
  got = json.loads(out.stdout.strip().splitlines()[-1])
  block = 8 * 4 * 4  # one device's (8, 4) float32 rows
  assert got["by_kind"] == {
    "all-gather": 4 * block * 3 / 4,
    "all-to-all": 3 * block * 3 / 4,  # 3 trips of the scan
    "all-reduce": 2 * block * 3 / 4,
  }


def test_a_conditional_counts_the_branch_that_receives_most():
  """One branch of a conditional runs: a loop of 3 trips around a two-branch conditional (an
  all-reduce of 16 floats, a collective-permute of 8) counts 3 all-reduces, not both kinds."""
  hlo = HLO.replace(
    "branch_computations={%branch}", "branch_computations={%branch, %small}"
  ).replace(
    "ENTRY %main",
    "%small (q: f32[8]) -> f32[8] {\n"
    "  ROOT %cp = f32[8]{0} collective-permute(%q), channel_id=5, "
    "source_target_pairs={{0,1},{1,2},{2,3},{3,0}}\n}\n\nENTRY %main",
  )
  got = hlo_traffic.traffic(hlo, 4)
  assert got["count"] == {"all-gather": 1, "all-to-all": 10, "all-reduce": 1}
  assert got["by_kind"]["all-reduce"] == 2 * 16 * 4 * 3 / 4
  smaller = hlo.replace("%ar = f32[16]{0} all-reduce", "%ar = f32[1]{0} all-reduce")
  got = hlo_traffic.traffic(smaller, 4)
  assert got["count"] == {"all-gather": 1, "all-to-all": 10, "collective-permute": 1}
  assert got["by_kind"]["collective-permute"] == 8 * 4
