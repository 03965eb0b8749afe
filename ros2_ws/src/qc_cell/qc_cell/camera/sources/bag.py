"""A rosbag2 recording as a source: re-run last week's production through a candidate model.

Read with the pure-Python `rosbags` package (sqlite3 and MCAP storage, any rosbag2 version; no ROS install
needed: the PyPI ROS wheels carry no rosbag2). Plays one image topic, in recording order:
- sensor_msgs/Image (any encoding the cell carries) and sensor_msgs/CompressedImage (JPEG/PNG);
- qc_interfaces/PartFrame (the cell's own camera/frames recorded with `ros2 bag record`): the image and its
  ground truth (`ground_truth`, `defect_type`), so accuracy can be measured on the replay. Message types are
  read from the definitions stored in the bag (rosbag2 Iron and later, MCAP always), with the cell's own
  interfaces as the fallback.

`topic` '' takes the bag's only image topic (an error names them when there are several). `playback`:
- `recorded`: at the recorded pace (the gaps between the recording times), every image a part;
- `fast`: as fast as the capture loop asks, i.e. at `rate_hz` in free run (set it to what inference sustains), or
  one image per camera/trigger.
Each part is stamped with the time it is played (downstream timing works as live); the origin names the bag,
the index and the recorded time, so every result can be traced to its recorded image.
"""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np

from qc_cell.camera.sources.base import (
    EndOfStreamError,
    Frame,
    FrameSource,
    NoFrameYetError,
    SourceConfigError,
    SourceUnavailableError,
    Warn,
    default_warn,
    frame_from_image,
)

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage", "qc_interfaces/msg/PartFrame")
PLAYBACK = ("recorded", "fast")
MAX_GAP_S = 5.0  # recorded pauses longer than this are shortened to it
LABELS = {1: "good", 2: "defect"}  # PartFrame.LABEL_GOOD / LABEL_DEFECT (0 = unknown)


def _msg_dir() -> Path | None:
    """The cell's .msg files (for bags that carry no message definitions)."""
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "msg"
        if (candidate / "PartFrame.msg").is_file():
            return candidate
        candidate = parent / "qc_interfaces" / "msg"
        if (candidate / "PartFrame.msg").is_file():
            return candidate
    return None


