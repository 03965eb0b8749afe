#!/usr/bin/env bash
# Refuse a ROS 2 distribution that has no binary packages for the image's Ubuntu (Dockerfile.jetson runs this
# twice: before anything is downloaded, and with --apt once the ROS apt source is installed).
#
#   ROS_DISTRO=humble docker/check_ros_distro.sh [--apt] [OS_RELEASE_FILE]     (default /etc/os-release)
#
# JetPack 6 (L4T r36) is Ubuntu 22.04 "jammy": ROS 2 ships jammy binaries for Humble (and the end-of-life Iron)
# only; Jazzy and later are built for 24.04 "noble" (REP 2000). --apt also asks apt for ros-<distro>-ros-base,
# which catches a distribution this table does not know yet, or a ROS apt source without it.
set -euo pipefail
apt=0
if [[ ${1:-} == --apt ]]; then
  apt=1
  shift
fi
os_release=${1:-/etc/os-release}
distro=${ROS_DISTRO:-}
[[ -n $distro ]] || { echo "check_ros_distro: ROS_DISTRO is not set (JetPack 6 needs ROS_DISTRO=humble)" >&2; exit 2; }
[[ -r $os_release ]] || { echo "check_ros_distro: cannot read $os_release" >&2; exit 2; }
codename=$(awk -F= '$1 == "UBUNTU_CODENAME" {gsub(/"/, "", $2); print $2}' "$os_release")
[[ -n $codename ]] || { echo "check_ros_distro: no UBUNTU_CODENAME in $os_release (not Ubuntu?)" >&2; exit 2; }

# The Ubuntu release each ROS 2 distribution ships binaries for (REP 2000, Tier 1).
case $distro in
  humble | iron) built_for=jammy ;;
  jazzy | kilted | rolling) built_for=noble ;;
  *)
    echo "check_ros_distro: unknown ROS 2 distribution '$distro' (JetPack 6 needs ROS_DISTRO=humble)" >&2
    exit 1
    ;;
esac
if [[ $built_for != "$codename" ]]; then
  echo "check_ros_distro: ROS 2 '$distro' has binary packages for Ubuntu $built_for, not for this image's" \
    "Ubuntu $codename: JetPack 6 (Ubuntu jammy 22.04) needs ROS_DISTRO=humble" >&2
  exit 1
fi
if [[ $apt == 1 ]] && ! apt-cache show "ros-$distro-ros-base" >/dev/null 2>&1; then
  arch=$(dpkg --print-architecture 2>/dev/null || uname -m)
  echo "check_ros_distro: apt has no ros-$distro-ros-base for Ubuntu $codename ($arch) after installing the" \
    "ROS 2 apt source: JetPack 6 needs ROS_DISTRO=humble" >&2
  exit 1
fi
echo "check_ros_distro: ROS 2 $distro on Ubuntu $codename"
