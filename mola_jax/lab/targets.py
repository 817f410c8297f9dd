"""The devices lab/aot.py compiles for without having them, and what a step costs on each at best.

GPUs: XLA's GPU compiler (jax's CUDA plugin, `pip install "jax[cuda12-local]"`: no driver, no GPU) compiles for a
device described by a target config, a GpuTargetConfigProto in text format. The H100, H200 and A100 ones are package
data (gpu_targets/*.txtpb, each with the data-sheet figures it holds and their sources). A topology names the target
and the layout, `h100:1x1x8`: slices x hosts per slice x GPUs per host (one GPU, `h100` or `h100:1x1x1`; a node of
8, `h100:1x1x8`; two nodes of 8, `h100:2x1x8`). TPUs: libtpu's named slices (`v5e:2x4`, lab/aot.py).

The floor of a step (a projection, never a measurement): max(FLOPs at the chip's peak for the program's matmul
precision, bytes at the chip's HBM bandwidth) + kernels x a launch cost. FLOPs, bytes and kernels come from the
compiled program (lab/hlo.py). The peaks and bandwidths are the vendors' data-sheet figures (CHIPS). The launch cost
is a stated figure: 2 us per kernel on a GPU, the order of the launch-to-launch time of a chain of dependent small
kernels (CUDA's own guides put a launch at a few microseconds, CUDA Graphs at less; NVIDIA's "Getting Started
with CUDA Graphs" measured 3.4-3.8 us per ~3 us kernel on a V100); 1 us per fused op on a TPU, an assumption: a
TPU program runs its ops back to back without host launches, and no vendor figure is published for the fixed cost
of one op. Interconnect time of collectives is not in the floor (lab/hlo.py counts their bytes apart).
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import re

from mola_jax.errors import ConfigError

GPU_TARGETS = ("h100", "h200", "a100")  # gpu_targets/<name>.txtpb
GPU_TOPOLOGY = re.compile(r"^(\d+)x(\d+)x(\d+)$")


@dataclasses.dataclass(frozen=True)
class Chip:
  """A device's data-sheet figures: dense matmul peaks in FLOP/s by precision, HBM bytes per second and bytes, and
  the stated cost of launching one kernel (one op on a TPU)."""

  name: str
  kind: str  # a substring of jax's device_kind
  peaks: dict  # "float32" (full float32 matmuls), "tensorfloat32", "bfloat16"
  hbm_bytes_per_s: float
  hbm_bytes: int
  launch_seconds: float


GPU_LAUNCH, TPU_OP = 2e-6, 1e-6
# TPUs multiply in bfloat16: a float32 matmul at full precision takes 6 bfloat16 passes, at tensorfloat32-like
# precision 3 (XLA's bf16_6x and bf16_3x algorithms, jax.lax.Precision HIGHEST and HIGH).
tpu_peaks = lambda bf16: {"float32": bf16 / 6, "tensorfloat32": bf16 / 3, "bfloat16": bf16}
CHIPS = (
  # NVIDIA data sheets: H100 SXM (dense; the sheet's tensor figures are with sparsity, twice these), 3.35 TB/s, 80 GB.
  Chip("h100", "H100", {"float32": 67e12, "tensorfloat32": 494.7e12, "bfloat16": 989.4e12}, 3.35e12, 80 << 30,
       GPU_LAUNCH),
  # H200 SXM: the H100's compute, 4.8 TB/s, 141 GB.
  Chip("h200", "H200", {"float32": 67e12, "tensorfloat32": 494.7e12, "bfloat16": 989.4e12}, 4.8e12, 141 << 30,
       GPU_LAUNCH),
  # A100 SXM4 80GB: 2,039 GB/s.
  Chip("a100", "A100", {"float32": 19.5e12, "tensorfloat32": 156e12, "bfloat16": 312e12}, 2.039e12, 80 << 30,
       GPU_LAUNCH),
  # Google Cloud TPU system architecture pages: bf16 peak, HBM bandwidth and capacity per chip.
  Chip("v5e", "TPU v5 lite", tpu_peaks(197e12), 819e9, 16 << 30, TPU_OP),
  Chip("v6e", "TPU v6 lite", tpu_peaks(918e12), 1640e9, 32 << 30, TPU_OP),
  Chip("v5p", "TPU v5", tpu_peaks(459e12), 2765e9, 95 << 30, TPU_OP),
  Chip("v4", "TPU v4", tpu_peaks(275e12), 1200e9, 32 << 30, TPU_OP),
)  # fmt: skip


def chip(device_kind: str) -> Chip | None:
  """The chip of a jax device_kind (the longest matching name first: "TPU v5 lite" before "TPU v5")."""
  found = [c for c in CHIPS if c.kind.lower() in device_kind.lower()]
  return max(found, key=lambda c: len(c.kind)) if found else None


def precision(compute_dtype: str, matmul_precision: str, platform: str) -> str:
  """The key of Chip.peaks a program's matmuls run at: bfloat16 compute, or float32 inputs at the configured
  matmul precision ("default": TF32 on a GPU, one bfloat16 pass on a TPU)."""
  if compute_dtype == "bfloat16" or matmul_precision == "bfloat16":
    return "bfloat16"
  if matmul_precision == "default":
    return "tensorfloat32" if platform == "gpu" else "bfloat16"
  return matmul_precision


def floor(kernels: float, flops: float, nbytes: float, device: Chip, precision_key: str) -> dict:
  """A step's floor in seconds and its three terms (a projection): compute = FLOPs at the peak, memory = bytes at
  the HBM bandwidth, launch = kernels x the launch cost; floor = max(compute, memory) + launch; `bound` names the
  larger of max(compute, memory) and launch."""
  compute, memory = flops / device.peaks[precision_key], nbytes / device.hbm_bytes_per_s
  launch = kernels * device.launch_seconds
  bound = "launch" if launch >= max(compute, memory) else ("compute" if compute >= memory else "memory")
  return {"compute_s": compute, "memory_s": memory, "launch_s": launch, "floor_s": max(compute, memory) + launch,
          "bound": bound}  # fmt: skip


def is_gpu(topology: str) -> bool:
  return topology.split(":")[0].lower() in GPU_TARGETS


def target_config(name: str) -> str:
  """The text of a GPU target config shipped with the package (gpu_targets/<name>.txtpb)."""
  return (importlib.resources.files("mola_jax.lab") / "gpu_targets" / f"{name}.txtpb").read_text()


def gpu_devices(topology: str) -> list:
  """The devices of `name[:SxHxG]` (e.g. h100:1x1x8), compiled for by XLA's GPU compiler without a GPU."""
  name, _, layout = topology.lower().partition(":")
  layout = layout or "1x1x1"
  if name not in GPU_TARGETS or not GPU_TOPOLOGY.match(layout):
    raise ConfigError(
      f"unknown GPU topology {topology!r}; give TARGET[:SLICESxHOSTSxGPUS] with TARGET one of "
      f"{', '.join(GPU_TARGETS)}, e.g. h100, h100:1x1x8 (a node of 8), h100:2x1x8 (two nodes)"
    )
  from jax.experimental import topologies

  try:
    desc = topologies.get_topology_desc(name, "cuda", target_config=target_config(name), topology=layout)
  except Exception as e:  # the CUDA plugin missing: the user's fix
    raise ConfigError(
      f"cannot describe GPU topology {topology!r} ({type(e).__name__}: {' '.join(str(e).split())[:160]}); install "
      'jax\'s CUDA plugin (pip install "jax[cuda12-local]", no GPU or driver needed to compile)'
    ) from None
  return list(desc.devices)


