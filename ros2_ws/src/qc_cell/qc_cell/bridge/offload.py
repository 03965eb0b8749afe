"""Re-inspection offload: a re-inspect part's image goes to the cloud (.../verify/request); the cloud's
verdict (.../verify/response) is used only if it arrives before the part's deadline, i.e. capture time +
the slack the conveyor gives between the camera and the reject point. Otherwise the local verdict stands.

A response after the deadline is still measured (outcome "late", with its round-trip time) if it comes
within late_grace_s; a request without any answer by then is reported as "no_response".

Times: deadlines in wall-clock ns (the parts' capture stamps), round trips in monotonic ns.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass

from qc_contract.vocabulary import Verdict


@dataclass(frozen=True)
class PendingVerify:
    part_id: str
    request_id: str
    local_verdict: int
    capture_ns: int  # wall clock
    deadline_ns: int  # wall clock
    sent_mono_ns: int
    wire_bytes: int = 0  # size of the request record (for the policy's link model)
    policy: dict | None = None  # the policy's decision, repeated in the verify/result record


@dataclass(frozen=True)
class VerifyOutcome:
    pending: PendingVerify | None
    outcome: str  # used, late, unknown_request; expired / refused (the cloud answered without a verdict)
    rtt_ms: float | None


class OffloadTracker:
    def __init__(
        self, slack_ms: float, min_remaining_ms: float = 0.0, late_grace_s: float = 30.0, rtt_window: int = 500
    ) -> None:
        self.slack_ns = int(slack_ms * 1e6)
        self.late_grace_ns = int(late_grace_s * 1e9)
        self.min_remaining_ns = int(min_remaining_ms * 1e6)
        self.counts: Counter[str] = Counter()  # sent, used, late, no_response, no_slack, unknown_request
        self._pending: dict[str, PendingVerify] = {}
        self._rtts: deque[float] = deque(maxlen=rtt_window)
        self._lock = threading.Lock()

    def deadline(self, capture_ns: int) -> int:
        return capture_ns + self.slack_ns

    def worth_sending(self, capture_ns: int, now_ns: int) -> bool:
        """False when the remaining slack is already shorter than min_remaining_ms: do not bother the cloud."""
        if self.deadline(capture_ns) - now_ns < self.min_remaining_ns:
            with self._lock:
                self.counts["no_slack"] += 1
            return False
        return True

    def sent(
        self,
        part_id: str,
        request_id: str,
        local_verdict: int,
        capture_ns: int,
        mono_ns: int,
        wire_bytes: int = 0,
        policy: dict | None = None,
    ) -> None:
        with self._lock:
            self._pending[request_id] = PendingVerify(
                part_id, request_id, local_verdict, capture_ns, self.deadline(capture_ns), mono_ns, wire_bytes, policy
            )
            self.counts["sent"] += 1

    def response(
        self, request_id: str, part_id: str, now_ns: int, mono_ns: int, cloud_outcome: str = "scored"
    ) -> VerifyOutcome:
        with self._lock:
            pending = self._pending.get(request_id)
            if pending is None or pending.part_id != part_id:
                self.counts["unknown_request"] += 1
                return VerifyOutcome(None, "unknown_request", None)
            del self._pending[request_id]
            rtt_ms = (mono_ns - pending.sent_mono_ns) / 1e6
            self._rtts.append(rtt_ms)
            if cloud_outcome != "scored":
                outcome = cloud_outcome  # expired / refused: nothing to use, whenever it came
            else:
                outcome = "used" if now_ns <= pending.deadline_ns else "late"
            self.counts[outcome] += 1
            return VerifyOutcome(pending, outcome, rtt_ms)

    def expire(self, now_ns: int) -> list[PendingVerify]:
        """Requests without any answer by deadline + late_grace_s (the local verdict stood)."""
        with self._lock:
            gone = [p for p in self._pending.values() if p.deadline_ns + self.late_grace_ns < now_ns]
            for p in gone:
                del self._pending[p.request_id]
            self.counts["no_response"] += len(gone)
            return gone

    def rtt_stats(self) -> dict[str, float | int | None]:
        with self._lock:
            values = sorted(self._rtts)
        if not values:
            return {"rtt_count": 0, "rtt_p50_ms": None, "rtt_p95_ms": None, "rtt_max_ms": None}

        def pct(q: float) -> float:
            return round(values[min(len(values) - 1, math.ceil(q * len(values)) - 1)], 2)

        return {"rtt_count": len(values), "rtt_p50_ms": pct(0.5), "rtt_p95_ms": pct(0.95), "rtt_max_ms": pct(1.0)}

    @property
    def pending_count(self) -> int:
        return len(self._pending)


# -- the latency-aware offloading policy --------------------------------------------------------------------
#
# Which parts go to the cloud, and as what image. A part is sent only when the predicted round trip for its
# image fits into its remaining slack:
#
#     predicted_ms(bytes) = a + b * bytes  (+ k x the residual spread + a fixed safety margin)
#
# a (the base round trip: network, broker, the verifier's queue and model) and b (ms per byte: 1 / uplink
# bandwidth) are fitted by least squares to the (bytes sent, round trip) pairs of the last answers. Before there
# are enough of them (or when the sizes sent do not vary enough to separate a from b) the configured priors
# stand in. The image is the smallest that serves the cloud model: the ROI crop, scaled to the cloud model's
# input side, at the highest JPEG quality of the ladder that fits the slack; bytes per pixel per quality are
# learnt from the JPEGs actually encoded.

# Verdict reasons that mean "the edge could not inspect this part in time" (overload): such parts are offloaded
# when the edge is overloaded, so they get a cloud verdict instead of NOT_INSPECTED.
OVERLOAD_REASONS = ("queue_full", "no_result", "late_result")
# Second opinions (second_opinion_share > 0): the NORMAL parts the edge passed with the highest P(defect), judged
# against the last SECOND_OPINION_WINDOW normal parts, once SECOND_OPINION_MIN of them were seen. A defect the edge
# passes (an escape, the costly error) scores there more often than anywhere else in its normal parts.
SECOND_OPINION_WINDOW = 500
SECOND_OPINION_MIN = 50
BASE64_OVERHEAD = 4 / 3
RECORD_OVERHEAD_BYTES = 600  # envelope and metadata of a verify request around the image


@dataclass(frozen=True)
class PolicySettings:
    roi: tuple[int, int, int, int] | None = None  # x, y, width, height of the part in the frame; None = whole
    cloud_side: int = 224  # longer side the cloud model needs (its input size); 0 = keep the crop's size
    quality_ladder: tuple[int, ...] = (90, 75, 60)  # JPEG qualities tried, best first
    margin_ms: float = 20.0  # fixed safety margin on top of the prediction
    spread_k: float = 3.0  # predicted + k x residual spread of the round-trip fit
    prior_rtt_ms: float = 100.0  # base round trip before any measurement
    prior_bandwidth_mbps: float = 5.0  # uplink before any measurement
    min_bandwidth_mbps: float = 0.2  # below: the link is too slow, nothing is sent
    max_backlog: int = 8  # requests sent and not yet answered; more: the link backs up, nothing more is sent
    overload_threshold: float = 0.05  # share of recent parts the edge could not inspect: above = overloaded
    fit_window: int = 64
    probe_interval_s: float = 10.0  # when nothing fits: one request this often anyway, to measure the link again
    second_opinion_share: float = 0.0  # top share of the NORMAL parts by P(defect) also sent (0 = none)

    def __post_init__(self) -> None:
        if not self.quality_ladder or not all(1 <= q <= 100 for q in self.quality_ladder):
            raise ValueError("offload quality ladder: qualities within 1..100, at least one")
        if self.roi is not None and (len(self.roi) != 4 or min(self.roi) < 0 or self.roi[2] < 1 or self.roi[3] < 1):
            raise ValueError(f"offload ROI {self.roi}: x, y >= 0 and width, height >= 1")
        if self.prior_bandwidth_mbps <= 0 or self.prior_rtt_ms < 0 or self.cloud_side < 0:
            raise ValueError("offload priors: bandwidth > 0, round trip >= 0, cloud side >= 0")
        if not 0.0 <= self.second_opinion_share <= 0.5:
            raise ValueError(f"offload second opinion share {self.second_opinion_share}: within 0..0.5")


@dataclass(frozen=True)
class ImagePlan:
    roi: tuple[int, int, int, int] | None
    max_side: int  # longer side after scaling (0 = keep)
    quality: int
    width: int
    height: int
    estimated_bytes: int


@dataclass(frozen=True)
class Decision:
    send: bool
    # sent: send_reinspect, send_overload, send_second_opinion, probe; kept: not_candidate, no_slack, slow_link,
    # outbox_backlog
    reason: str
    plan: ImagePlan | None
    slack_ms: float
    estimate_ms: float | None

    def record(self, link: dict[str, float | None], image_bytes: int | None = None) -> dict:
        """The `policy` object of the verify/result record."""
        plan = self.plan
        return {
            "reason": self.reason,
            "slack_ms": round(self.slack_ms, 1),
            "estimate_ms": None if self.estimate_ms is None else round(self.estimate_ms, 1),
            "image_bytes": image_bytes if image_bytes is not None else (plan.estimated_bytes if plan else None),
            "width": plan.width if plan else None,
            "height": plan.height if plan else None,
            "jpeg_quality": plan.quality if plan else None,
            "roi": list(plan.roi) if plan and plan.roi else None,
            **link,
        }


class LinkModel:
    """Round trip as a function of the bytes sent, fitted to the answers (see above)."""

    def __init__(self, settings: PolicySettings) -> None:
        self.s = settings
        self._pairs: deque[tuple[float, float]] = deque(maxlen=settings.fit_window)
        self.base_ms = settings.prior_rtt_ms
        self.ms_per_byte = 8 / (settings.prior_bandwidth_mbps * 1e3)
        self.spread_ms = 0.0

    def observe(self, wire_bytes: int, rtt_ms: float) -> None:
        self._pairs.append((float(wire_bytes), float(rtt_ms)))
        self._fit()

    def _fit(self) -> None:
        if len(self._pairs) < 4:
            if self._pairs:  # a few answers: the base is what they took beyond the prior upload time
                self.base_ms = max(0.0, min(r - self.ms_per_byte * x for x, r in self._pairs))
            return
        xs = [x for x, _ in self._pairs]
        rs = [r for _, r in self._pairs]
        n = len(xs)
        mx, mr = sum(xs) / n, sum(rs) / n
        sxx = sum((x - mx) ** 2 for x in xs)
        if sxx > (0.15 * mx) ** 2 * n and mx > 0:  # sizes vary enough to tell bandwidth from base
            sxr = sum((x - mx) * (r - mr) for x, r in zip(xs, rs, strict=True))
            srr = sum((r - mr) ** 2 for r in rs)
            # Only a fit that explains most of the variation says what the bandwidth is; otherwise the round trips
            # vary for another reason (the verifier's queue), which the base and the spread then carry.
            if srr > 0 and sxr > 0 and sxr * sxr / (sxx * srr) >= 0.5:
                self.ms_per_byte = max(sxr / sxx, 8 / (1e3 * 1e3))  # never faster than 1 Gbit/s
        self.base_ms = max(0.0, mr - self.ms_per_byte * mx)
        residuals = [r - (self.base_ms + self.ms_per_byte * x) for x, r in zip(xs, rs, strict=True)]
        self.spread_ms = math.sqrt(sum(e * e for e in residuals) / n)

    @property
    def bandwidth_mbps(self) -> float:
        return 8 / (self.ms_per_byte * 1e3)

    def predict_ms(self, wire_bytes: int) -> float:
        return self.base_ms + self.ms_per_byte * wire_bytes + self.s.spread_k * self.spread_ms + self.s.margin_ms

    @property
    def measured(self) -> int:
        return len(self._pairs)


class OffloadPolicy:
    """decide() per part (bridge thread); observe_*() from the answers and the parts. Counts every decision."""

    def __init__(self, settings: PolicySettings) -> None:
        self.s = settings
        self.link = LinkModel(settings)
        self.counts: Counter[str] = Counter()
        self._bytes_per_pixel: dict[int, float] = {q: 0.25 * (q / 75) ** 2 for q in settings.quality_ladder}
        self._overload: deque[bool] = deque(maxlen=100)
        self._normal_p: deque[float] = deque(maxlen=SECOND_OPINION_WINDOW)  # P(defect) of recent NORMAL parts
        self._second_opinion_from = math.inf  # P(defect) from which a NORMAL part gets one (set by observe_part)
        self._last_answer_s = self._last_probe_s = float("-inf")  # no answer yet: a probe may go at once
        self._lock = threading.Lock()

    # -- what the policy learns -----------------------------------------------------------------------

    def observe_part(self, verdict: int, reasons: tuple[str, ...], probability: float = math.nan) -> None:
        with self._lock:
            self._overload.append(any(r in OVERLOAD_REASONS for r in reasons))
            if verdict == Verdict.NORMAL and math.isfinite(probability) and self.s.second_opinion_share > 0:
                recent = self._normal_p
                recent.append(probability)
                if len(recent) >= SECOND_OPINION_MIN:  # the top second_opinion_share of the window, once per part
                    rank = min(len(recent) - 1, int(len(recent) * (1.0 - self.s.second_opinion_share)))
                    self._second_opinion_from = sorted(recent)[rank]

    def observe_jpeg(self, quality: int, pixels: int, jpeg_bytes: int) -> None:
        if pixels > 0 and quality in self._bytes_per_pixel:
            with self._lock:
                old = self._bytes_per_pixel[quality]
                self._bytes_per_pixel[quality] = 0.8 * old + 0.2 * jpeg_bytes / pixels

    def observe_answer(self, wire_bytes: int, rtt_ms: float, now_s: float | None = None) -> None:
        with self._lock:
            self.link.observe(wire_bytes, rtt_ms)
            self._last_answer_s = time.monotonic() if now_s is None else now_s

    @property
    def edge_load(self) -> float:
        """Share of the recent parts the edge could not inspect in time."""
        return sum(self._overload) / len(self._overload) if self._overload else 0.0

    @property
    def overloaded(self) -> bool:
        return self.edge_load > self.s.overload_threshold

    # -- the decision -----------------------------------------------------------------------------------

    def plan(self, frame_w: int, frame_h: int, quality: int) -> ImagePlan:
        roi = self.s.roi
        if roi is not None:  # clipped to the frame
            x, y = min(roi[0], frame_w - 1), min(roi[1], frame_h - 1)
            roi = (x, y, min(roi[2], frame_w - x), min(roi[3], frame_h - y))
        w, h = (roi[2], roi[3]) if roi else (frame_w, frame_h)
        side = self.s.cloud_side
        if side and max(w, h) > side:
            scale = side / max(w, h)
            w, h = max(1, round(w * scale)), max(1, round(h * scale))
        jpeg = self._bytes_per_pixel[quality] * w * h
        wire = int(jpeg * BASE64_OVERHEAD + RECORD_OVERHEAD_BYTES)
        return ImagePlan(roi, side if side and max(w, h) >= side else 0, quality, w, h, wire)

    def candidate(self, verdict: int, reasons: tuple[str, ...], probability: float = math.nan) -> bool:
        """Worth decoding the frame for: a re-inspect part, one the overloaded edge could not inspect, or a normal
        part for a second opinion (call observe_part first)."""
        with self._lock:
            return self._why(verdict, reasons, probability) is not None

    def _why(self, verdict: int, reasons: tuple[str, ...], probability: float) -> str | None:
        if verdict == Verdict.REINSPECT:
            return "send_reinspect"
        if verdict == Verdict.NOT_INSPECTED and any(r in OVERLOAD_REASONS for r in reasons) and self.overloaded:
            return "send_overload"
        if verdict == Verdict.NORMAL and probability >= self._second_opinion_from:  # NaN compares False
            return "send_second_opinion"
        return None

    def decide(
        self,
        verdict: int,
        reasons: tuple[str, ...],
        slack_ms: float,
        frame_w: int,
        frame_h: int,
        backlog: int,
        now_s: float | None = None,
        probability: float = math.nan,
    ) -> Decision:
        """slack_ms: time left until the part's deadline; backlog: requests sent and not yet answered;
        now_s: monotonic seconds (for the probes); probability: the edge's P(defect) (second opinions)."""
        now_s = time.monotonic() if now_s is None else now_s
        with self._lock:
            why = self._why(verdict, reasons, probability)
            if why is None:
                return self._count(Decision(False, "not_candidate", None, slack_ms, None))
            second_opinion = why == "send_second_opinion"
            # A second opinion never takes the link's last places from the parts the edge could not decide.
            if backlog >= (max(1, self.s.max_backlog // 2) if second_opinion else self.s.max_backlog):
                return self._count(Decision(False, "outbox_backlog", None, slack_ms, None))
            too_slow = self.link.measured >= 4 and self.link.bandwidth_mbps < self.s.min_bandwidth_mbps
            for quality in self.s.quality_ladder:
                plan = self.plan(frame_w, frame_h, quality)
                estimate = self.link.predict_ms(plan.estimated_bytes)
                if estimate <= slack_ms and not too_slow:
                    return self._count(Decision(True, why, plan, slack_ms, estimate))
            # Nothing fits. Now and then one is sent anyway (smallest image), so that a link that got better is
            # measured again: the part's local verdict stands whatever happens to it.
            idle = now_s - max(self._last_answer_s, self._last_probe_s) > self.s.probe_interval_s
            if idle and backlog == 0 and not second_opinion:
                self._last_probe_s = now_s
                return self._count(Decision(True, "probe", plan, slack_ms, estimate))
            no_slack = self.link.base_ms + self.s.margin_ms > slack_ms and not too_slow
            reason = "no_slack" if no_slack else "slow_link"
            return self._count(Decision(False, reason, plan, slack_ms, estimate))

    def _count(self, decision: Decision) -> Decision:
        self.counts[decision.reason] += 1
        return decision

    def link_figures(self) -> dict[str, float | None]:
        return {
            "bandwidth_mbps": round(self.link.bandwidth_mbps, 3),
            "rtt_ms": round(self.link.base_ms, 1),
            "edge_load": round(self.edge_load, 3),
        }
