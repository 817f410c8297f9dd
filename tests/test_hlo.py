"""What a step is made of, counted from HLO text (mola_jax/lab/hlo.py): a hand-written module whose kernels,
FLOPs and bytes are known, and programs jitted here whose matmul FLOPs and loop lengths are known."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from mola_jax.lab import hlo

# A chunk of 5 steps: the entry launches one fusion, then a while loop (5 iterations) whose body takes the step's
# branch of a conditional (a sliced read, a GEMM fusion, a cuBLAS call, an all-reduce) and writes the step's loss in
# place (a dynamic-update-slice fusion); the other branch copies. Scalar bookkeeping (the counter) is no kernel.
MODULE = """HloModule chunk, is_scheduled=true

%fused_slice (p.0: f32[100,16], p.1: s32[]) -> f32[8,16] {
  %p.0 = f32[100,16]{1,0} parameter(0)
  %p.1 = s32[] parameter(1)
  %zero = s32[] constant(0)
  ROOT %ds = f32[8,16]{1,0} dynamic-slice(%p.0, %p.1, %zero), dynamic_slice_sizes={8,16}
}

%fused_dot (q.0: f32[8,16], q.1: f32[16,4]) -> f32[8,4] {
  %q.0 = f32[8,16]{1,0} parameter(0)
  %q.1 = f32[16,4]{1,0} parameter(1)
  %dot.1 = f32[8,4]{1,0} dot(%q.0, %q.1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  ROOT %tanh.1 = f32[8,4]{1,0} tanh(%dot.1)
}

%fused_dus (r.0: f32[5,4], r.1: f32[1,4], r.2: s32[]) -> f32[5,4] {
  %r.0 = f32[5,4]{1,0} parameter(0)
  %r.1 = f32[1,4]{1,0} parameter(1)
  %r.2 = s32[] parameter(2)
  %zero.1 = s32[] constant(0)
  ROOT %dus = f32[5,4]{1,0} dynamic-update-slice(%r.0, %r.1, %r.2, %zero.1)
}

%add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %sum = f32[] add(%a, %b)
}

%step (t: (f32[100,16], s32[], f32[16,4], f32[4,4])) -> f32[1,4] {
  %t = (f32[100,16]{1,0}, s32[], f32[16,4]{1,0}, f32[4,4]{1,0}) parameter(0)
  %series = f32[100,16]{1,0} get-tuple-element(%t), index=0
  %i = s32[] get-tuple-element(%t), index=1
  %w = f32[16,4]{1,0} get-tuple-element(%t), index=2
  %w2 = f32[4,4]{1,0} get-tuple-element(%t), index=3
  %x = f32[8,16]{1,0} fusion(%series, %i), kind=kLoop, calls=%fused_slice
  %h = f32[8,4]{1,0} fusion(%x, %w), kind=kCustom, calls=%fused_dot
  %gemm = (f32[8,4]{1,0}, s8[1024]{0}) custom-call(%h, %w2), custom_call_target="__cublas$gemm", backend_config={"gemm_backend_config":{"dot_dimension_numbers":{"lhs_contracting_dimensions":["1"],"rhs_contracting_dimensions":["0"],"lhs_batch_dimensions":[],"rhs_batch_dimensions":[]}}}
  %y = f32[8,4]{1,0} get-tuple-element(%gemm), index=0
  %ar = f32[8,4]{1,0} all-reduce-start(%y), replica_groups={}, to_apply=%add
  %ard = f32[8,4]{1,0} all-reduce-done(%ar)
  ROOT %loss = f32[1,4]{1,0} slice(%ard), slice={[0:1], [0:4]}
}

%skip (u: (f32[100,16], s32[], f32[16,4], f32[4,4])) -> f32[1,4] {
  %u = (f32[100,16]{1,0}, s32[], f32[16,4]{1,0}, f32[4,4]{1,0}) parameter(0)
  %w.1 = f32[4,4]{1,0} get-tuple-element(%u), index=3
  ROOT %c = f32[1,4]{1,0} copy(%w.1)
}

