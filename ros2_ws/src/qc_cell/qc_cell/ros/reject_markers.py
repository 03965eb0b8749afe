"""RViz markers of the reject actuator (reject/markers): where and when each part was acted on.

Frame `marker_frame` (`conveyor` by default): x along the belt, origin under the camera. Per part a sphere coloured
by outcome and a label with the part id, outcome and lateness.
"""

from __future__ import annotations

from builtin_interfaces.msg import Duration
from visualization_msgs.msg import Marker, MarkerArray

from qc_cell.reject.records import DONE, FAILED, LATE, MISSED, SKIPPED, UNCONFIRMED, RejectRecord
from qc_cell.ros.time import from_ns
from qc_contract.vocabulary import OUTCOME_NAMES

OUTCOME_COLOURS = {
    DONE: (0.1, 0.8, 0.1),
    LATE: (1.0, 0.55, 0.0),
    FAILED: (0.9, 0.1, 0.1),
    SKIPPED: (0.6, 0.6, 0.6),
    UNCONFIRMED: (0.8, 0.1, 0.8),  # magenta: struck, but not seen leaving the line
    MISSED: (0.5, 0.0, 0.0),  # dark red: passed while the actuator restarted
}
MAX_MARKER_ID = 100_000  # ids wrap around: RViz replaces a marker of the same namespace and id


class RejectMarkers:
    def __init__(self, frame_id: str, lifetime_s: float) -> None:
        self.frame_id = frame_id
        self.lifetime_s = lifetime_s
        self._marker_id = 0

    def build(self, record: RejectRecord, now_ns: int) -> MarkerArray:
        """A sphere where the part was acted on and a label, stamped with the action's time (else now_ns)."""
        stamp = from_ns(record.actual_ns or record.planned_ns or now_ns)
        lifetime = Duration(sec=int(self.lifetime_s), nanosec=int(self.lifetime_s % 1 * 1e9))
        r, g, b = OUTCOME_COLOURS[record.outcome]
        self._marker_id = (self._marker_id + 1) % MAX_MARKER_ID
        sphere = Marker(ns=f"reject/{record.lane}", id=self._marker_id, type=Marker.SPHERE, action=Marker.ADD)
        sphere.pose.position.x = record.position_m
        sphere.pose.orientation.w = 1.0
        sphere.scale.x = sphere.scale.y = sphere.scale.z = 0.05
        sphere.color.r, sphere.color.g, sphere.color.b, sphere.color.a = r, g, b, 0.9
        label = Marker(ns=f"reject/{record.lane}/label", id=self._marker_id, type=Marker.TEXT_VIEW_FACING)
        label.action = Marker.ADD
        label.pose.position.x = record.position_m
        label.pose.position.z = 0.08
        label.pose.orientation.w = 1.0
        label.scale.z = 0.03
        label.color.r = label.color.g = label.color.b = label.color.a = 1.0
        label.text = f"{record.part_id} {OUTCOME_NAMES[record.outcome]} {record.lateness_ms:+.1f} ms"
        for marker in (sphere, label):
            marker.header.frame_id = self.frame_id
            marker.header.stamp = stamp
            marker.lifetime = lifetime
        return MarkerArray(markers=[sphere, label])
