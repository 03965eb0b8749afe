#!/usr/bin/env bash
# One-command set-up (make setup). Idempotent; a re-run with nothing changed takes seconds.
#  - With a system ROS 2 (/opt/ros/<distro>): a venv on top of it (--system-site-packages).
#  - Without: a venv with ROS 2 Kilted from PyPI, with the wheels' baked CMake paths fixed.
#  - Python dependencies (edge, dev, cloud tools), mosquitto for the tests and the demo,
#    then colcon build of the workspace when its sources changed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"
cd "$ROOT"

log() { printf '[setup] %s\n' "$*"; }
hash_of() { cat "$@" 2>/dev/null | sha256sum | cut -c1-16; }
# Run a step only when its inputs changed since the last successful run.
stamp_ok() { [[ -f "$VENV/.stamp-$1" && "$(cat "$VENV/.stamp-$1")" == "$2" ]]; }
stamp_set() { echo "$2" > "$VENV/.stamp-$1"; }

SYSTEM_ROS=""
for d in /opt/ros/*/setup.bash; do
  [[ -f "$d" ]] && SYSTEM_ROS="$d"
done

if [[ ! -x "$VENV/bin/python" ]]; then
  if [[ -n "$SYSTEM_ROS" ]]; then
    log "system ROS 2 found ($SYSTEM_ROS): venv on top of it"
    "$PY" -m venv --system-site-packages "$VENV"
  else
    log "no system ROS 2: venv with ROS 2 Kilted from PyPI"
    "$PY" -m venv "$VENV"
  fi
fi
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)

if [[ -z "$SYSTEM_ROS" ]]; then
  h=$(hash_of requirements/ros-kilted.txt scripts/fix_ros_cmake_paths.py)
  if ! stamp_ok ros "$h"; then
    log "installing ROS 2 wheels"
    "${PIP[@]}" -r requirements/ros-kilted.txt
    "$VENV/bin/python" scripts/fix_ros_cmake_paths.py "$VENV"
    stamp_set ros "$h"
  fi
fi

h=$(hash_of requirements/edge.txt requirements/dev.txt requirements/cloud.txt docker/pip-constraints.txt)
if ! stamp_ok py "$h"; then
  log "installing Python dependencies"
  if [[ -n "$SYSTEM_ROS" ]]; then
    # The apt-built rclpy, cv_bridge and python3-opencv need NumPy 1.x and the system OpenCV (GStreamer):
    # no OpenCV wheel, NumPy constrained, and no cloud tools (torch) on the edge (QC_WITH_CLOUD=1 adds them).
    grep -v '^opencv-python' requirements/edge.txt > "$VENV/edge-system-ros.txt"
    reqs=(-r "$VENV/edge-system-ros.txt" -r requirements/dev.txt -c docker/pip-constraints.txt)
    [[ "${QC_WITH_CLOUD:-0}" == 1 ]] && reqs+=(-r requirements/cloud.txt)
    "${PIP[@]}" "${reqs[@]}"
  else
    "${PIP[@]}" -r requirements/edge.txt -r requirements/dev.txt -r requirements/cloud.txt
    # numpy may have moved: keep the CMake include paths pointing at it.
    "$VENV/bin/python" scripts/fix_ros_cmake_paths.py "$VENV"
  fi
  stamp_set py "$h"
fi

if ! command -v mosquitto >/dev/null && [[ ! -x /usr/sbin/mosquitto ]]; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    log "installing mosquitto (Debian package)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null
    # The tests and the demo start their own broker on a free port; the system service is not needed.
    (systemctl disable --now mosquitto >/dev/null 2>&1 || true)
  else
    log "WARNING: mosquitto missing and not root: install it (apt-get install mosquitto) for the broker tests"
  fi
fi

h=$(find ros2_ws/src msg -type f \( -name '*.msg' -o -name '*.srv' -o -name '*.action' -o -name 'CMakeLists.txt' \
      -o -name 'package.xml' -o -name 'setup.py' -o -name 'setup.cfg' \) -print0 | sort -z | xargs -0 cat | sha256sum | cut -c1-16)
if ! stamp_ok colcon "$h" || [[ ! -f ros2_ws/install/local_setup.bash ]]; then
  log "colcon build"
  (
    # shellcheck disable=SC1090
    [[ -n "$SYSTEM_ROS" ]] && source "$SYSTEM_ROS"
    export PATH="$VENV/bin:$PATH" VIRTUAL_ENV="$VENV"
    if [[ -z "$SYSTEM_ROS" ]]; then
      export AMENT_PREFIX_PATH="$VENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
      export CMAKE_PREFIX_PATH="$VENV${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
    fi
    cd ros2_ws
    colcon build --event-handlers console_cohesion- status- --cmake-args -DBUILD_TESTING=OFF \
      -DPython3_EXECUTABLE="$VENV/bin/python" 2>&1 | grep -v "doesn't contain any 'local_setup" || true
    test "${PIPESTATUS[0]}" -eq 0
  )
  stamp_set colcon "$h"
fi
log "done. Interactive use: source scripts/env.sh"
