# shellcheck shell=sh
# Sourced by scripts/env.sh and scripts/setup.sh (POSIX sh): CUDA's bin/ on PATH, for nvcc, which pycuda's
# source build needs. JetPack installs CUDA under /usr/local/cuda but leaves its bin/ off PATH.
# CUDA_HOME names another toolkit (default /usr/local/cuda) and is exported when its bin/nvcc is found. Without
# an executable bin/nvcc there nothing changes. Sourcing it again adds nothing twice.
_qc_cuda_home="${CUDA_HOME:-/usr/local/cuda}"
if [ -f "$_qc_cuda_home/bin/nvcc" ] && [ -x "$_qc_cuda_home/bin/nvcc" ]; then
  case ":$PATH:" in
    *":$_qc_cuda_home/bin:"*) ;;
    *) PATH="$_qc_cuda_home/bin:$PATH" ;;
  esac
  CUDA_HOME="$_qc_cuda_home"
  export PATH CUDA_HOME
fi
unset _qc_cuda_home
