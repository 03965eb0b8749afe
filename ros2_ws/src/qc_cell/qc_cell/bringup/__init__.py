"""Bringing a cell up without `ros2 launch`: params files, the process supervisor, lifecycle driving,
live progress, and the demo. The launch file reuses params_file and cell_graph, so both read the same
node list and the same params."""