%body (s: (s32[], f32[100,16], f32[16,4], f32[4,4], pred[5], f32[5,4])) -> (s32[], f32[100,16], f32[16,4], f32[4,4], pred[5], f32[5,4]) {
  %s = (s32[], f32[100,16]{1,0}, f32[16,4]{1,0}, f32[4,4]{1,0}, pred[5]{0}, f32[5,4]{1,0}) parameter(0)
  %n = s32[] get-tuple-element(%s), index=0
  %series.1 = f32[100,16]{1,0} get-tuple-element(%s), index=1
  %w.2 = f32[16,4]{1,0} get-tuple-element(%s), index=2
  %w2.1 = f32[4,4]{1,0} get-tuple-element(%s), index=3
  %valid = pred[5]{0} get-tuple-element(%s), index=4
  %losses = f32[5,4]{1,0} get-tuple-element(%s), index=5
  %go = pred[] dynamic-slice(%valid, %n), dynamic_slice_sizes={1}
  %args = (f32[100,16]{1,0}, s32[], f32[16,4]{1,0}, f32[4,4]{1,0}) tuple(%series.1, %n, %w.2, %w2.1)
  %loss.1 = f32[1,4]{1,0} conditional(%go, %args, %args), true_computation=%step, false_computation=%skip
  %new = f32[5,4]{1,0} fusion(%losses, %loss.1, %n), kind=kLoop, calls=%fused_dus
  %one = s32[] constant(1)
  %next = s32[] add(%n, %one)
  ROOT %out = (s32[], f32[100,16]{1,0}, f32[16,4]{1,0}, f32[4,4]{1,0}, pred[5]{0}, f32[5,4]{1,0}) tuple(%next, %series.1, %w.2, %w2.1, %valid, %new)
}

%cond (v: (s32[], f32[100,16], f32[16,4], f32[4,4], pred[5], f32[5,4])) -> pred[] {
  %v = (s32[], f32[100,16]{1,0}, f32[16,4]{1,0}, f32[4,4]{1,0}, pred[5]{0}, f32[5,4]{1,0}) parameter(0)
  %k = s32[] get-tuple-element(%v), index=0
  %five = s32[] constant(5)
  ROOT %lt = pred[] compare(%k, %five), direction=LT
}

%fused_zeros () -> f32[5,4] {
  %z = f32[] constant(0)
  ROOT %zeros = f32[5,4]{1,0} broadcast(%z), dimensions={}
}

