"""The ROS glue the cell's nodes share: QoS, time, parameters, diagnostics, alerts, subscriptions (incompatible-QoS
reports), image conversion, the lifecycle base of device nodes, the robot-arm action client, RViz markers, main()."""
