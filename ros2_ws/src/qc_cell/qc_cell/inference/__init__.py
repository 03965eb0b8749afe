"""Inference core: backends, model store and hot swap. The model package manifest and preprocessing, shared
with the cloud training tools, are in qc_contract (model_manifest.py, preprocess.py). No rclpy here."""
