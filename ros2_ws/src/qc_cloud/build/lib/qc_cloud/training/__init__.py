"""Training, evaluation and export of the cell's defect classifier (cloud side; needs torch).

Flow (qc_cloud.training.pipeline): datasets -> splits -> trainer (Phase I on cached features, Phase II
fine-tuning) -> export (ONNX + parity check) -> evaluate (the exported model on the held-out test split)
-> package (manifest + golden set) -> report.
"""