ENTRY %main (series.2: f32[100,16], w.3: f32[16,4], w2.2: f32[4,4], valid.1: pred[5]) -> f32[5,4] {
  %series.2 = f32[100,16]{1,0} parameter(0)
  %w.3 = f32[16,4]{1,0} parameter(1)
  %w2.2 = f32[4,4]{1,0} parameter(2)
  %valid.1 = pred[5]{0} parameter(3)
  %start = s32[] constant(0)
  %init = f32[5,4]{1,0} fusion(), kind=kLoop, calls=%fused_zeros
  %state = (s32[], f32[100,16]{1,0}, f32[16,4]{1,0}, f32[4,4]{1,0}, pred[5]{0}, f32[5,4]{1,0}) tuple(%start, %series.2, %w.3, %w2.2, %valid.1, %init)
  %loop = (s32[], f32[100,16]{1,0}, f32[16,4]{1,0}, f32[4,4]{1,0}, pred[5]{0}, f32[5,4]{1,0}) while(%state), condition=%cond, body=%body
  ROOT %result = f32[5,4]{1,0} get-tuple-element(%loop), index=5
}
"""  # noqa: E501 (HLO's own lines)


def test_a_hand_written_chunk_counts_its_step_once():
  counted = hlo.step_cost(MODULE)
  assert counted.steps_per_call == 5  # from the condition's `i < 5`: the module carries no trip-count annotation
  step = counted.step
  # slice fusion, GEMM fusion, cuBLAS call, all-reduce, the unfused slice, the in-place loss update; the
  # conditional's and the loop's predicate reads. Not counted: the scalar counter update, tuples,
  # get-tuple-elements, the -done half of the all-reduce.
  assert step.kernels == 8
  assert dict(step.kinds) == {"fusion": 2, "gemm": 2, "collective": 1, "slice": 1, "control": 2}
  assert step.flops == 2 * 8 * 16 * 4 + 2 * 8 * 4 * 4  # the fused dot and the cuBLAS GEMM
  f32 = s32 = 4
  sliced = 8 * 16 * f32 + s32 + 8 * 16 * f32  # reads the slice (not the 100 x 16 series) and its start, writes it
  fused_dot = (8 * 16 + 16 * 4 + 8 * 4) * f32
  gemm = (8 * 4 + 4 * 4 + 8 * 4) * f32  # its s8 workspace is no traffic
  all_reduce = 2 * 8 * 4 * f32
  slice_kernel = (8 * 4 + 1 * 4) * f32
  loss_update = 4 * f32 + s32 + 4 * f32  # in place: reads the update and its index, writes the update only
  assert step.bytes == sliced + fused_dot + gemm + all_reduce + slice_kernel + loss_update
  assert step.collective_bytes == 8 * 4 * f32
  assert counted.outside.kernels == 1 and dict(counted.outside.kinds) == {"fusion": 1}  # the zeros, once a call


def test_the_branch_a_step_takes_is_the_larger_one():
  comps, _ = hlo.parse(MODULE)
  body = hlo.computation_cost(comps, "body")
  assert body.flops == 2 * 8 * 16 * 4 + 2 * 8 * 4 * 4  # the step's branch, not the copying one
  assert "copy" not in body.kinds


@pytest.mark.parametrize("steps", [3, 7])
def test_a_jitted_scan_counts_its_matmuls_once_per_step(steps):
  def chunk(x, w):  # x [steps, 8, 32], w [32, 16]
    return jax.lax.scan(lambda c, xi: (c + jnp.sum(jnp.tanh(xi @ w)), None), 0.0, x)[0]

  x, w = jnp.zeros((steps, 8, 32)), jnp.zeros((32, 16))
  counted = hlo.step_cost(jax.jit(chunk).lower(x, w).compile().as_text())
  assert counted.steps_per_call == steps
  assert counted.step.flops == 2 * 8 * 32 * 16
  assert counted.step.kernels >= 1


def test_batched_dots_and_convolutions_count_their_contractions():
  a, b = jnp.zeros((4, 8, 32)), jnp.zeros((4, 32, 16))
  text = jax.jit(lambda a, b: jnp.einsum("kbi,kio->kbo", a, b)).lower(a, b).compile().as_text()
  assert hlo.step_cost(text).step.flops == 2 * 4 * 8 * 32 * 16
  x, k = jnp.zeros((2, 3, 20)), jnp.zeros((5, 3, 4))  # [N, C_in, W], [C_out, C_in, width]
  conv = lambda x, k: jax.lax.conv_general_dilated(x, k, (1,), "VALID")  # out [2, 5, 17]
  text = jax.jit(conv).lower(x, k).compile().as_text()
  assert hlo.step_cost(text).step.flops == 2 * (2 * 5 * 17) * (3 * 4)


def test_shapes_give_their_bytes():
  assert hlo.nbytes("f32[8,4]{1,0}") == 128
  assert hlo.nbytes("(bf16[2,3]{1,0}, pred[5]{0}, s32[])") == 12 + 5 + 4
  assert hlo.nbytes("f32[1,32,7]{2,1,0:T(8,128)S(1)}") == 4 * 32 * 7  # TPU tiling and memory space annotations
