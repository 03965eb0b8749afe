"""Process-sensor fusion (ROS-free): per-signal robust statistics, spec limits and staleness, vibration RMS,
the maintenance trend detector, and the process-sensor simulator used by the demo and the tests."""
