#!/usr/bin/env bash
# Build a TensorRT engine from a model package with trtexec, on the Jetson (TensorRT 8.6 / JetPack 5-6 or
# TensorRT 10.x), and print trtexec's latency figures for it.
#
#   build_trt_engine.sh PACKAGE_DIR [--precision fp16|fp32] [--max-batch N] [--opt-batch N]
#                       [--workspace MiB] [--cache-dir DIR | --out ENGINE_FILE] [-- extra trtexec arguments]
#
# PACKAGE_DIR is a model package written by `qc_cloud train`/`qc_cloud export` (manifest.json + model.onnx).
# The script checks the model file against the manifest (sha256), takes the input tensor name and size from
# the manifest, and builds an engine with a dynamic batch profile 1..max-batch tuned for --opt-batch (1, what
# the line runs), with TF32 off for fp32, as the inference node builds its own.
#
# --cache-dir DIR (default $QC_ENGINE_CACHE_DIR): pre-build the node's engine. The engine is stored in the
#   node's engine cache (inference.engine_cache_dir; /var/lib/qc/engine_cache in the containers) under the
#   name the node computes for this package, TensorRT version, GPU, precision and max batch
#   (`python -m qc_cell.inference.backends.engine_name`, the node's own naming function), so the node loads it
#   instead of building it at the first start. Use the node's inference.precision and inference.max_batch.
#   The engine's digest is made with the cell's engine key (inference.engine_key_file: set $QC_ENGINE_KEY_FILE
#   when it is not the default DIR/.engine_hmac.key), which the node checks before loading it.
# --out FILE: only check that TensorRT accepts the package and how fast it runs here (trtexec's latency
#   figures), written atomically to FILE (default ./<version>_<precision>_b<max-batch>.engine).
# Both need the cell's Python environment for the name (source scripts/env.sh; in the image it is there).
# An engine only runs with the TensorRT version and GPU it was built on: build it on the Jetson itself.
# INT8 needs calibration images: use the inference node's int8 precision (it calibrates) instead.
#
# trtexec is looked up as $TRTEXEC, then on PATH, then /usr/src/tensorrt/bin/trtexec (JetPack's location).
set -euo pipefail

# The help is the comment block at the top (from line 2 up to the first line that is not a comment).
usage() { awk 'NR > 1 && !/^#/ {exit} NR > 1' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }
die() { echo "build_trt_engine: error: $*" >&2; exit 1; }

[[ $# -ge 1 ]] || usage
[[ $1 == -h || $1 == --help ]] && usage 0
package=${1%/}
shift
precision=fp16
max_batch=4
opt_batch=1
workspace=1024
out=""
cache_dir=${QC_ENGINE_CACHE_DIR:-}
extra=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --precision) precision=${2:?}; shift 2 ;;
    --max-batch) max_batch=${2:?}; shift 2 ;;
    --opt-batch) opt_batch=${2:?}; shift 2 ;;
    --workspace) workspace=${2:?}; shift 2 ;;
    --out) out=${2:?}; shift 2 ;;
    --cache-dir) cache_dir=${2:?}; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) usage 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
[[ $precision == fp16 || $precision == fp32 ]] || die "--precision must be fp16 or fp32 (int8: see --help)"
[[ $max_batch =~ ^[1-9][0-9]*$ && $opt_batch =~ ^[1-9][0-9]*$ ]] || die "batch sizes must be positive integers"
(( opt_batch <= max_batch )) || die "--opt-batch $opt_batch is larger than --max-batch $max_batch"
[[ $workspace =~ ^[1-9][0-9]*$ ]] || die "--workspace must be a positive number of MiB"
[[ -f $package/manifest.json ]] || die "$package/manifest.json not found: not a model package"
[[ -n $cache_dir && -n $out ]] && die "--cache-dir and --out exclude each other"
[[ -n $cache_dir && $opt_batch != 1 ]] && die "the node's engines are tuned for batch 1: --opt-batch 1 with --cache-dir"

# One line of tab-separated fields from the manifest (python3 ships with JetPack; only the standard library).
fields=$(python3 - "$package/manifest.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
pre = m.get("preprocessing", {})
print("\t".join(str(v) for v in (m["version"], m.get("model_file", "model.onnx"), m["sha256"],
                                   m.get("input_name", "input"), pre.get("input_height", 224),
                                   pre.get("input_width", 224))))
PY
) || die "cannot read $package/manifest.json"
IFS=$'\t' read -r version model_file sha256 input_name height width <<<"$fields"
model="$package/$model_file"
[[ -f $model ]] || die "model file $model missing"
actual=$(sha256sum "$model" | cut -d' ' -f1)
[[ $actual == "$sha256" ]] || die "$model sha256 $actual does not match the manifest ($sha256): refusing to build"

trtexec=${TRTEXEC:-$(command -v trtexec || true)}
[[ -z $trtexec && -x /usr/src/tensorrt/bin/trtexec ]] && trtexec=/usr/src/tensorrt/bin/trtexec
[[ -n $trtexec ]] || die "trtexec not found (set TRTEXEC, add it to PATH, or install TensorRT's samples)"

python=${PYTHON:-python3}
if [[ -n $cache_dir ]]; then
  name=$("$python" -m qc_cell.inference.backends.engine_name "$package" --precision "$precision" \
    --max-batch "$max_batch") || die "cannot compute the node's engine name (is the cell's environment sourced?)"
  mkdir -p "$cache_dir"
  tmp="$cache_dir/.$name.trtexec.$$"
else
  out=${out:-"$PWD/${version}_${precision}_b${max_batch}.engine"}
  tmp="$out.tmp.$$"
fi
trap 'rm -f "$tmp"' EXIT
args=(
  "--onnx=$model"
  "--saveEngine=$tmp"
  "--minShapes=${input_name}:1x3x${height}x${width}"
  "--optShapes=${input_name}:${opt_batch}x3x${height}x${width}"
  "--maxShapes=${input_name}:${max_batch}x3x${height}x${width}"
  "--memPoolSize=workspace:${workspace}"
)
# The node's settings: FP16 flag for fp16; no TF32 for fp32 (TensorRT allows it by default, Orin would use it).
if [[ $precision == fp16 ]]; then args+=(--fp16); else args+=(--noTF32); fi
echo "build_trt_engine: model $version ($model_file, sha256 ${sha256:0:12}), input ${input_name} Nx3x${height}x${width}," \
  "batch 1..${max_batch}, ${precision}" >&2
"$trtexec" "${args[@]}" "${extra[@]}"
[[ -s $tmp ]] || die "trtexec reported success but wrote no engine"
if [[ -n $cache_dir ]]; then
  # Stored by the engine cache itself (atomic write, key sidecar), under the name computed above.
  stored=$("$python" -m qc_cell.inference.backends.engine_name "$package" --precision "$precision" \
    --max-batch "$max_batch" --store "$tmp" --cache-dir "$cache_dir" \
    ${QC_ENGINE_KEY_FILE:+--key-file "$QC_ENGINE_KEY_FILE"}) || die "storing the engine in $cache_dir failed"
  rm -f "$tmp"
  trap - EXIT
  echo "build_trt_engine: engine stored in the node's cache as $stored" >&2
else
  mv -f "$tmp" "$out"
  trap - EXIT
  echo "build_trt_engine: engine written to $out" >&2
fi
