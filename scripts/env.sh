# Source this for interactive use: `source scripts/env.sh`. Sets up the venv, ROS 2 and the built workspace.
# `QC_ROS_DISTRO=jazzy source scripts/env.sh`: the Jazzy environment of `make test-jazzy` instead
# (.venv-jazzy and ros2_ws/install-jazzy, made by `scripts/setup.sh --distro jazzy`; no system ROS 2).
# `QC_PYTHON=3.10 source scripts/env.sh`: the Python 3.10 environment of `make test-py310` (.venv-py310 and
# ros2_ws/install-py310, made by `scripts/setup.sh --python 3.10`; no system ROS 2).
_qc_root="$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/.." && pwd)"
if [ "${QC_ROS_DISTRO:-}" = jazzy ]; then
  _qc_venv="$_qc_root/.venv-jazzy"
  _qc_install="$_qc_root/ros2_ws/install-jazzy"
  export ROS_DISTRO=jazzy
elif [ -n "${QC_PYTHON:-}" ]; then
  _qc_venv="$_qc_root/.venv-py$(echo "$QC_PYTHON" | tr -d .)"
  _qc_install="$_qc_root/ros2_ws/install-py$(echo "$QC_PYTHON" | tr -d .)"
else
  _qc_venv="$_qc_root/.venv"
  _qc_install="$_qc_root/ros2_ws/install"
  for _d in /opt/ros/*/setup.bash; do [ -f "$_d" ] && _qc_sys_ros="$_d"; done
fi
if [ -n "${_qc_sys_ros:-}" ]; then
  # shellcheck disable=SC1090
  . "$_qc_sys_ros"
else
  export AMENT_PREFIX_PATH="$_qc_venv${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
  export CMAKE_PREFIX_PATH="$_qc_venv${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
fi
export VIRTUAL_ENV="$_qc_venv"
export PATH="$VIRTUAL_ENV/bin:$PATH"
# CUDA's nvcc on PATH where a toolkit is installed (JetPack: /usr/local/cuda, or $CUDA_HOME).
# shellcheck source=scripts/cuda_env.sh
. "$_qc_root/scripts/cuda_env.sh"
if [ -f "$_qc_install/local_setup.bash" ]; then
  # shellcheck disable=SC1091
  . "$_qc_install/local_setup.bash"
fi
# The Python sources come first, so edits take effect without a rebuild.
export PYTHONPATH="$_qc_root/ros2_ws/src/qc_contract:$_qc_root/ros2_ws/src/qc_cell:$_qc_root/ros2_ws/src/qc_cloud${PYTHONPATH:+:$PYTHONPATH}"
export RMW_IMPLEMENTATION="${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}"
export PYTHONUNBUFFERED=1
# The cell's DDS transport (qc_cell.cell_graph.ENVIRONMENT, docs/camera.md): a 32 MB shared-memory segment, which
# holds the 64 KB fragments of several camera frames at once (frames are fragmented to UDP's 64 KB message size);
# also for nodes run by hand. An existing profile setting is kept.
if [ -z "${FASTDDS_DEFAULT_PROFILES_FILE:-}${FASTRTPS_DEFAULT_PROFILES_FILE:-}" ]; then
  case "${ROS_DISTRO:-}" in
    humble | iron | jazzy) export FASTRTPS_DEFAULT_PROFILES_FILE="$_qc_root/ros2_ws/src/qc_cell/qc_cell/camera/fastdds_large_images.xml" ;;
    *) export FASTDDS_DEFAULT_PROFILES_FILE="$_qc_root/ros2_ws/src/qc_cell/qc_cell/camera/fastdds_large_images.xml" ;;
  esac
fi
unset _qc_root _qc_sys_ros _qc_venv _qc_install _d
