#!/usr/bin/env bash
# One-command set-up (make setup). Idempotent; a re-run with nothing changed takes seconds.
#  - With a system ROS 2 (/opt/ros/<distro>): a venv on top of it (--system-site-packages).
#  - Without: a venv with ROS 2 Kilted from PyPI, with the wheels' baked CMake paths fixed.
#  - Python dependencies (edge, dev, cloud tools), mosquitto for the tests and the demo,
#    then colcon build of the workspace when its sources changed (per-package settings: colcon.meta),
#    and the ROS packages' console scripts (qc_cloud, qc_synthetic_parts, ...) in the venv's bin/.
#
# `scripts/setup.sh --distro jazzy` (make test-jazzy) sets up a second, independent environment with ROS 2
# Jazzy from PyPI, the closest to Humble's rclpy that installs here: .venv-jazzy, ros2_ws/build-jazzy,
# ros2_ws/install-jazzy; use it with `QC_ROS_DISTRO=jazzy source scripts/env.sh`. It ignores a system ROS 2.
# `scripts/setup.sh --python 3.10` (make test-py310) does the same with ROS 2 Kilted's wheels on Python 3.10,
# Humble's Python on JetPack 6: .venv-py310, ros2_ws/build-py310, ros2_ws/install-py310, no cloud tools; use it
# with `QC_PYTHON=3.10 source scripts/env.sh`. The interpreter is python3.10 on PATH or one of pyenv's.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
cd "$ROOT"
# CUDA's nvcc on PATH where a toolkit is installed (JetPack: /usr/local/cuda, or $CUDA_HOME), for pycuda's build;
# the same file scripts/env.sh sources.
# shellcheck source=scripts/cuda_env.sh
. "$ROOT/scripts/cuda_env.sh"

DISTRO="${QC_ROS_DISTRO:-}"
PYTHON_VERSION=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --distro) DISTRO="${2:?--distro needs a value}"; shift 2 ;;
    --distro=*) DISTRO="${1#--distro=}"; shift ;;
    --python) PYTHON_VERSION="${2:?--python needs a version}"; shift 2 ;;
    -h | --help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "setup.sh: unknown argument '$1' (usage: setup.sh [--distro jazzy | --python 3.10])" >&2; exit 2 ;;
  esac
done

log() { printf '[setup%s%s] %s\n' "${DISTRO:+ $DISTRO}" "${PYTHON_VERSION:+ py$PYTHON_VERSION}" "$*"; }

# An interpreter of this major.minor that really runs (a pyenv shim without that version does not).
find_python() {
  local candidate
  for candidate in "python$1" "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$1".*/bin/"python$1"; do
    if "$candidate" -c "import sys; sys.exit(sys.version_info[:2] != tuple(map(int, '$1'.split('.'))))" 2>/dev/null; then
      command -v "$candidate"
      return 0
    fi
  done
  return 1
}
hash_of() { cat "$@" 2>/dev/null | sha256sum | cut -c1-16; }
# Run a step only when its inputs changed since the last successful run.
stamp_ok() { [[ -f "$VENV/.stamp-$1" && "$(cat "$VENV/.stamp-$1")" == "$2" ]]; }
stamp_set() { echo "$2" > "$VENV/.stamp-$1"; }

