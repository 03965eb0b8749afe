"""Any ROS camera driver as a source: a sensor_msgs/Image or sensor_msgs/CompressedImage topic (usb_cam,
v4l2_camera, camera_aravis2, pylon_ros2_camera, Isaac Argus, ...).

The topic follows image_transport's names: `image_raw` is raw, a name ending in `/compressed` is the compressed
transport (JPEG/PNG, decoded with OpenCV). It is resolved in the driver's namespace and can be remapped like any
topic of the driver (`-r image_raw:=/cam0/image_raw`). Subscribed with sensor-data QoS (best effort, the newest
frames): it matches reliable and best-effort publishers alike. The image's own header stamp is the capture time
(the receive time when a driver leaves it 0).

free_run: every image becomes a part. triggered: the image nearest each camera/trigger stamp within
`trigger_tolerance_s`, otherwise the part gets no frame (NOT_INSPECTED downstream).

ROS-bound by nature: it subscribes through the camera driver node handed to it (build_source's `node`).
"""

from __future__ import annotations

import threading
import time

import cv2
import numpy as np

from qc_cell.camera.sources.base import (
    Frame,
    FrameSource,
    NoFrameYetError,
    NoMatchingFrameError,
    SourceConfigError,
    SourceUnavailableError,
    Warn,
    default_warn,
    frame_from_image,
)
from qc_cell.camera.sources.stream import FrameRing


def is_compressed_topic(topic: str) -> bool:
    return topic.rstrip("/").endswith("/compressed") or topic.rstrip("/") == "compressed"


class RosImageSource(FrameSource):
    kind = "ros_image"

    def __init__(
        self,
        node,
        topic: str = "image_raw",
        mode: str = "free_run",
        tolerance_s: float = 0.05,
        wait_s: float = 1.0,
        buffers: int = 8,
        warn: Warn | None = None,
    ) -> None:
        if node is None:
            raise SourceConfigError("source ros_image subscribes through the camera driver node: none was given")
        if not topic.strip():
            raise SourceConfigError("ros_image topic is empty (expected e.g. image_raw or image_raw/compressed)")
        if tolerance_s <= 0 or wait_s <= 0:
            raise SourceConfigError("trigger_tolerance_s and trigger_timeout_s must be > 0")
        self.node = node
        self.topic = topic.strip()
        self.compressed = is_compressed_topic(self.topic)
        self.mode = mode
        self.tolerance_s, self.wait_s = tolerance_s, wait_s
        self._warn = warn or default_warn
        self.ring = FrameRing(max(2, buffers))
        self._subscription = None
        self._lock = threading.Lock()
        self.received = 0
        self.decode_errors = 0
        self.unanswered_triggers = 0
        self._last_received = 0.0
        self._last_error = ""

    @property
    def description(self) -> str:
        name = self._subscription.topic_name if self._subscription is not None else self.topic
        return f"ros_image:{name}" + (" (compressed)" if self.compressed else "")

    @property
    def is_open(self) -> bool:
        return self._subscription is not None

    @property
    def self_paced(self) -> bool:
        return True

    def open(self) -> None:
        from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import CompressedImage, Image

        self.close()
        msg_type = CompressedImage if self.compressed else Image
        try:
            self._subscription = self.node.create_subscription(
                msg_type,
                self.topic,
                self._on_image,
                qos_profile_sensor_data,
                callback_group=MutuallyExclusiveCallbackGroup(),
            )
        except Exception as exc:  # an invalid topic name
            raise SourceConfigError(f"ros_image: cannot subscribe to {self.topic!r}: {exc}") from exc
        self.ring.reopen()

    def close(self) -> None:
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            self.ring.close()
            self.node.destroy_subscription(subscription)

    def _on_image(self, msg) -> None:
        receive_ns = time.time_ns()
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        self.received += 1
        self._last_received = time.monotonic()
        try:
            frame = self._decode(msg, stamp or receive_ns)
        except Exception as exc:  # a corrupt JPEG, an encoding the cell cannot carry
            self.decode_errors += 1
            self._last_error = f"{type(exc).__name__}: {exc}"
            self._warn(f"{self.description}: image dropped: {self._last_error}")
            return
        self.ring.push(frame)

    def _decode(self, msg, stamp_ns: int) -> Frame:
        from qc_cell.ros.images import image_to_array, is_native

        origin = f"ros_image:{self.topic}@{stamp_ns}"
        if self.compressed:
            image = cv2.imdecode(np.frombuffer(msg.data, np.uint8), cv2.IMREAD_UNCHANGED)
            if image is None:
                raise ValueError(f"cannot decode the {msg.format or 'unknown'}-compressed image")
            frame = frame_from_image(image, origin)
        else:
            if not is_native(msg.encoding):
                raise ValueError(f"encoding {msg.encoding!r} is not carried by the cell")
            frame = Frame(image_to_array(msg), msg.encoding, origin)  # a view on msg.data, no copy
        return Frame(frame.image, frame.encoding, origin, stamp_ns=stamp_ns)

    def read(self) -> Frame:
        if self._subscription is None:
            raise SourceUnavailableError(f"{self.description}: not subscribed")
        frame = self.ring.pop(0.2)
        if frame is None:
            raise NoFrameYetError("no image yet")
        return frame

    def read_for(self, trigger_ns: int) -> Frame:
        if self._subscription is None:
            raise SourceUnavailableError(f"{self.description}: not subscribed")
        frame = self.ring.nearest(trigger_ns, int(self.tolerance_s * 1e9), self.tolerance_s + self.wait_s)
        if frame is None:
            self.unanswered_triggers += 1
            raise NoMatchingFrameError(f"no image on {self.topic} within {self.tolerance_s * 1000:g} ms of the trigger")
        return frame

    def stats(self) -> dict[str, object]:
        subscription = self._subscription
        values: dict[str, object] = {
            "topic": subscription.topic_name if subscription is not None else self.topic,
            "publishers": self.node.count_publishers(subscription.topic_name) if subscription is not None else 0,
            "images_received": self.received,
            "decode_errors": self.decode_errors,
            "last_image_age_s": f"{time.monotonic() - self._last_received:.2f}" if self._last_received else "never",
        }
        if self.mode == "triggered":
            values["unanswered_triggers"] = self.unanswered_triggers
        if self._last_error:
            values["last_decode_error"] = self._last_error
        values.update(self.ring.stats())
        return values
