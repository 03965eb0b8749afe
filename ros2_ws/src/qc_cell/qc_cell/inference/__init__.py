"""Inference core: model package manifest, preprocessing (shared with the cloud training tools),
backends, model store and hot swap. No rclpy here."""
