# The stage-2 options of docs/results.md §11 as config flags, shared by the option studies (sourced, not run):
#   per_segment   --config.adapt.selection=per_segment (each segment keeps the adapter deltas of its own best
#                 validation epoch instead of the official "any segment improved" rule)
#   constant_lr   --config.adapt.lr_decay=1.0 (the stage-2 lr stays constant instead of decaying every epoch)
#   both          the two together
# stage2_flags OPTION sets the array `flags`; an unknown option is a one-line error and exit 2.
stage2_flags() {
  case $1 in
    per_segment) flags=(--config.adapt.selection=per_segment) ;;
    constant_lr) flags=(--config.adapt.lr_decay=1.0) ;;
    both) flags=(--config.adapt.selection=per_segment --config.adapt.lr_decay=1.0) ;;
    *) echo "unknown option $1; use per_segment, constant_lr or both" >&2; exit 2 ;;
  esac
}