# Where this set-up lives: the default one (system ROS 2 or Kilted wheels), or a second distribution's wheels.
case "$DISTRO" in
  "" | kilted)
    DISTRO=""
    VENV="$ROOT/.venv"
    ROS_REQUIREMENTS=requirements/ros-kilted.txt
    BUILD_BASE=ros2_ws/build
    INSTALL_BASE=ros2_ws/install
    SYSTEM_ROS=""
    for d in /opt/ros/*/setup.bash; do
      [[ -f "$d" ]] && SYSTEM_ROS="$d"
    done
    ;;
  jazzy)
    VENV="$ROOT/.venv-jazzy"
    ROS_REQUIREMENTS=requirements/ros-jazzy.txt
    BUILD_BASE=ros2_ws/build-jazzy
    INSTALL_BASE=ros2_ws/install-jazzy
    SYSTEM_ROS=""
    # Nothing of another set-up sourced in this shell (scripts/env.sh, a system ROS 2) may leak into the build.
    unset PYTHONPATH AMENT_PREFIX_PATH CMAKE_PREFIX_PATH LD_LIBRARY_PATH COLCON_PREFIX_PATH
    ;;
  *) echo "setup.sh: unknown distro '$DISTRO' (PyPI wheels exist for kilted and jazzy)" >&2; exit 2 ;;
esac
if [[ -n "$PYTHON_VERSION" ]]; then
  [[ -z "$DISTRO" ]] || { echo "setup.sh: --python goes with the default distribution (Kilted)" >&2; exit 2; }
  PY=$(find_python "$PYTHON_VERSION") || { echo "setup.sh: no Python $PYTHON_VERSION (PATH or pyenv)" >&2; exit 3; }
  VENV="$ROOT/.venv-py${PYTHON_VERSION//./}"
  BUILD_BASE="ros2_ws/build-py${PYTHON_VERSION//./}"
  INSTALL_BASE="ros2_ws/install-py${PYTHON_VERSION//./}"
  SYSTEM_ROS=""
  unset PYTHONPATH AMENT_PREFIX_PATH CMAKE_PREFIX_PATH LD_LIBRARY_PATH COLCON_PREFIX_PATH
fi
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)

make_venv() {
  [[ -x "$VENV/bin/python" ]] && return
  if [[ -n "$SYSTEM_ROS" ]]; then
    log "system ROS 2 found ($SYSTEM_ROS): venv on top of it"
    "$PY" -m venv --system-site-packages "$VENV"
  else
    log "no system ROS 2: venv with ROS 2 ${DISTRO:-kilted} from PyPI"
    "$PY" -m venv "$VENV"
  fi
}

install_ros_wheels() {
  [[ -n "$SYSTEM_ROS" ]] && return
  local h
  h=$(hash_of "$ROS_REQUIREMENTS" scripts/fix_ros_cmake_paths.py)
  stamp_ok ros "$h" && return
  log "installing ROS 2 wheels ($ROS_REQUIREMENTS)"
  "${PIP[@]}" -r "$ROS_REQUIREMENTS"
  "$VENV/bin/python" scripts/fix_ros_cmake_paths.py "$VENV"
  stamp_set ros "$h"
}

# The cloud tools (torch) are for the default PyPI set-up only: a system ROS 2 (the Jetson) gets them with
# QC_WITH_CLOUD=1, and the Jazzy run (node and system tests) never needs them.
install_python_dependencies() {
  local h reqs
  # QC_WITH_CLOUD is part of the stamp: `QC_WITH_CLOUD=1 make setup` after a first set-up adds the cloud tools.
  h=$(hash_of requirements/edge.txt requirements/dev.txt requirements/cloud.txt requirements/fleet.txt \
    docker/pip-constraints.txt)
  [[ -n "$SYSTEM_ROS" ]] && h="$h-cloud${QC_WITH_CLOUD:-0}"
  stamp_ok py "$h" && return
  log "installing Python dependencies"
  if [[ -n "$SYSTEM_ROS" ]]; then
    # The apt-built rclpy, cv_bridge and python3-opencv need NumPy 1.x and the system OpenCV (GStreamer):
    # no OpenCV wheel, NumPy constrained, and no cloud tools (torch) on the edge (QC_WITH_CLOUD=1 adds them).
    # On a Jetson edge.txt also brings pycuda, built here with the nvcc scripts/cuda_env.sh put on PATH above
    # (JetPack's /usr/local/cuda, or $CUDA_HOME), and Jetson.GPIO.
    grep -viE '^[[:space:]]*opencv-(contrib-)?python' requirements/edge.txt > "$VENV/edge-system-ros.txt"
    reqs=(-r "$VENV/edge-system-ros.txt" -r requirements/dev.txt -c docker/pip-constraints.txt)
    [[ "${QC_WITH_CLOUD:-0}" == 1 ]] && reqs+=(-r requirements/cloud.txt -r requirements/fleet.txt)
    "${PIP[@]}" "${reqs[@]}"
  else
    reqs=(-r requirements/edge.txt -r requirements/dev.txt)
    [[ -z "$DISTRO" && -z "$PYTHON_VERSION" ]] && reqs+=(-r requirements/cloud.txt -r requirements/fleet.txt)
    "${PIP[@]}" "${reqs[@]}"
    # numpy may have moved: keep the CMake include paths pointing at it.
    "$VENV/bin/python" scripts/fix_ros_cmake_paths.py "$VENV"
  fi
  stamp_set py "$h"
}

install_mosquitto() {
  command -v mosquitto >/dev/null && return
  [[ -x /usr/sbin/mosquitto ]] && return
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    log "installing mosquitto (Debian package)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null
    # The tests and the demo start their own broker on a free port; the system service is not needed.
    (systemctl disable --now mosquitto >/dev/null 2>&1 || true)
  else
    log "WARNING: mosquitto missing and not root: install it (apt-get install mosquitto) for the broker tests"
  fi
}

# A C compiler: the fault-injection test's clock-step fault builds tests/fixtures/wall_clock_shift.c (LD_PRELOAD).
install_compiler() {
  command -v gcc >/dev/null && return
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    log "installing gcc (Debian package)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc libc6-dev >/dev/null
  else
    log "WARNING: gcc missing and not root: apt-get install gcc for the clock-step fault test"
  fi
}

# Line cameras (camera_driver sources aravis and pylon, docs/camera.md): Aravis from Debian (library,
# introspection data, arv-fake-gv-camera-0.8 and arv-tool-0.8 for the tests) and PyGObject to reach it, built in
# the venv (requirements/genicam.txt) or apt's python3-gi with a system ROS 2; pypylon is an extra
# (requirements/pylon.txt, about 250 MB), on by default with the PyPI wheels (QC_WITH_PYLON=0/1 decides).
CAMERA_DEBS=(gir1.2-aravis-0.8 aravis-tools aravis-tools-cli libgirepository1.0-dev libcairo2-dev pkg-config)
install_camera_packages() {
  local missing=() deb h
  [[ -n "$SYSTEM_ROS" ]] && CAMERA_DEBS+=(python3-gi)
  for deb in "${CAMERA_DEBS[@]}"; do
    dpkg -s "$deb" >/dev/null 2>&1 || missing+=("$deb")
  done
  if ((${#missing[@]})); then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
      log "installing Aravis and its build dependencies (${missing[*]})"
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
      log "WARNING: not root: apt-get install ${missing[*]} for the aravis camera source (its tests skip)"
      return 0
    fi
  fi
  h=$(hash_of requirements/genicam.txt requirements/pylon.txt)-pylon${QC_WITH_PYLON:-default}
  stamp_ok cameras "$h" && return
  if [[ -z "$SYSTEM_ROS" ]]; then
    log "PyGObject for Aravis (built against Debian's GLib)"
    "${PIP[@]}" -r requirements/genicam.txt
  fi
  local pylon="${QC_WITH_PYLON:-}"
  [[ -z "$pylon" ]] && { [[ -z "$SYSTEM_ROS" && -z "$DISTRO" && -z "$PYTHON_VERSION" ]] && pylon=1 || pylon=0; }
  if [[ "$pylon" == 1 ]]; then
    log "pypylon (Basler pylon, with camera emulation for the tests)"
    "${PIP[@]}" -r requirements/pylon.txt
  fi
  stamp_set cameras "$h"
}

# PostgreSQL for the fleet service's tests and benchmark (they start their own server with initdb/pg_ctl in a
# temporary directory, as the 'postgres' user when run as root); the system cluster is not needed.
install_postgresql() {
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null && return
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    log "installing PostgreSQL (Debian package)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    (systemctl disable --now postgresql >/dev/null 2>&1 || true)
  else
    log "WARNING: PostgreSQL missing and not root: install it (apt-get install postgresql) for the fleet tests"
  fi
}

# The dashboard's browser tests (Debian's chromium + chromedriver, driven by Selenium) and its charts
# (Chart.js from Debian's libjs-chart.js, served by the service itself: plants are offline, no CDN).
install_dashboard_browser() {
  [[ -x /usr/bin/chromedriver && -f /usr/share/javascript/chart.js/chart.min.js ]] && return
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    log "installing chromium, chromium-driver, libjs-chart.js (Debian packages)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver libjs-chart.js >/dev/null
  else
    log "WARNING: not root: apt-get install chromium chromium-driver libjs-chart.js (dashboard charts and browser tests)"
  fi
}

# The interpreter the interface packages compile against: the venv's with the PyPI wheels (the only one with
# their NumPy); with a system ROS 2 the system's, like the images (the NumPy headers apt's ROS 2 was built
# with, which every newer 1.x loads). colcon itself runs on the venv's interpreter, so the nodes' entry points
# do too. Everything else colcon needs is in colcon.meta.
build_workspace() {
  local h interpreter
  h=$(find ros2_ws/src msg colcon.meta -type f \( -name '*.msg' -o -name '*.srv' -o -name '*.action' \
    -o -name 'CMakeLists.txt' -o -name 'package.xml' -o -name 'setup.py' -o -name 'setup.cfg' \
    -o -name colcon.meta \) -print0 | sort -z | xargs -0 cat | sha256sum | cut -c1-16)
  stamp_ok colcon "$h" && [[ -f "$INSTALL_BASE/local_setup.bash" ]] && return
  log "colcon build ($INSTALL_BASE)"
  if [[ -n "$SYSTEM_ROS" ]]; then
    interpreter=(-DPython3_EXECUTABLE=/usr/bin/python3 -DPYTHON_EXECUTABLE=/usr/bin/python3)
  else
    interpreter=(-DPython3_EXECUTABLE="$VENV/bin/python")
  fi
  (
    # shellcheck disable=SC1090
    [[ -n "$SYSTEM_ROS" ]] && source "$SYSTEM_ROS"
    export PATH="$VENV/bin:$PATH" VIRTUAL_ENV="$VENV"
    if [[ -z "$SYSTEM_ROS" ]]; then
      export AMENT_PREFIX_PATH="$VENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
      export CMAKE_PREFIX_PATH="$VENV${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
    fi
    cd ros2_ws
    "$VENV/bin/python" "$(command -v colcon)" build --metas ../colcon.meta \
      --build-base "${BUILD_BASE#ros2_ws/}" --install-base "${INSTALL_BASE#ros2_ws/}" \
      --event-handlers console_cohesion- status- --cmake-args "${interpreter[@]}" 2>&1 \
      | { grep -v "doesn't contain any 'local_setup" || true; }  # pipefail: the status is colcon's
  )
  stamp_set colcon "$h"
}

# The packages' console scripts (qc_cloud, qc_synthetic_parts, qc_cell_runner, the node executables) into the
# venv's bin/, so the documented commands are on PATH after `source scripts/env.sh`: an editable install without
# dependencies (the sources stay where they are; colcon's install keeps its own copies under lib/<package>/).
install_console_scripts() {
  local h packages=()
  h=$(hash_of ros2_ws/src/*/setup.py ros2_ws/src/*/setup.cfg)
  stamp_ok scripts "$h" && return
  for setup_py in ros2_ws/src/*/setup.py; do
    packages+=(-e "$(dirname "$setup_py")")
  done
  log "console scripts into $VENV/bin"
  "${PIP[@]}" --no-deps "${packages[@]}"
  stamp_set scripts "$h"
}

make_venv
install_ros_wheels
install_python_dependencies
install_mosquitto
install_compiler
install_camera_packages
install_postgresql
install_dashboard_browser
build_workspace
install_console_scripts
log "done. Interactive use: ${DISTRO:+QC_ROS_DISTRO=$DISTRO }${PYTHON_VERSION:+QC_PYTHON=$PYTHON_VERSION }source scripts/env.sh"
