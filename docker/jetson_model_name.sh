#!/usr/bin/env bash
# Print the JETSON_MODEL_NAME that Jetson.GPIO needs inside a container, from the host's device tree.
#
#   docker/jetson_model_name.sh [COMPATIBLE_FILE]      (default /proc/device-tree/compatible)
#   echo "JETSON_MODEL_NAME=$(docker/jetson_model_name.sh)" >> docker/.env
#
# Jetson.GPIO identifies the board from /proc/device-tree/compatible, which Docker masks in containers; it then
# falls back to the JETSON_MODEL_NAME variable (compose.yaml passes it through). Run this on the Jetson host.
# JetPack 6 runs on the Orin family only: the module part numbers below are the ones Jetson.GPIO 2.1.13 maps
# (lib/python/Jetson/GPIO/gpio_pin_data.py: compats_jetson_orins, _orins_nx, _orins_nano).
set -euo pipefail
file=${1:-/proc/device-tree/compatible}
[[ -r $file ]] || { echo "jetson_model_name: cannot read $file (run this on the Jetson host)" >&2; exit 1; }
compatible=$(tr '\0' '\n' <"$file")
case $compatible in
  *p3701-000[01458]*) echo JETSON_ORIN ;;  # AGX Orin (P3701 module on the P3737 carrier)
  *p3767-000[01]*) echo JETSON_ORIN_NX ;;  # Orin NX 16 GB / 8 GB
  *p3767-000[345]*) echo JETSON_ORIN_NANO ;;  # Orin Nano 8 GB / 4 GB, and the developer kit
  *)
    echo "jetson_model_name: no Orin module in $file ($(echo "$compatible" | paste -sd' ')):" \
      "set JETSON_MODEL_NAME by hand (Jetson.GPIO's JETSON_MODELS)" >&2
    exit 1
    ;;
esac
