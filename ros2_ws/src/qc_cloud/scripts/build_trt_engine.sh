#!/usr/bin/env bash
# Build a TensorRT engine from a model package with trtexec, on the Jetson (TensorRT 8.6 / JetPack 5-6 or
# TensorRT 10.x), and print trtexec's latency figures for it.
#
#   build_trt_engine.sh PACKAGE_DIR [--precision fp16|fp32] [--max-batch N] [--opt-batch N]
#                       [--workspace MiB] [--out ENGINE_FILE] [-- extra trtexec arguments]
#
# PACKAGE_DIR is a model package written by `qc_cloud train`/`qc_cloud export` (manifest.json + model.onnx).
# The script checks the model file against the manifest (sha256), takes the input tensor name and size from
# the manifest, and builds an engine with a dynamic batch profile 1..max-batch. The engine is written
# atomically (temp file, then rename) to --out, by default ./<version>_<precision>_b<max-batch>.engine.
#
# The inference node builds and caches its own engines (qc_cell.inference.backends.engine_cache) when it
# runs with backend tensorrt; this script is for checking on the target that TensorRT accepts a package
# and how fast it runs there before rolling it out, and for pre-building engines by hand.
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
extra=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --precision) precision=${2:?}; shift 2 ;;
    --max-batch) max_batch=${2:?}; shift 2 ;;
    --opt-batch) opt_batch=${2:?}; shift 2 ;;
    --workspace) workspace=${2:?}; shift 2 ;;
    --out) out=${2:?}; shift 2 ;;
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

out=${out:-"$PWD/${version}_${precision}_b${max_batch}.engine"}
tmp="$out.tmp.$$"
trap 'rm -f "$tmp"' EXIT
args=(
  "--onnx=$model"
  "--saveEngine=$tmp"
  "--minShapes=${input_name}:1x3x${height}x${width}"
  "--optShapes=${input_name}:${opt_batch}x3x${height}x${width}"
  "--maxShapes=${input_name}:${max_batch}x3x${height}x${width}"
  "--memPoolSize=workspace:${workspace}"
)
[[ $precision == fp16 ]] && args+=(--fp16)
echo "build_trt_engine: model $version ($model_file, sha256 ${sha256:0:12}), input ${input_name} Nx3x${height}x${width}," \
  "batch 1..${max_batch}, ${precision}" >&2
"$trtexec" "${args[@]}" "${extra[@]}"
[[ -s $tmp ]] || die "trtexec reported success but wrote no engine"
mv -f "$tmp" "$out"
trap - EXIT
echo "build_trt_engine: engine written to $out" >&2
