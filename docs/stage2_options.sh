# The stage-2 options of docs/results.md §11 as config flags, shared by the option studies (sourced, not run):
#   per_segment   --config.adapt.selection=per_segment (each segment keeps the adapter deltas of its own best
#                 validation epoch instead of the official "any segment improved" rule)
#   constant_lr   --config.adapt.lr_decay=1.0 (the stage-2 lr stays constant instead of decaying every epoch)
#   both          the two together
#   heads         --config.adapt.segment_heads=True (every segment also its own full-rank change of the head)
#   heads_ps      heads with per-segment selection
#   heads_both    heads with per-segment selection and the constant lr
#   a_std         --config.technique.mola.a_std=0.1 (the experts' A drawn ten times larger)
#   experts_k     --config.technique.mola.experts_per_segment=2 (P at least 2K)
#   low_lr        --config.adapt.lr=1e-3 (CycleNet's stage 2 otherwise keeps its stage-1 rate, 0.01 or 0.005)
#   epochs        --config.adapt.epochs=30 --config.adapt.patience=5 (iTransformer's stage 2 at CycleNet's length)
# stage2_flags OPTION sets the array `flags`; an unknown option is a one-line error and exit 2.
stage2_flags() {
  case $1 in
    per_segment) flags=(--config.adapt.selection=per_segment) ;;
    constant_lr) flags=(--config.adapt.lr_decay=1.0) ;;
    both) flags=(--config.adapt.selection=per_segment --config.adapt.lr_decay=1.0) ;;
    heads) flags=(--config.adapt.segment_heads=True) ;;
    heads_ps) flags=(--config.adapt.segment_heads=True --config.adapt.selection=per_segment) ;;
    heads_both) flags=(--config.adapt.segment_heads=True --config.adapt.selection=per_segment
                       --config.adapt.lr_decay=1.0) ;;
    a_std) flags=(--config.technique.mola.a_std=0.1) ;;
    experts_k) flags=(--config.technique.mola.experts_per_segment=2) ;;
    low_lr) flags=(--config.adapt.lr=1e-3) ;;
    epochs) flags=(--config.adapt.epochs=30 --config.adapt.patience=5) ;;
    *) echo "unknown option $1; use per_segment, constant_lr, both, heads, heads_ps, heads_both, a_std, experts_k," \
         "low_lr or epochs" >&2; exit 2 ;;
  esac
}
