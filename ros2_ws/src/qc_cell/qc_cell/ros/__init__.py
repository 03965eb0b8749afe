"""The only place besides qc_cell.nodes that imports rclpy: QoS, time, parameters, diagnostics, main()."""
