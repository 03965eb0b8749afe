#!/usr/bin/env bash
# Entrypoint of the QC cell images (docker/Dockerfile.jetson and docker/Dockerfile).
#
#   entrypoint.sh [launch] [name:=value ...] [node.param=value ...] [--dry-run]
#       source ROS 2 and the workspace, then
#       ros2 launch qc_bringup inspection_cell.launch.py <arguments from the environment and the command line>
#   entrypoint.sh healthcheck [healthcheck options]
#       python3 -m qc_cell.healthcheck for the cell this container launched (the images' HEALTHCHECK)
#   entrypoint.sh COMMAND [ARGS ...]
#       any other command in the sourced environment: bash, ros2 topic echo ..., trtexec ...
#
# Launch arguments from the environment; a name:=value argument on the command line wins:
#   QC_NAMESPACE -> namespace     QC_PARAMS_FILE -> params_file     QC_LOG_LEVEL -> log_level
#   QC_BACKEND -> backend         QC_SOURCE -> source
#   QC_USE_BRIDGE, QC_USE_PROCESS_SIM, QC_USE_ARM_SIM -> use_bridge, use_process_sim, use_arm_sim (true/false/auto)
# Parameter overrides: QC_SET (one node.param=value per line; blank lines and # comments skipped) and
# node.param=value arguments are merged into a copy of the params file by params_overlay.py (beside this
# script), e.g. the paths of the named volumes and this deployment's broker URL.
# QC_DRY_RUN=1 (or --dry-run) prints the command instead of running it and exits 0.
#
# Paths (the images set them; tests point them elsewhere): QC_ROS_SETUP (/opt/ros/$ROS_DISTRO/setup.bash),
# QC_WS_SETUP ($QC_WS/install/setup.bash), QC_STATE_DIR (/tmp/qc-cell: the effective params file and the
# arguments the health check reuses, so it checks exactly what was launched).
set -euo pipefail

readonly LAUNCH=(ros2 launch qc_bringup inspection_cell.launch.py)
readonly ARG_ORDER=(namespace params_file backend source log_level use_bridge use_process_sim use_arm_sim)
readonly FLAGS=(use_bridge use_process_sim use_arm_sim)
readonly LOG_LEVELS=(debug info warn error fatal)
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly HERE

# Docker reserves a health check's exit code 2: a health check that cannot run is plainly unhealthy (1).
fail_code=2
if [[ "${1:-}" == healthcheck ]]; then fail_code=1; fi
readonly fail_code

log() { printf '[entrypoint] %s\n' "$*"; }
die() {
  printf '[entrypoint] error: %s\n' "$*" >&2
  exit "$fail_code"
}
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p;}' "${BASH_SOURCE[0]}"; }

source_setup() {
  local file="$1"
  [[ -f "$file" ]] || die "$file not found: is this the QC cell image (ROS_DISTRO=${ROS_DISTRO:-unset})?"
  # ROS setup scripts read unset variables: relax nounset while sourcing them.
  set +u
  # shellcheck disable=SC1090
  source "$file"
  set -u
}

is_flag_value() { [[ "$1" =~ ^(true|false|auto|1|0|yes|no|on|off)$ ]]; }
one_of() {
  local value="$1" choice
  shift
  for choice in "$@"; do [[ "$value" == "$choice" ]] && return 0; done
  return 1
}

# ---- environment --------------------------------------------------------------------------------------------
ROS_SETUP="${QC_ROS_SETUP:-/opt/ros/${ROS_DISTRO:-}/setup.bash}"
WS_SETUP="${QC_WS_SETUP:-${QC_WS:-/opt/qc/ros2_ws}/install/setup.bash}"
source_setup "$ROS_SETUP"
source_setup "$WS_SETUP"
# The cell's graph (qc_cell.cell_graph, docs/security.md): its own domain (ROS_DOMAIN_ID as set, else derived from
# the cell id) and discovery on this host, for the launch, the health check and any command alike.
graph_env="$(python3 -m qc_cell.cell_graph environment "${QC_NAMESPACE:-}")" || die "cannot work out the cell's graph"
while IFS='=' read -r name value; do
  [[ -n "$name" ]] && export "$name=$value"
done <<<"$graph_env"

mode="launch"
case "${1:-}" in
  launch) shift ;;
  healthcheck) mode="healthcheck" && shift ;;
  -h | --help) usage && exit 0 ;;
  "" | --dry-run | *:=* | *.*=*) ;; # launch, with arguments
  *) exec "$@" ;;
esac

