"""bench.md: the benchmark's figures as tables (every figure is also in bench.json). One renderer, a function per
section."""

from __future__ import annotations

# The headline figures of bench.md's first table, in order (lab/bench.py REQUIRED come first).
HEADLINES = (
  "stage2_step_windows_per_s", "stage2_dispatch_windows_per_s", "stage2_chunk_over_dispatch",
  "stage2_batched_over_loop", "stage2_dropout_cost",
  "stage2_groups_speedup", "stage2_step_over_ffn_matmul", "ffn_matmul_flop_per_s", "stage2_compile_cold_seconds",
  "stage2_compile_warm_seconds", "stage2_fit_skipped_seconds", "stage2_fit_computed_seconds",
  "stage2_fit_computed_over_skipped", "stage2_shared_over_unshared_prefix",
  "stage2_shared_dropout_over_unshared_prefix", "stage2_factored_over_dense_delta", "eval_test_windows_per_s",
  "eval_batched_over_loop", "eval_shared_over_unshared_prefix", "loop_max_rel_diff", "unshared_prefix_max_rel_diff",
)  # fmt: skip


def g(x) -> str:
  return "—" if x is None else f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.4g}"


def pct(x) -> str:
  return "—" if x is None else f"{100 * x:.2f}%"


def markdown(r: dict, required: tuple) -> str:
  """bench.md: the headline figures, the variants side by side, the sweeps, MFU, bf16 accuracy, memory."""
  parts = [header(r), figures(r, required), evaluations(r), steps(r), sweeps(r), mfu(r), accuracy(r), memory(r)]
  return "\n".join(line for part in parts for line in part) + "\n"


def header(r: dict) -> list[str]:
  s = r["settings"]
  return [
    f"# Benchmark: {s['config']}, {s['backbone']} {s['method']}, T = {s['T']}, S = {s['S']}, K = {s['K']}, "
    f"D = {s['D']}",
    "",
    f"{s['device_kind']} ({s['platform']}), jax {s['jax']}, XLA_FLAGS `{s['xla_flags']}`, compiler options "
    f"`{s['compiler_options']}`; medians of {s['repeats']} repeats; batch {s['pretrain_batch']} (stage 1), "
    f"{s['adapt_batch']} (stage 2), {s['eval_batch']} (eval)."
    + (" **CI mode (tiny): a smoke test, not a measurement.**" if s["tiny"] else ""),
  ]


def figures(r: dict, required: tuple) -> list[str]:
  return ["", "| figure | value |", "|---|---|"] + [f"| `{key}` | {g(r.get(key))} |" for key in required + HEADLINES]


def evaluations(r: dict) -> list[str]:
  out = [
    "",
    "## Evaluation of the whole test split",
    "",
    "| variant | seconds | windows/s | compile s |",
    "|---|---|---|---|",
  ]
  return out + [
    f"| {name} | {g(e['seconds'])} | {g(e['windows_per_s'])} | {g(e['compile_seconds'])} |"
    for name, e in r["eval"].items()
  ]


def table(rows: list[dict], relative: bool) -> list[str]:
  """Timed train steps; with `relative`, each row's step time against the first row of its variant."""
  lines = [
    "| row | variant | mode | K | S | T | D | windows/s | ms/step | step time vs first | GFLOP/step | GFLOP/s | "
    "MiB compiled | compile s |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  first = {}
  for row in rows:
    base = first.setdefault(row["variant"], row["step_ms"])
    growth = f"{row['step_ms'] / base:.2f}x" if relative else "—"
    cached = " (cached)" if row.get("compile_cached") else ""
    lines.append(
      f"| {row['name']} | {row['variant']} | {row['mode']} | {row['K']} | {row['S']} | {row['T']} | {row['D']} | "
      f"{g(row['windows_per_s'])} | {g(row['step_ms'])} | {growth} | {g(row['flops_per_step'] / 1e9)} | "
      f"{g(row['gflop_per_s'])} | {g(row['bytes_per_device'] / 2**20)} | {g(row['compile_seconds'])}{cached} |"
    )
  return lines


def steps(r: dict) -> list[str]:
  rows = [row for row in r["rows"] if "sweep" not in row]
  return ["", "## Training steps: both stages, modes and variants", ""] + table(rows, relative=False)


def sweeps(r: dict) -> list[str]:
  out = []
  for sweep, what in (
    ("K", "segments K at fixed T (S = T / K)"),
    ("T", "horizon T (S = its default)"),
    ("D", "channels D (synthetic data)"),
  ):
    rows = [row for row in r["rows"] if row.get("sweep") == sweep]
    if rows:
      out += ["", f"## How stage-2 cost grows with {what}", ""] + table(rows, relative=True)
  return out


def mfu(r: dict) -> list[str]:
  s, nominal = r["settings"], r["nominal_peak_flop_per_s"]
  peaks = ", ".join(f"{k} {g(v / 1e12) + ' TFLOP/s' if v else '—'}" for k, v in nominal.items())
  out = [
    "", "## FLOP/s and MFU", "",
    f"Measured matmul ({s['matmul_size']}^3): {g(r['matmul_flop_per_s'] / 1e9)} GFLOP/s float32, "
    f"{g(r['matmul_bf16_flop_per_s'] / 1e9)} GFLOP/s bfloat16. Nominal peak: {peaks}.",
    "", "| step | achieved GFLOP/s | MFU vs measured matmul | MFU vs nominal peak |", "|---|---|---|---|",
  ]  # fmt: skip
  for name, v in r["mfu"].items():
    achieved, measured, nom = v["achieved_flop_per_s"], v["mfu_vs_measured_matmul"], v["mfu_vs_nominal"]
    out.append(f"| {name} | {g(achieved / 1e9)} | {pct(measured)} | {pct(nom)} |")
  return out


def accuracy(r: dict) -> list[str]:
  a = r["accuracy_bf16"]
  out = [
    "", "## bf16 compute (float32 master weights): accuracy", "",
    "Both stages trained from one init on the same batches, evaluated on the whole test split in the same dtype.",
    "", "| compute dtype | stage-1 steps | stage-2 steps | stage-1 test MSE | stage-2 test MSE |",
    "|---|---|---|---|---|",
  ]  # fmt: skip
  for d in ("float32", "bfloat16"):
    out.append(
      f"| {d} | {a[d]['stage1_steps']} | {a[d]['stage2_steps']} | {a[d]['stage1_test_mse']:.5f} | "
      f"{a[d]['test_mse']:.5f} |"
    )
  return out + [
    "",
    f"Stage-2 test MSE change: {100 * a['bfloat16_rel_change_test_mse']:+.3f}% (bf16 training and eval); "
    f"{100 * a['bfloat16_eval_only_rel_change_test_mse']:+.3f}% (float32-trained weights, bf16 eval).",
  ]


def memory(r: dict) -> list[str]:
  peak = r["device_peak_bytes"]
  device = "— (not reported on this platform)" if peak is None else f"{g(peak / 2**20)} MiB"
  out = [
    "", "## Memory", "",
    f"Peak host RSS {g(r['peak_rss_mb'])} MB; device peak {device}; compiled stage-2 step "
    f"{g(r['stage2_step_bytes_per_device'] / 2**20)} MiB (arguments + outputs + temporaries - donated). Benchmark "
    f"wall time {r['bench_seconds']:.0f} s.",
  ]  # fmt: skip
  return out + (["", "Skipped: " + "; ".join(r["skipped"]) + "."] if r["skipped"] else [])
