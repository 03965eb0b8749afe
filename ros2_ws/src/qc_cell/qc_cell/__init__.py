"""Quality-inspection cell: ROS-free core modules (one subpackage per capability) and thin ROS 2 nodes."""
