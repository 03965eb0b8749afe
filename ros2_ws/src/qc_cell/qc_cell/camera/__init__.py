"""Where parts enter the cell: image sources, part ids, ROI/downscale (no rclpy). The synthetic part generator
the `synthetic` source draws from is qc_contract.synthetic, shared with the cloud's training tools."""