def cell_typestore():
    """The rosbags typestore of ROS 2 Kilted plus the cell's own messages (qc_interfaces)."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_KILTED if hasattr(Stores, "ROS2_KILTED") else Stores.LATEST)
    folder = _msg_dir()
    if folder is not None:
        types = {}
        for path in sorted(folder.glob("*.msg")):
            types.update(get_types_from_msg(path.read_text(), f"qc_interfaces/msg/{path.stem}"))
        store.register(types)
    return store


def image_of(msgtype: str, msg, origin: str) -> Frame:
    """A Frame from a deserialized Image, CompressedImage or PartFrame (ground truth from the PartFrame)."""
    label = defect = None
    if msgtype == "qc_interfaces/msg/PartFrame":
        label = LABELS.get(int(msg.ground_truth))
        defect = msg.defect_type or None
        if not msg.capture_ok or not msg.image.data.size:
            raise ValueError(f"recorded part {msg.part_id} has no image ({msg.capture_error or 'capture failed'})")
        msg = msg.image
        msgtype = "sensor_msgs/msg/Image"
    if msgtype == "sensor_msgs/msg/CompressedImage":
        image = cv2.imdecode(np.asarray(msg.data, np.uint8), cv2.IMREAD_UNCHANGED)
        if image is None:
            raise ValueError(f"cannot decode the {msg.format or 'unknown'}-compressed image")
        return frame_from_image(image, origin, label, defect)
    from qc_cell.ros.images import encoding_layout, is_native

    if not is_native(msg.encoding):
        raise ValueError(f"encoding {msg.encoding!r} is not carried by the cell")
    dtype, channels = encoding_layout(msg.encoding)
    dtype = dtype.newbyteorder(">" if msg.is_bigendian else "<") if dtype.itemsize > 1 else dtype
    row = msg.width * channels * dtype.itemsize
    if msg.step < row or len(msg.data) < msg.step * msg.height:
        raise ValueError(f"image data of {len(msg.data)} bytes does not fit {msg.width}x{msg.height} step {msg.step}")
    rows = np.asarray(msg.data, np.uint8)[: msg.step * msg.height].reshape(msg.height, msg.step)[:, :row]
    pixels = np.ascontiguousarray(rows).view(dtype).astype(dtype.newbyteorder("="), copy=False)
    shape = (msg.height, msg.width, channels) if channels > 1 else (msg.height, msg.width)
    return Frame(pixels.reshape(shape), msg.encoding, origin, label, defect)


class BagSource(FrameSource):
    kind = "bag"

    def __init__(
        self, path: str, topic: str = "", playback: str = "recorded", loop: bool = False, warn: Warn | None = None
    ) -> None:
        if not path:
            raise SourceConfigError("bag path is empty (the rosbag2 folder, or its .db3/.mcap file)")
        if playback not in PLAYBACK:
            raise SourceConfigError(f"bag playback {playback!r} must be one of {list(PLAYBACK)}")
        self.path = Path(path).expanduser()
        self.topic = topic.strip()
        self.playback = playback
        self.loop = loop
        self._warn = warn or default_warn
        self._reader = None
        self._messages = None
        self._connection = None
        self._index = 0
        self._passes = 0
        self._pending = None
        self._last_recorded: int | None = None
        self._last_due = 0.0
        self._due_at: float | None = None
        self.skipped = 0
        self.total = 0

    @property
    def description(self) -> str:
        topic = self._connection.topic if self._connection is not None else self.topic or "(image topic)"
        return f"bag:{self.path.name} {topic}"

    @property
    def is_open(self) -> bool:
        return self._reader is not None

    @property
    def self_paced(self) -> bool:
        return self.playback == "recorded"

    def open(self) -> None:
        try:
            from rosbags.highlevel import AnyReader
        except ImportError as exc:
            raise SourceConfigError(f"the bag source needs the rosbags package ({exc}): pip install rosbags") from exc
        self.close()
        if not self.path.exists():
            raise SourceUnavailableError(f"bag {self.path} does not exist")
        root = self.path.parent if self.path.is_file() and (self.path.parent / "metadata.yaml").is_file() else self.path
        try:
            reader = AnyReader([root], default_typestore=cell_typestore())
            reader.open()
        except Exception as exc:  # rosbags' ReaderError/AnyReaderError: not a bag, corrupt, unknown storage
            raise SourceUnavailableError(f"bag {root} cannot be read: {exc}") from exc
        images = [c for c in reader.connections if c.msgtype in IMAGE_TYPES]
        if self.topic:
            chosen = [c for c in images if c.topic == self.topic]
            if not chosen:
                topics = sorted({f"{c.topic} ({c.msgtype})" for c in reader.connections})
                reader.close()
                raise SourceConfigError(f"bag {root} has no image topic {self.topic!r}; its topics: {topics}")
        else:
            chosen = images
            if len({c.topic for c in images}) != 1:
                reader.close()
                raise SourceConfigError(
                    f"bag {root} has {len({c.topic for c in images})} image topics "
                    f"{sorted({c.topic for c in images})}: set the topic parameter"
                )
        self._reader, self._connection = reader, chosen[0]
        self.total = sum(c.msgcount for c in chosen)
        self._chosen = chosen
        self._rewind()

    def _rewind(self) -> None:
        self._messages = self._reader.messages(connections=self._chosen)
        self._index = 0
        self._pending = None
        self._last_recorded: int | None = None
        self._last_due = 0.0
        self._due_at: float | None = None

    def close(self) -> None:
        reader, self._reader = self._reader, None
        self._messages = None
        if reader is not None:
            reader.close()

    def read(self) -> Frame:
        if self._reader is None:
            raise SourceUnavailableError(f"{self.description}: not open")
        while True:
            item, self._pending = self._pending or next(self._messages, None), None
            if item is None:
                if not self.loop or self._index == 0:
                    raise EndOfStreamError(f"bag {self.path.name}: all {self._index} images played")
                self._passes += 1
                self._rewind()
                continue
            connection, recorded_ns, raw = item
            if self.playback == "recorded" and not self._due(recorded_ns):
                self._pending = item  # not due yet: the loop asks again (stays responsive to stop)
                raise NoFrameYetError("next recorded image not due yet")
            self._index += 1
            origin = f"bag:{self.path.name}#{self._index - 1}@{recorded_ns}"
            try:
                msg = self._reader.deserialize(raw, connection.msgtype)
                return image_of(connection.msgtype, msg, origin)
            except Exception as exc:  # one bad message: log it with its place, play on
                self.skipped += 1
                self._warn(f"{origin}: image skipped: {type(exc).__name__}: {exc}")

    def _due(self, recorded_ns: int) -> bool:
        """Whether the image recorded at recorded_ns is due (sleeping up to 0.2 s towards it). A pause in the
        recording longer than MAX_GAP_S (the line stood still) is played as MAX_GAP_S."""
        if self._due_at is None:  # first look at this image
            if self._last_recorded is None:
                self._due_at = time.monotonic()
            else:
                gap = max(0.0, (recorded_ns - self._last_recorded) / 1e9)
                self._due_at = self._last_due + min(gap, MAX_GAP_S)
        delay = self._due_at - time.monotonic()
        if delay > 0.2:
            time.sleep(0.2)
            return False
        if delay > 0:
            time.sleep(delay)
        self._last_recorded, self._last_due, self._due_at = recorded_ns, self._due_at, None
        return True

    def stats(self) -> dict[str, object]:
        return {"bag_images": self.total, "played": self._index, "skipped_images": self.skipped, "passes": self._passes}
