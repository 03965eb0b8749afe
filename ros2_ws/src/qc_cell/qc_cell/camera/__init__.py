"""Where parts enter the cell: image sources, part ids, ROI/downscale and the synthetic part generator (no rclpy)."""