# XLA without a GPU cannot autotune: it gives every Triton GEMM fusion the first tiling of its search space without
# compiling it, where a GPU's autotuner compiles the candidates and drops those that fail (falling back to cuBLAS).
# For a GEMM whose rows merge a transposed token axis of a size that is no power of two (iTransformer's 11 = 7
# variates + 4 time features, at an eval batch of 256) no power-of-two row tile maps onto that operand, and the
# compile stops with this error. Such a program is compiled again with Triton GEMM fusions off: every GEMM a cuBLAS
# call, what the autotuner would have fallen back to for the failing fusion.
DEVICELESS_TILING_ERROR = "Couldn't find output tile sizes"
CUBLAS_ONLY = {"xla_gpu_enable_triton_gemm": False}


GPU_GEMMS = ("auto", "cublas")


def compile_gpu(lowered, gemm: str = "auto"):
  """-> (compiled, the XLA options it was compiled with: {} or CUBLAS_ONLY). gemm "auto": XLA's defaults, and
  CUBLAS_ONLY where a program fails as above; "cublas": CUBLAS_ONLY for every program (counts that compare)."""
  if gemm not in GPU_GEMMS:
    raise ConfigError(f"unknown study.gpu_gemm {gemm!r}; use one of {', '.join(GPU_GEMMS)}")
  if gemm == "cublas":
    return lowered.compile(compiler_options=CUBLAS_ONLY), CUBLAS_ONLY
  try:
    return lowered.compile(), {}
  except Exception as e:  # jax's JaxRuntimeError; anything else is re-raised
    if DEVICELESS_TILING_ERROR not in str(e):
      raise
  return lowered.compile(compiler_options=CUBLAS_ONLY), CUBLAS_ONLY
