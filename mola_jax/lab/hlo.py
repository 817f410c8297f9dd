"""What one step of a compiled program is made of, counted from its HLO text (`compiled.as_text()`): the kernels it
launches, its matmul FLOPs and the bytes its kernels read and write. XLA's own cost analysis is not there for a GPU
compiled without one, and counts a loop's body once without saying which loop that was; this counts it the way a
step runs.

* **A step.** fit's programs are loops (a chunk of train steps, a chunk of eval batches): the body of the entry's
  one top-level while loop is a step, counted once, with the branch a conditional takes when the step runs (its
  largest). What the entry does outside that loop happens once per call, not per step (`outside`). A loop nested
  inside the step counts its known trip count times; a program with no loop is a step.
* **Kernels.** Every instruction of a (non-fused) computation that runs as a kernel of its own counts one: a
  fusion, a library call (custom-call: cuBLAS, cuDNN), a collective (its start), a copy, a sort, ...; nothing for
  what compiles to no kernel (parameters, constants, tuples, bitcasts, the `-done` half of an async pair), for an
  unfused op of one element (a TPU's scalar unit runs those: its keys, counters, loop bounds) or for an
  asynchronous copy (a TPU's prefetch from HBM; its bytes count). A while loop's iteration and a conditional each
  count one more: the read of their predicate.
* **FLOPs**: the matmuls only, 2 x output elements x contracted size for every dot, 2 x output elements x the
  kernel's size per output feature for every convolution, cuBLAS GEMM calls alike. Elementwise work is left out:
  on an accelerator it costs bandwidth, which the bytes count.
* **Bytes**: per kernel, the sizes of its operands and outputs as the HLO's shapes say. Two refinements keep the
  in-place and gathering kernels honest: an operand a fusion only slices (dynamic-slice, slice, gather) counts the
  slices, and a fusion whose root updates an operand in place (dynamic-update-slice) writes the update, not the
  buffer. Collectives also count their operands into `collective_bytes` (what goes over the links).

All of it is a count of what the program asks for; how long a device takes is `lab/targets.py`'s floor.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import re

# Bytes per element of each HLO element type.
DTYPE_BYTES = {
  "pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "s32": 4, "u32": 4, "s64": 8, "u64": 8,
  "f16": 2, "bf16": 2, "f32": 4, "f64": 8, "c64": 8, "c128": 16, "f8e4m3fn": 1, "f8e5m2": 1, "f8e4m3": 1,
  "f8e4m3fnuz": 1, "f8e5m2fnuz": 1, "f8e4m3b11fnuz": 1, "f8e8m0fnu": 1, "f4e2m1fn": 0.5, "token": 0,
}  # fmt: skip
ARRAY = re.compile(r"\b(" + "|".join(DTYPE_BYTES) + r")\[([\d,]*)\]")
# Instructions that compile to no kernel: values, views, bookkeeping.
FREE = {
  "parameter", "constant", "get-tuple-element", "tuple", "bitcast", "opt-barrier", "after-all", "add-dependency",
  "domain", "partition-id", "replica-id",
}  # fmt: skip
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute", "ragged-all-to-all")
SLICING = {"slice", "dynamic-slice", "gather"}
CALLS = re.compile(r"\b(calls|to_apply|condition|body|true_computation|false_computation|branch_computations)="
                   r"(\{[^}]*\}|%[\w.\-]+)")  # fmt: skip


@dataclasses.dataclass
class Instr:
  name: str
  shape: str  # e.g. f32[32,128]{1,0}, or a tuple (f32[2]{0}, s32[])
  opcode: str
  args: str  # the text between the parentheses: operand names, or a parameter's number
  attrs: str  # everything after them

  @property
  def operands(self) -> list[str]:
    return re.findall(r"%([\w.\-]+)", self.args)

  def called(self, key: str) -> list[str]:
    return [n for k, v in CALLS.findall(self.attrs) if k == key for n in re.findall(r"%([\w.\-]+)", v)]


@dataclasses.dataclass
class Computation:
  name: str
  instrs: list[Instr]
  root: str

  def __post_init__(self):
    self.by_name = {i.name: i for i in self.instrs}


def _closing(text: str, start: int) -> int:
  """The index of the bracket that closes text[start] ('(' or '{')."""
  depth, pairs = 0, {"(": ")", "{": "}"}
  close = pairs[text[start]]
  for i in range(start, len(text)):
    if text[i] == text[start]:
      depth += 1
    elif text[i] == close:
      depth -= 1
      if depth == 0:
        return i
  raise ValueError(f"unbalanced {text[start]!r} in HLO line: {text[:120]}")


def parse_instr(line: str) -> Instr | None:
  m = re.match(r"\s*(?:ROOT\s+)?%([\w.\-]+)\s*=\s*", line)
  if not m:
    return None
  rest = line[m.end() :]
  end = _closing(rest, 0) + 1 if rest.startswith("(") else rest.index(" ")
  shape, rest = rest[:end], rest[end:].lstrip()
  op = re.match(r"([\w\-]+)\(", rest)
  close = _closing(rest, op.end() - 1)
  return Instr(m.group(1), shape, op.group(1), rest[op.end() : close], rest[close + 1 :])


def parse(text: str) -> tuple[dict[str, Computation], str]:
  """HLO module text -> ({name: computation}, the entry computation's name)."""
  comps, entry, current, lines, root = {}, None, None, [], None
  for line in text.splitlines():
    head = re.match(r"(ENTRY\s+)?%([\w.\-]+)\s+\(.*\{\s*$", line)
    if current is None and head:
      current, lines, root = head.group(2), [], None
      entry = current if head.group(1) else entry
    elif current is not None and line.startswith("}"):
      comps[current] = Computation(current, lines, root)
      current = None
    elif current is not None:
      instr = parse_instr(line)
      if instr is not None:
        lines.append(instr)
        root = instr.name if line.lstrip().startswith("ROOT") else root
  if entry is None:
    raise ValueError("no ENTRY computation in the HLO text")
  return comps, entry


def arrays(shape: str) -> list[tuple[str, tuple[int, ...]]]:
  return [(t, tuple(int(d) for d in dims.split(",") if d)) for t, dims in ARRAY.findall(shape)]


def first(instr: Instr) -> list[tuple[str, str]]:
  """(type, dims) of an instruction's first output array."""
  return ARRAY.findall(instr.shape)[:1]


def nbytes(shape: str) -> float:
  return sum(DTYPE_BYTES[t] * math.prod(dims) for t, dims in arrays(shape))


def _dims(attrs: str, key: str) -> list[int]:
  m = re.search(key + r"=\{([\d,]*)\}", attrs)
  return [int(d) for d in m.group(1).split(",") if d] if m else []


def instr_flops(instr: Instr, comp: Computation) -> float:
  """2 x output elements x contracted size of a dot, a convolution or a GEMM library call; 0 for anything else."""
  out = arrays(instr.shape)
  if not out:
    return 0.0
  out_elems = math.prod(out[0][1])  # a library call's first output is its result (then its workspace)
  names = instr.operands
  if len(names) < 2 or any(n not in comp.by_name for n in names[:2]):
    return 0.0
  operand = lambda i: arrays(comp.by_name[names[i]].shape)[0][1]
  if instr.opcode == "dot":
    return 2.0 * out_elems * math.prod(operand(0)[d] for d in _dims(instr.attrs, "lhs_contracting_dims"))
  labels = re.search(r"dim_labels=\w+_(\w+)->", instr.attrs)
  if labels and instr.opcode in ("convolution", "custom-call"):  # the kernel's size per output feature
    kernel = operand(1)
    return 2.0 * out_elems * math.prod(n for n, c in zip(kernel, labels.group(1), strict=True) if c != "o")
  contracting = re.search(r'"lhs_contracting_dimensions":\[([^\]]*)\]', instr.attrs)
  if instr.opcode == "custom-call" and contracting:  # cuBLAS GEMMs carry dot_dimension_numbers
    dims = [int(d.strip('" ')) for d in contracting.group(1).split(",") if d.strip()]
    return 2.0 * out_elems * math.prod(operand(0)[d] for d in dims)
  return 0.0


def fused_flops(comps: dict, name: str) -> float:
  """The matmul FLOPs inside a fused computation, nested fusions included."""
  comp = comps[name]
  total = 0.0
  for instr in comp.instrs:
    total += instr_flops(instr, comp)
    for callee in instr.called("calls"):
      total += fused_flops(comps, callee)
  return total


def fusion_bytes(comps: dict, instr: Instr, comp: Computation) -> float:
  """Bytes a fusion reads and writes: its operands (or the slices it takes of them) and its outputs (or the
  update it writes in place)."""
  fused = comps[instr.called("calls")[0]]
  params = {int(i.args): i.name for i in fused.instrs if i.opcode == "parameter"}
  users = collections.defaultdict(list)
  for i in fused.instrs:
    for o in i.operands:
      users[o].append(i)
  root = fused.by_name[fused.root]
  outs = [fused.by_name[o] for o in root.operands] if root.opcode == "tuple" else [root]
  in_place = {o.operands[0] for o in outs if o.opcode == "dynamic-update-slice"}
  written = sum(nbytes(fused.by_name[o.operands[1]].shape) if o.opcode == "dynamic-update-slice" else nbytes(o.shape)
                for o in outs)  # fmt: skip
  read = 0.0
  for index, operand in enumerate(instr.operands):
    param = params.get(index)
    if param in in_place:
      continue  # updated in place: only the update moves, counted as written
    uses = users.get(param, [])
    if uses and all(u.opcode in SLICING for u in uses):
      read += min(sum(nbytes(u.shape) for u in uses), nbytes(comp.by_name[operand].shape))
    else:
      read += nbytes(comp.by_name[operand].shape)
  return read + written


@dataclasses.dataclass
class Cost:
  """Kernels, FLOPs and bytes of some part of a program, and its kernels by kind."""

  kernels: float = 0.0
  flops: float = 0.0
  bytes: float = 0.0
  collective_bytes: float = 0.0
  kinds: collections.Counter = dataclasses.field(default_factory=collections.Counter)

  def add(self, other: Cost, times: float = 1.0) -> None:
    self.kernels += times * other.kernels
    self.flops += times * other.flops
    self.bytes += times * other.bytes
    self.collective_bytes += times * other.collective_bytes
    for k, v in other.kinds.items():
      self.kinds[k] += times * v

  def kernel(self, kind: str, flops: float = 0.0, moved: float = 0.0) -> None:
    self.kernels += 1
    self.kinds[kind] += 1
    self.flops += flops
    self.bytes += moved


def trip_count(instr: Instr, comps: dict | None = None) -> int | None:
  """A while loop's trip count: XLA's annotation, else the N of a condition `i < N` (a counter from 0, N a
  constant), else None (a bound known only at run time: fit's chunk loops over the steps an epoch has left)."""
  m = re.search(r'"known_trip_count":\{"n":"(\d+)"', instr.attrs)
  if m:
    return int(m.group(1))
  cond = comps[instr.called("condition")[0]] if comps else None
  root = cond.by_name[cond.root] if cond else None
  if root is not None and root.opcode == "compare" and "direction=LT" in root.attrs:
    bound = cond.by_name.get(root.operands[1])
    if bound is not None and bound.opcode == "constant" and bound.args.strip().isdigit():
      return int(bound.args)
  return None


def _operand_bytes(instr: Instr, comp: Computation) -> float:
  return sum(nbytes(comp.by_name[o].shape) for o in instr.operands if o in comp.by_name)


def computation_cost(comps: dict, name: str) -> Cost:
  """What one run of a non-fused computation launches."""
  comp, cost = comps[name], Cost()
  for instr in comp.instrs:
    op = instr.opcode
    if op in FREE or op.endswith("-done") or op.endswith("-update") or scalar(instr):
      continue
    if op == "copy-start":
      cost.bytes += _operand_bytes(instr, comp) + sum(nbytes(f"{t}[{d}]") for t, d in first(instr))
    elif op == "while":  # a loop inside a step: its trip count times (once if unknown)
      cost.add(loop_body_cost(comps, instr), times=trip_count(instr, comps) or 1)
    elif op == "conditional":
      branches = instr.called("true_computation") + instr.called("false_computation")
      branches += instr.called("branch_computations")
      cost.add(max((computation_cost(comps, b) for b in branches), key=lambda c: (c.flops, c.kernels)))
      cost.kernel("control")  # the predicate's read
    elif op in ("call", "async-start"):
      for callee in instr.called("calls") + instr.called("to_apply"):
        cost.add(computation_cost(comps, callee))
    elif op == "fusion":
      flops = fused_flops(comps, instr.called("calls")[0])
      cost.kernel("gemm" if flops else "fusion", flops, fusion_bytes(comps, instr, comp))
    elif op.removesuffix("-start") in COLLECTIVES:
      moved = _operand_bytes(instr, comp)
      cost.kernel("collective", 0.0, moved + nbytes(instr.shape))
      cost.collective_bytes += moved
    else:  # a library call (its first output is the result, the others scratch space), a copy, a sort, ...
      written = nbytes(instr.shape) if op != "custom-call" else sum(nbytes(f"{t}[{d}]") for t, d in first(instr))
      flops = instr_flops(instr, comp)
      cost.kernel("gemm" if flops else op, flops, _operand_bytes(instr, comp) + written)
  return cost


def scalar(instr: Instr) -> bool:
  """An unfused op of at most one element per output (not a fusion, a call or a loop)."""
  shapes = arrays(instr.shape)
  calls = instr.opcode in ("fusion", "custom-call", "while", "conditional", "call", "async-start")
  return bool(shapes) and not calls and all(math.prod(d) <= 1 for _, d in shapes)


def loop_body_cost(comps: dict, instr: Instr) -> Cost:
  """One iteration of a while loop: its body, its condition and the read of the predicate."""
  cost = computation_cost(comps, instr.called("body")[0])
  cost.add(computation_cost(comps, instr.called("condition")[0]))
  cost.kernel("control")
  return cost


@dataclasses.dataclass
class StepCost:
  step: Cost  # one step: the top-level loop's body once (or the whole program if it has no loop)
  outside: Cost  # the rest of a call: what runs once per call, around the loop
  steps_per_call: int | None  # the loop's trip count (1 without a loop; None: known only at run time)


def step_cost(text: str) -> StepCost:
  """The step of a compiled program's HLO text (module docstring)."""
  comps, entry = parse(text)
  whiles = [i for i in comps[entry].instrs if i.opcode == "while"]
  total = computation_cost(comps, entry)
  if len(whiles) != 1:
    return StepCost(total, Cost(), 1)
  n = trip_count(whiles[0], comps)
  step = loop_body_cost(comps, whiles[0])
  outside = Cost()
  outside.add(total)
  outside.add(step, times=-(n or 1))  # `total` ran the loop n times (once if unknown)
  outside.kinds = +outside.kinds  # the kinds only the loop has drop out
  return StepCost(step, outside, n)
