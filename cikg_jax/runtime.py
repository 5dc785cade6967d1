"""The process's runtime settings, applied before JAX starts: XLA:CPU's scheduler, the allocator
and XLA:GPU's deterministic mode; and the description of the machine (`machine`) that every speed
figure records.

`set_xla_cpu_flags` picks XLA:CPU's memory-optimised instruction scheduler. The default
(concurrency-optimised) runs independent kernels side by side, each already split over the cores;
on a machine with few cores they compete for the cores and caches (docs/speed.md). Every value
computed is the same bit for bit (tests/test_speed.py). It must run before JAX creates its CPU
client (cikg_jax/main.py and experiments/bench.py call it first).

`keep_freed_memory` makes glibc keep freed memory for reuse: by default blocks above its mmap
threshold are returned on free, so each step touches fresh pages, and a step with hundreds of MB of
temporaries spends more time in page faults than computing (docs/speed.md). It changes no value,
only where buffers live; RSS stays near the peak instead of shrinking between steps.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.metadata
import os
import platform

_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4

_done = False

# name -> value; each applies unless XLA_FLAGS already names that flag
XLA_CPU_FLAGS = {"--xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"}


# Set by experiments/runner.py and experiments/tune.py to their PID for the runs they start.
STOP_WITH_PID = "CIKG_STOP_WITH_PID"
_PR_SET_PDEATHSIG = 1


def stop_with_parent() -> None:
  """A training started by an experiment runner or the tuner (STOP_WITH_PID set to its PID) is
  sent SIGTERM when that process dies (Linux prctl PR_SET_PDEATHSIG), so that a killed tuner
  leaves no training behind that still holds the run's directory when the tuner resumes it. The
  variable is removed: processes this run starts do not inherit it."""
  pid = os.environ.pop(STOP_WITH_PID, None)
  if not pid or platform.system() != "Linux":
    return
  import signal

  ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
  if os.getppid() != int(pid):  # it died before the line above, or the variable is stray
    raise SystemExit(
      f"error: {STOP_WITH_PID}={pid} names no parent of this run (the runner that started it "
      "has ended, or the variable was set by hand: unset it)"
    )


def nvidia_gpu_visible() -> bool:
  """An NVIDIA device node exists: the CPU scheduler flag is then left out, since it was measured
  and tested only with the CPU jaxlib (an unknown XLA flag aborts XLA at start-up)."""
  return os.path.exists("/dev/nvidiactl") or os.path.exists("/dev/nvidia0")


def set_xla_cpu_flags(flags=None) -> str:
  """Adds `flags` (default XLA_CPU_FLAGS) to the XLA_FLAGS environment variable, leaving any flag
  the user set there alone, and returns the result. XLA reads the variable once, when JAX creates
  its first client: call this before any JAX computation. Changes no value computed."""
  flags = XLA_CPU_FLAGS if flags is None else flags
  current = os.environ.get("XLA_FLAGS", "").split()
  names = {f.split("=", 1)[0] for f in current}
  current += [f"{k}={v}" for k, v in flags.items() if k not in names]
  os.environ["XLA_FLAGS"] = " ".join(current)
  return os.environ["XLA_FLAGS"]


# XLA:GPU's deterministic mode: scatter-adds without atomics and autotuning that picks the same
# kernels every run, so one seed gives one run on a GPU as it does on the CPU (whose kernels are
# deterministic already). Its scatter-add is far slower than the atomic one: a gather +
# segment_sum propagation under it trained CIKGRec at one epoch in minutes on an H200, so
# model.backend=auto propagates with the CSR product there (propagation.default_backend), which
# ran identical repeats (experiments/results/reproducibility/, docs/results.md).
XLA_GPU_DETERMINISTIC_FLAGS = {"--xla_gpu_deterministic_ops": "true"}


def xla_gpu_deterministic_requested() -> bool:
  """XLA_FLAGS asks XLA:GPU for its deterministic ops (set_xla_gpu_deterministic, or the user)."""
  flags = os.environ.get("XLA_FLAGS", "").split()
  return any(
    f.lower() in ("--xla_gpu_deterministic_ops=true", "--xla_gpu_deterministic_ops") for f in flags
  )


def set_xla_gpu_deterministic(on: bool) -> str:
  """With `on` and an NVIDIA device visible, XLA_FLAGS gains XLA_GPU_DETERMINISTIC_FLAGS (unless
  the user set them). Call before any JAX computation (config.train.deterministic, main.py)."""
  if on and nvidia_gpu_visible():
    return set_xla_cpu_flags(XLA_GPU_DETERMINISTIC_FLAGS)
  return os.environ.get("XLA_FLAGS", "")


def keep_freed_memory(top_pad_mb: int = 256) -> bool:
  """No mmap'd blocks, no trimming of the heap, `top_pad_mb` extra per heap growth (glibc only;
  returns False and does nothing elsewhere). Idempotent."""
  global _done
  if _done:
    return True
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return False
  mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
  ok = (
    mallopt(_M_MMAP_MAX, 0) == 1
    and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    and mallopt(_M_TOP_PAD, top_pad_mb * 2**20) == 1
  )
  _done = ok
  return ok


def restore_malloc_defaults() -> None:
  """glibc's defaults again (for A/B timing); the dynamic mmap threshold starts afresh."""
  global _done
  libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
  libc.mallopt(_M_MMAP_MAX, 65536)
  libc.mallopt(_M_TRIM_THRESHOLD, 128 * 1024)
  libc.mallopt(_M_TOP_PAD, 0)
  libc.malloc_trim(0)
  _done = False


