"""PartFrame pixels by handle or inline: the ROS side of the camera driver's shared-memory frame pool
(qc_cell.camera.frame_pool; the contract is in docs/graph-contract.md, "Frames through shared memory").

- `FrameSender` (camera driver): writes each frame into the pool (or commits the slot a source captured it
  into: `reserve`) and sends a handle when every subscriber of camera/frames is a reader attached to the pool (so
  on this host, and alive); otherwise, when the pool is full, or without a pool (shared memory unavailable or
  disabled), the pixels go inline as before. Each new pool is announced on camera/frame_pool (latched), and the
  first frame into it waits up to attach_wait_s for the subscribers to attach, so no megapixel frame goes inline
  at start. An inline frame still names the pool too.
- `FrameReceiver` (inference, cloud_bridge): attaches to the announced pool, leases a frame on arrival (or, for a
  consumer that needs the pixels of a few frames only, when it reads them: `deferred_bgr8`), and gives the
  pipeline a decode / verify / release triple; an inline frame gives the view on the message as before.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from rclpy.node import Node
from rclpy.publisher import Publisher
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from qc_cell.camera.frame_pool import FrameGoneError, FramePool, FrameRef, Lease, PoolError, PoolReader, remove_stale
from qc_cell.ros import qos
from qc_cell.ros.images import (
    ImageConversionError,
    array_to_image,
    decode_bgr8,
    decode_for_model,
    image_description,
    image_layout,
    image_to_array,
    pixels_for_model,
    to_bgr8,
)
from qc_interfaces.msg import FrameHandle, PartFrame

POOL_PREFIX = "qc_frames"
ANNOUNCE_TOPIC = "camera/frame_pool"  # FrameHandle (pool name only), LATCHED: the camera driver's current pool
GRAPH_REFRESH_S = 0.5  # how often the subscriber list is compared with the pool's readers (and on any change)


def _fully_qualified(namespace: str, name: str) -> str:
    return f"{namespace.rstrip('/')}/{name}"


@dataclass(frozen=True)
class PoolSettings:
    enabled: bool = True
    slots: int = 12
    lease_s: float = 2.0
    attach_wait_s: float = 1.0  # the first frame into a new pool waits this long at most for subscribers to attach


class FrameSender:
    """The camera driver's publishing path for pixels. Called from the capture thread (one at a time)."""

    def __init__(
        self,
        node: Node,
        frames_pub: Publisher,
        settings: PoolSettings,
        pool_prefix: str,
        warn: Callable[[str], None],
    ) -> None:
        self._node, self._pub, self.settings = node, frames_pub, settings
        self._prefix = f"{POOL_PREFIX}_{pool_prefix}"
        self._warn = warn
        # The current pool's name, latched: a consumer attaches as soon as the pool exists (before its first frame).
        self._announce = node.create_publisher(FrameHandle, ANNOUNCE_TOPIC, qos.LATCHED)
        self.pool: FramePool | None = None
        self.unavailable = "" if settings.enabled else "disabled (frame_pool false)"
        self._local_only = False
        self._checked_at = 0.0
        self._checked_count = -1
        self._checked_readers: set[str] = set()
        self.by_handle = 0
        self.inline = 0
        self.pool_full = 0
        self.by_capture = 0  # frames captured straight into a slot (no copy in the driver)
        self.attach_waits: list[float] = []  # seconds the first frame of each pool waited for its subscribers
        if settings.enabled:
            for name in remove_stale(self._prefix):
                warn(f"removed the frame pool {name} of a camera driver that died")

    def fill(self, msg: PartFrame, pixels: np.ndarray, encoding: str, header: Header) -> None:
        """Put the frame into msg: a handle in msg.pool_frame (and the size in msg.image) or the pixels inline.
        ImageConversionError when the pixels do not match the encoding."""
        pool = self.pool if self.pool is not None and self.pool.reserved(pixels) else self._pool_for(pixels)
        if pool is not None:
            msg.pool_frame = FrameHandle(pool=pool.name)
            if self._all_local():
                description = image_description(pixels, encoding, header)  # checks the encoding first
                if pool.reserved(pixels):  # captured straight into the slot: nothing to copy
                    ref = pool.commit()
                    self.by_capture += 1
                else:
                    native = pixels if pixels.dtype.isnative else pixels.astype(pixels.dtype.newbyteorder("="))
                    ref = pool.write(native)
                if ref is not None:
                    msg.image = description
                    msg.pool_frame = FrameHandle(pool=pool.name, in_pool=True, slot=ref.slot, generation=ref.generation)
                    self.by_handle += 1
                    return
                self.pool_full += 1
        msg.image = array_to_image(pixels, encoding, header)
        self.inline += 1

    def reserve(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray | None:
        """A pool slot for a source to capture the next frame into (FrameSource.frame_allocator), or None (the
        source allocates a fresh array): only while frames go by handle. fill() then commits it without a copy;
        a frame dropped before fill() just leaves the reservation, which the next one replaces. Capture thread."""
        dtype = np.dtype(dtype)
        if not dtype.isnative:
            return None
        pool = self._pool_for_size(int(np.prod(shape)) * dtype.itemsize)
        if pool is None or not self._all_local():
            return None
        return pool.reserve(shape, dtype)

    def viewer_image(self, msg: PartFrame, pixels: np.ndarray, encoding: str) -> Image:
        """camera/image_raw: the message's own Image when inline, else one made from the pixels (viewers only)."""
        if msg.pool_frame.in_pool:
            return array_to_image(pixels, encoding, msg.header)
        return msg.image

    def _pool_for(self, pixels: np.ndarray) -> FramePool | None:
        return self._pool_for_size(pixels.nbytes)

    def _pool_for_size(self, nbytes: int) -> FramePool | None:
        if self.unavailable:
            return None
        if self.pool is not None and self.pool.fits(nbytes):
            return self.pool
        old, self.pool = self.pool, None
        try:  # a frame larger than the slots (first frame, or a source that changed size): a new, larger pool
            self.pool = FramePool.create(self._prefix, self.settings.slots, nbytes, self.settings.lease_s)
        except PoolError as exc:
            self.unavailable = str(exc)
            self._warn(f"frames go inline through DDS: no shared-memory frame pool: {exc}")
        if old is not None:
            old.close()  # consumers holding its frames keep their mapping
        if self.pool is not None:
            self._announce.publish(FrameHandle(pool=self.pool.name))
            self._wait_for_readers()
        return self.pool

    def _wait_for_readers(self) -> None:
        """After a new pool is announced: wait (up to attach_wait_s) until every subscriber of camera/frames has
        attached, so the first frame goes by handle and not inline (seconds through DDS at 12 MP, and the handles
        published behind it would wait for it). No subscriber, or one that never attaches (another host, a
        recorder): the wait ends at the deadline, once per pool."""
        start = time.monotonic()
        deadline = start + self.settings.attach_wait_s
        while self._pub.get_subscription_count() > 0 and time.monotonic() < deadline:
            self._checked_at = 0.0  # re-read the graph each time
            if self._all_local():
                break
            time.sleep(0.005)
        self.attach_waits.append(time.monotonic() - start)

    def _all_local(self) -> bool:
        """Every subscriber of camera/frames is attached to the pool (cached; refreshed when the number of
        subscriptions or the set of attached readers changes, and every GRAPH_REFRESH_S)."""
        count = self._pub.get_subscription_count()
        readers = self.pool.readers() if self.pool is not None else set()
        now = time.monotonic()
        if count != self._checked_count or readers != self._checked_readers or now - self._checked_at > GRAPH_REFRESH_S:
            self._checked_count, self._checked_readers, self._checked_at = count, readers, now
            infos = self._node.get_subscriptions_info_by_topic(self._pub.topic_name)
            names = {_fully_qualified(info.node_namespace, info.node_name) for info in infos}
            self._local_only = bool(infos) and len(infos) == count and names <= readers
        return self._local_only

    def stats(self) -> dict[str, object]:
        pool = self.pool
        values: dict[str, object] = {
            "frame_pool": pool.name if pool is not None else f"none: {self.unavailable or 'no frame yet'}",
            "frames_by_handle": self.by_handle,
            "frames_inline": self.inline,
            "frame_pool_full": self.pool_full,
        }
        if pool is not None:
            values["frame_pool_slots"] = f"{pool.slots} x {pool.slot_bytes / 1e6:.1f} MB"
            values["frames_captured_into_pool"] = self.by_capture
            values["frame_pool_leased"] = pool.leased()
            values["frame_pool_reclaimed"] = pool.reclaimed  # frames overwritten before their consumer took them
            values["frame_pool_readers"] = ", ".join(sorted(pool.readers())) or "none"
        return values

    def close(self) -> None:
        pool, self.pool = self.pool, None
        if pool is not None:
            pool.close()


@dataclass
class ReceivedFrame:
    """What the inference pipeline needs of one PartFrame's pixels."""

    decode: Callable[[], tuple[np.ndarray, str]]  # pixels as a model takes them (bayer demosaiced)
    verify: Callable[[], str] | None = None  # "" while the pixels are still this frame's, else why not
    release: Callable[[], None] | None = None
    raw: Callable[[], np.ndarray] | None = None  # the pixels in the message's encoding (a view)


class FrameReceiver:
    """A consumer's input path: inline pixels as before, pool frames leased on arrival."""

    def __init__(self, reader_name: str, enabled: bool = True) -> None:
        self.reader = PoolReader(reader_name) if enabled else None
        self.by_handle = 0
        self.inline = 0
        self.gone = 0  # deferred reads of frames overwritten (or unmappable) by the time they were read

    def subscribe(self, node: Node, callback_group=None) -> None:
        """Attach to each pool the camera driver announces (camera/frame_pool, latched), before its first frame."""
        if self.reader is not None:
            node.create_subscription(
                FrameHandle, ANNOUNCE_TOPIC, self.on_announcement, qos.LATCHED, callback_group=callback_group
            )

    def on_announcement(self, msg: FrameHandle) -> None:
        if self.reader is not None and msg.pool:
            self.reader.attach(msg.pool)

    def receive(self, msg: PartFrame) -> ReceivedFrame:
        handle = msg.pool_frame
        if self.reader is not None and handle.pool and not handle.in_pool:
            self.reader.attach(handle.pool)  # announces this consumer: the next frames come by handle
        if not handle.in_pool:
            self.inline += 1
            return ReceivedFrame(decode=lambda: decode_for_model(msg.image), raw=lambda: image_to_array(msg.image))
        self.by_handle += 1
        encoding = msg.image.encoding
        try:
            shape, dtype = image_layout(msg.image)
            if self.reader is None:
                raise FrameGoneError("frame_unavailable", "the frame is in a shared-memory pool and frame_pool is off")
            lease = self.reader.lease(FrameRef(handle.pool, handle.slot, handle.generation, shape, dtype))
        except (FrameGoneError, ImageConversionError) as exc:
            error = exc

            def fail() -> tuple[np.ndarray, str]:
                raise error

            return ReceivedFrame(decode=fail, raw=fail)
        return ReceivedFrame(
            decode=lambda: pixels_for_model(lease.pixels(), encoding),
            verify=partial_verify(lease),
            release=lease.release,
            raw=lease.pixels,
        )

    def deferred_bgr8(self, msg: PartFrame) -> Callable[[], np.ndarray]:
        """For a consumer that needs the pixels of a few frames, later (cloud_bridge: samples, offload): the frame
        as a BGR8 array of its own when called. A pool frame is leased only then, copied, and its generation
        checked after the copy; ValueError (what PartImage.decode raises) when it was overwritten meanwhile."""
        handle = msg.pool_frame
        if self.reader is not None and handle.pool and not handle.in_pool:
            self.reader.attach(handle.pool)
        image = msg.image
        if not handle.in_pool:
            self.inline += 1
            return lambda: decode_bgr8(image)
        self.by_handle += 1
        reader = self.reader

        def read() -> np.ndarray:
            if reader is None:
                raise ValueError("the frame is in a shared-memory pool and frame_pool is off")
            try:
                shape, dtype = image_layout(image)
                lease = reader.lease(FrameRef(handle.pool, handle.slot, handle.generation, shape, dtype))
            except (FrameGoneError, ImageConversionError) as exc:
                self.gone += 1
                raise ValueError(f"frame of part {msg.part_id}: {exc}") from exc
            try:
                pixels = lease.pixels()
                bgr = to_bgr8(pixels, image.encoding)
                if np.shares_memory(bgr, pixels):
                    bgr = bgr.copy()  # bgr8 (or a view of it): the slot is not ours after release
                if not lease.intact():
                    raise FrameGoneError("frame_overwritten", f"slot {handle.slot} was overwritten while read")
            except (FrameGoneError, ImageConversionError) as exc:
                self.gone += 1
                raise ValueError(f"frame of part {msg.part_id}: {exc}") from exc
            finally:
                lease.release()
            return bgr

        return read

    def keep_attached(self) -> None:
        """Refresh this consumer's registration (frames refresh it too): call it every second or so, so a slow
        line (parts further apart than the registration's 5 s) keeps getting handles."""
        if self.reader is not None and self.reader.pool:
            self.reader.attach(self.reader.pool)

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()


def partial_verify(lease: Lease) -> Callable[[], str]:
    def verify() -> str:
        if lease.intact():
            return ""
        return f"slot {lease.ref.slot} of {lease.ref.pool} was overwritten while the frame was in use"

    return verify
