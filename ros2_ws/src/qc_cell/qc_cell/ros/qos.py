"""QoS profiles of the cell's topics (REP-2003), in one place so publishers and subscribers match.

Pairs meant to match:
- IMAGE_VIEW: viewer images (camera/image_raw, camera/camera_info, inspection/overlay). Best effort,
  as rqt_image_view and RViz expect; nothing in the cell depends on them.
- PART_FRAMES: camera/frames. Reliable, because every part must reach inference; inference does its
  own explicit backpressure (NOT_INSPECTED, counted) instead of losing frames in the middleware.
- EVENTS: per-part records and events (camera/trigger, camera/parts, inspection/result, reject/event, alerts,
  quality/kpi). Reliable with a deep history.
- PART_RECORDS: quality/decision. As EVENTS, but the publisher keeps its last 1000 verdicts for late joiners:
  a subscriber asking for them (the cloud bridge) also gets the verdicts published before its reader was
  matched, which at start-up can happen after the first parts (discovery between two processes takes its
  time), and after a restart of the decision node (its first verdicts go out before every reader matched its new
  writer). The reject actuator subscribes with PART_RECORDS too, and tells old verdicts by their decision_stamp
  (a journal says which it handled already); a volatile reader would lose a restarted decision node's first
  verdicts (issue 17).
- LATCHED: state that a late joiner must see (model/active, process/state). Reliable, transient local.
- SENSOR_INPUT: subscriptions to process sensors. Best effort, so they match both best-effort and reliable
  sensor drivers; SENSOR_OUTPUT is what our simulator publishes with.
- DIAGNOSTICS: /diagnostics, as diagnostic_updater publishes it.
"""

from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)

IMAGE_VIEW = qos_profile_sensor_data

PART_FRAMES = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=30,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)

EVENTS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=1000,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)

PART_RECORDS = QoSProfile(
    history=EVENTS.history,
    depth=EVENTS.depth,
    reliability=EVENTS.reliability,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
)

LATCHED = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=1,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
)

SENSOR_INPUT = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=50,
    reliability=ReliabilityPolicy.BEST_EFFORT,
    durability=DurabilityPolicy.VOLATILE,
)

SENSOR_OUTPUT = qos_profile_sensor_data

DIAGNOSTICS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=10,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)