# x86 vector extensions that XLA:CPU (LLVM, compiling for the host), Eigen, XNNPACK and torch pick
# at run time when the CPU has them, narrowest first (names as /proc/cpuinfo spells them).
VECTOR_EXTENSIONS = (
  "sse4_2",
  "avx",
  "avx2",
  "fma",
  "avx_vnni",
  "avx512f",
  "avx512dq",
  "avx512bw",
  "avx512vl",
  "avx512_vnni",
  "avx512_bf16",
  "avx512_fp16",
  "amx_tile",
  "amx_bf16",
  "asimd",
  "sve",
  "sve2",
)


def _cpuinfo(path: str = "/proc/cpuinfo") -> dict:
  """The first processor's fields of /proc/cpuinfo ({} where there is none)."""
  fields = {}
  try:
    with open(path) as f:
      for line in f:
        if not line.strip():
          if fields:
            break
          continue
        k, _, v = line.partition(":")
        fields.setdefault(k.strip(), v.strip())
  except OSError:
    pass
  return fields


def _version(package: str):
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return None


def loadavg():
  """The 1, 5 and 15 minute load averages (floats), None where /proc/loadavg is missing."""
  try:
    with open("/proc/loadavg") as f:
      return [float(x) for x in f.read().split()[:3]]
  except OSError:
    return None


def cpus_usable() -> int:
  """The CPUs this process may run on (its affinity, e.g. under taskset). XLA's CPU thread pool
  follows it, and reruns of one seed with the same code differed between one and two usable CPUs
  (docs/results.md, "How much a rerun moves"): results record it."""
  try:
    return len(os.sched_getaffinity(0))
  except (AttributeError, OSError):
    return os.cpu_count() or 1


def machine(cpuinfo: str = "/proc/cpuinfo") -> dict:
  """What a speed figure was measured on: CPU model, the vector extensions it has of
  VECTOR_EXTENSIONS (the widest ones the kernels use), logical CPUs (all, and those this process
  may run on), load averages now, jax/jaxlib/torch versions installed in this Python (None when
  absent) and XLA_FLAGS. Reads files only: it imports neither jax nor torch."""
  info = _cpuinfo(cpuinfo)
  flags = set(info.get("flags", info.get("Features", "")).split())
  model = info.get("model name") or info.get("Model name") or platform.processor() or None
  exts = [x for x in VECTOR_EXTENSIONS if x in flags]
  return {
    "cpu_model": model,
    "cpu_class": cpu_class(model, exts),
    # vendor, family, model, stepping: the microarchitecture where the model name is generic
    "cpu_id": " ".join(
      info.get(k, "?") for k in ("vendor_id", "cpu family", "model", "stepping") if k in info
    )
    or None,
    "vector_extensions": exts,
    "logical_cpus": os.cpu_count(),
    "cpus_usable": cpus_usable(),
    "loadavg": loadavg(),
    "arch": platform.machine(),
    "jax": _version("jax"),
    "jaxlib": _version("jaxlib"),
    "torch": _version("torch"),
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
  }


def cpu_class(model, extensions) -> str:
  """A short label for the README's machine column: the model and its widest x86 vector unit,
  e.g. "AMD EPYC, AVX-512"."""
  exts = set(extensions)
  width = (
    "AVX-512"
    if "avx512f" in exts
    else "AVX2"
    if "avx2" in exts
    else "AVX"
    if "avx" in exts
    else "SVE"
    if "sve" in exts
    else "NEON"
    if "asimd" in exts
    else "no AVX"
  )
  return f"{model or 'unknown CPU'}, {width}"
