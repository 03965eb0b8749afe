"""The inference node's parameters (spec: qc_cell.params_spec)."""

from __future__ import annotations

from qc_cell.inference.backends import BACKEND_CHOICES, PRECISIONS
from qc_cell.params_spec import NodeParams, Param

INFERENCE = NodeParams(
    "inference",
    "one InspectionResult per PartFrame, the operator's overlay, the active model and hot model swap",
    (
        Param(
            "model_path",
            "",
            "model package (directory with manifest.json) loaded at start when the store has no active model",
        ),
        Param(
            "model_store_dir",
            "",
            "model store: verified copies of loaded packages + active pointer, so a restart comes back on the "
            "last good model ('' = no store, model_path is loaded at every start)",
        ),
        Param("model_store_keep", 5, "model versions kept in the store (active + rollbacks)", range=(1, 100)),
        Param(
            "backend",
            "auto",
            "auto (TensorRT if usable, else ONNX Runtime), onnxruntime or tensorrt",
            choices=BACKEND_CHOICES,
        ),
        Param("precision", "fp32", "fp32, fp16 or int8 (fp16/int8: TensorRT only)", choices=PRECISIONS),
        Param("threads", 2, "ONNX Runtime intra-op threads", range=(1, 64)),
        Param(
            "max_batch",
            1,
            "largest batch scored at once when frames queue up (1 = always one frame; a lone frame is never "
            "held back to fill a batch)",
            range=(1, 64),
        ),
        Param(
            "queue_size",
            8,
            "frames waiting to be scored; a frame arriving at a full queue is NOT_INSPECTED (queue_full)",
            range=(1, 10000),
        ),
        Param(
            "deadline_ms",
            450.0,
            "capture stamp -> latest useful result; older parts are NOT_INSPECTED (deadline). Keep at or below "
            "decision.result_deadline_ms; camera and inference clocks must agree. 0 = no deadline",
            range=(0.0, 600000.0),
            runtime=True,
        ),
        Param(
            "frame_pool",
            True,
            "read frames from the camera driver's shared-memory pool when it is on this host (else every frame "
            "comes inline through DDS)",
        ),
        Param("require_golden_set", False, "refuse model packages without a golden set (the self-test before a swap)"),
        Param(
            "engine_cache_dir",
            "",
            "TensorRT engine cache ('' = <model_store_dir>/engines, or ~/.cache/qc_cell/engines without a store)",
        ),
        Param(
            "engine_key_file",
            "",
            "the cell's secret for the cached TensorRT engines' HMAC, checked before an engine is deserialised; "
            "created (mode 0600) when missing ('' = <engine cache dir>/.engine_hmac.key)",
        ),
        Param("tensorrt_workspace_mb", 1024, "TensorRT builder workspace", range=(16, 65536)),
        Param(
            "int8_calibration_dir",
            "",
            "images for TensorRT INT8 calibration (precision int8), preprocessed like the parts",
        ),
        Param("int8_calibration_images", 256, "at most this many calibration images", range=(1, 100000)),
        Param("cuda_device", 0, "CUDA device index (TensorRT)", range=(0, 16)),
        Param(
            "overlay_reinspect_threshold",
            0.5,
            "overlay colour only: amber from this p; params files derive it from decision.reinspect_threshold",
            range=(0.0, 1.0),
            runtime=True,
        ),
        Param(
            "overlay_defective_threshold",
            0.8,
            "overlay colour only: red from this p; params files derive it from decision.defective_threshold",
            range=(0.0, 1.0),
            runtime=True,
        ),
        Param(
            "shadow_spare_fraction",
            0.5,
            "share of the measured spare time per part (mean gap between parts minus the live model's time) a "
            "shadow model may use; a shadow slower than that skips parts (no_spare_time)",
            range=(0.05, 1.0),
        ),
        Param(
            "shadow_max_latency_ms",
            0.0,
            "a shadow model whose measured time per part exceeds this skips parts (no_spare_time); 0 = only the "
            "spare-time budget applies",
            range=(0.0, 60000.0),
        ),
        Param(
            "shadow_report_period_s",
            10.0,
            "model/shadow (the shadow model and its scored/skipped counts) is republished this often while a "
            "shadow model runs",
            range=(0.5, 3600.0),
        ),
        Param("diagnostics_period_s", 1.0, "/diagnostics publish period", range=(0.1, 60.0)),
    ),
)