state_dir_default="${TMPDIR:-/tmp}/qc-cell"
if [[ "$mode" == "healthcheck" ]]; then
  hc_args=()
  state_file="${QC_STATE_DIR:-$state_dir_default}/healthcheck.args"
  if [[ -f "$state_file" ]]; then
    mapfile -d '' hc_args <"$state_file"
  fi
  exec python3 -m qc_cell.healthcheck "${hc_args[@]}" "$@"
fi

# ---- launch: arguments --------------------------------------------------------------------------------------
dry_run="${QC_DRY_RUN:-0}"
declare -A launch_args=(
  [namespace]="${QC_NAMESPACE:-}"
  [params_file]="${QC_PARAMS_FILE:-}"
  [backend]="${QC_BACKEND:-}"
  [source]="${QC_SOURCE:-}"
  [log_level]="${QC_LOG_LEVEL:-}"
  [use_bridge]="${QC_USE_BRIDGE:-}"
  [use_process_sim]="${QC_USE_PROCESS_SIM:-}"
  [use_arm_sim]="${QC_USE_ARM_SIM:-}"
)
extra_names=()
overrides=()
while IFS= read -r line; do
  line="${line#"${line%%[![:space:]]*}"}" # trim leading blanks
  [[ -z "$line" || "$line" == \#* ]] && continue
  overrides+=("${line%"${line##*[![:space:]]}"}") # trim trailing blanks
done <<<"${QC_SET:-}"

for arg in "$@"; do
  case "$arg" in
    --dry-run) dry_run=1 ;;
    *:=*)
      name="${arg%%:=*}"
      [[ "$name" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "bad launch argument '$arg': expected name:=value"
      if [[ ! -v "launch_args[$name]" ]]; then extra_names+=("$name"); fi
      launch_args[$name]="${arg#*:=}"
      ;;
    *.*=*) overrides+=("$arg") ;;
    *) die "unexpected argument '$arg': use name:=value (launch argument) or node.param=value (parameter)" ;;
  esac
done

[[ -n "${launch_args[params_file]}" ]] || die "no params file: set QC_PARAMS_FILE or params_file:=PATH"
[[ -f "${launch_args[params_file]}" ]] || die "params file ${launch_args[params_file]} does not exist"
if [[ -n "${launch_args[log_level]}" ]] && ! one_of "${launch_args[log_level]}" "${LOG_LEVELS[@]}"; then
  die "log_level '${launch_args[log_level]}' must be one of: ${LOG_LEVELS[*]}"
fi
for flag in "${FLAGS[@]}"; do
  value="${launch_args[$flag]}"
  if [[ -n "$value" ]] && ! is_flag_value "$value"; then
    die "$flag '$value' must be true, false or auto"
  fi
done

# ---- launch: effective params file and what the health check reuses -----------------------------------------
if [[ -n "${QC_STATE_DIR:-}" ]]; then
  state_dir="$QC_STATE_DIR"
elif [[ "$dry_run" == 1 ]]; then
  state_dir="$(mktemp -d)" # a dry run never touches a running cell's state
else
  state_dir="$state_dir_default"
fi
mkdir -p "$state_dir"
if [[ ${#overrides[@]} -gt 0 ]]; then
  set_args=()
  for item in "${overrides[@]}"; do set_args+=(--set "$item"); done
  python3 "$HERE/params_overlay.py" --params-file "${launch_args[params_file]}" \
    --out "$state_dir/params.yaml" "${set_args[@]}" || die "parameter overrides rejected (see above)"
  launch_args[params_file]="$state_dir/params.yaml"
fi

command=("${LAUNCH[@]}")
hc_args=(--params-file "${launch_args[params_file]}")
for name in "${ARG_ORDER[@]}" "${extra_names[@]}"; do
  value="${launch_args[$name]}"
  [[ -n "$value" ]] || continue
  command+=("$name:=$value")
  case "$name" in
    namespace) hc_args+=(--namespace "$value") ;;
    use_*) hc_args+=("--${name//_/-}" "$value") ;;
  esac
done
printf '%s\0' "${hc_args[@]}" >"$state_dir/healthcheck.args"

log "ROS: $ROS_SETUP; workspace: $WS_SETUP; ROS_DOMAIN_ID=$ROS_DOMAIN_ID; RMW=${RMW_IMPLEMENTATION:-default}"
if [[ "$dry_run" == 1 ]]; then
  log "dry run, would run: $(printf '%q ' "${command[@]}")"
  exit 0
fi
log "running: $(printf '%q ' "${command[@]}")"
exec "${command[@]}"
