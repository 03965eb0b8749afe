"""Which part images leave the cell, and what becomes of the re-inspections offloaded to the cloud.

- Frames: the last `frame_buffer` captured frames by part id, decoded only when one is sent.
- Samples (retraining): JPEGs of the chosen verdicts, within a byte budget per sliding hour and at most one per
  min_interval_s (sampler.ByteBudget); what does not fit is counted (`samples_over_budget`).
- Offload: a REINSPECT part's JPEG goes to verify/request while at least min_remaining_ms of its slack is left,
  and expires unsent at its deadline; otherwise the part gets a `not_sent` verify record.
- The cloud's answers: one before the deadline is used (a CloudVerdict); a later one is only measured (`late`);
  none by the deadline + late_grace_s is `no_response` (offload.OffloadTracker). Each offloaded part gets one
  `verify` record.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import cv2

from qc_cell.bridge.inputs import Clock, PartImage, PartVerdict
from qc_cell.bridge.offload import OffloadTracker
from qc_cell.bridge.outbox import PutResult
from qc_cell.bridge.outputs import CloudVerdict
from qc_cell.bridge.sampler import ByteBudget, encode_jpeg
from qc_cell.bridge.session import Log
from qc_cell.bridge.settings import OffloadSettings, SampleSettings
from qc_contract import records
from qc_contract.inbound import InboundError, parse
from qc_contract.vocabulary import VERDICT_NAMES, Verdict, name_of

REINSPECT = Verdict.REINSPECT
ENVELOPE_BYTES = 120  # what the envelope adds to a sample's body, for the budget check before storing it


class Send(Protocol):  # Bridge.send
    def __call__(
        self, stream: str, body: Mapping[str, Any], *, retain: bool = False, expires_ns: int = 0
    ) -> PutResult: ...


class PartImages:
    def __init__(
        self,
        sample: SampleSettings,
        offload: OffloadSettings,
        frame_buffer: int,
        *,
        send: Send,
        epoch: str,
        cloud_verdict: Callable[[CloudVerdict], None],
        clock: Clock,
        log: Log,
    ) -> None:
        self.sample_settings = sample
        self.offload_settings = offload
        self.frame_buffer = frame_buffer
        self._send = send
        self._epoch = epoch  # of the outbox: a verify request's id is the id of its record
        self._emit_verdict = cloud_verdict
        self._clock = clock
        self._log = log
        self.counts: Counter[str] = Counter()  # image_missing, image_errors, samples_sent, samples_over_budget
        self.budget = ByteBudget(sample.bytes_per_hour, sample.min_interval_s)
        self.offload = OffloadTracker(offload.slack_ms, offload.min_remaining_ms, offload.late_grace_s)
        self._frames: OrderedDict[str, PartImage] = OrderedDict()

    def on_frame(self, frame: PartImage) -> None:
        if frame.captured:
            self._frames[frame.part_id] = frame
            while len(self._frames) > self.frame_buffer:
                self._frames.popitem(last=False)

    def on_part(self, part: PartVerdict) -> None:
        """A verdict decided while the link runs (a recovered one has no frame and no deadline left)."""
        frame = self._frames.pop(part.part_id, None)
        if self.offload_settings.enabled and part.verdict == REINSPECT:
            self._offload(part, frame)
        sample = self.sample_settings
        if sample.enabled and name_of(VERDICT_NAMES, part.verdict) in sample.verdicts:
            self._sample(part, frame)

    # -- outbound --------------------------------------------------------------------------------------

    def _jpeg(self, frame: PartImage | None, quality: int, max_side: int) -> tuple[str, int, int] | None:
        if frame is None:
            self.counts["image_missing"] += 1
            return None
        try:
            return encode_jpeg(frame.decode(), quality, max_side)
        except (ValueError, cv2.error) as exc:
            self.counts["image_errors"] += 1
            self._log("warn", f"cannot encode the image of {frame.part_id}: {exc}")
            return None

    @staticmethod
    def _body(part: PartVerdict, jpeg: tuple[str, int, int], **extra: Any) -> dict[str, Any]:
        data, width, height = jpeg
        return records.image_record(
            part_id=part.part_id,
            verdict=part.verdict,
            defect_probability=part.defect_probability,
            reasons=part.reasons,
            model_version=part.model_version,
            capture_ns=part.capture_ns,
            width=width,
            height=height,
            jpeg_b64=data,
            **extra,
        )

    def _sample(self, part: PartVerdict, frame: PartImage | None) -> None:
        now = self._clock.monotonic_ns()
        if not self.budget.allows(0, now):  # check before spending CPU on the JPEG
            self.counts["samples_over_budget"] += 1
            return
        jpeg = self._jpeg(frame, self.sample_settings.jpeg_quality, self.sample_settings.max_side)
        if jpeg is None:
            return
        body = self._body(part, jpeg)
        if not self.budget.allows(len(records.encode(body)) + ENVELOPE_BYTES, now):
            self.counts["samples_over_budget"] += 1
            return
        result = self._send("sample", body)
        if result.accepted:
            self.budget.spend(len(result.entry.payload), now)
            self.counts["samples_sent"] += 1

    def _offload(self, part: PartVerdict, frame: PartImage | None) -> None:
        jpeg = None
        if self.offload.worth_sending(part.capture_ns, self._clock.wall_ns()):
            jpeg = self._jpeg(frame, self.offload_settings.jpeg_quality, self.offload_settings.max_side)
        result = None
        if jpeg is not None:
            deadline = self.offload.deadline(part.capture_ns)
            result = self._send("verify_request", self._body(part, jpeg, deadline_ns=deadline), expires_ns=deadline)
        if result is not None and result.accepted:
            request_id = records.record_id(self._epoch, "verify_request", result.entry.seq)
            self.offload.sent(part.part_id, request_id, part.verdict, part.capture_ns, self._clock.monotonic_ns())
            return
        self._result(part.part_id, "", part.verdict, None, "not_sent", None)

    def _result(
        self, part_id: str, request_id: str, local: int, cloud: str | None, outcome: str, rtt_ms: float | None
    ) -> None:
        record = records.verify_result(
            part_id=part_id,
            request_id=request_id,
            local_verdict=local,
            cloud_verdict=cloud,
            outcome=outcome,
            rtt_ms=rtt_ms,
        )
        self._send("verify", record)

    # -- the cloud's answers ---------------------------------------------------------------------------

    def on_verify_response(self, payload: bytes) -> None:
        """Raises InboundError for a payload that is not a valid response to a pending request."""
        data = parse(payload, "verify_response", self.offload_settings.max_response_bytes)
        out = self.offload.response(
            data["request_id"], data["part_id"], self._clock.wall_ns(), self._clock.monotonic_ns()
        )
        pending = out.pending
        if pending is None:
            raise InboundError("unknown_request", f"request {data['request_id']!r} not pending")
        if out.outcome == "used":
            probability = data.get("defect_probability")
            self._emit_verdict(
                CloudVerdict(
                    part_id=pending.part_id,
                    capture_ns=pending.capture_ns,
                    verdict=int(Verdict[data["verdict"]]),
                    defect_probability=float("nan") if probability is None else float(probability),
                    model_version=str(data.get("model_version", "")),
                )
            )
        self._result(
            pending.part_id, pending.request_id, pending.local_verdict, data["verdict"], out.outcome, out.rtt_ms
        )

    def expire(self) -> None:
        """Offloaded parts without any answer by their deadline + late_grace_s."""
        for pending in self.offload.expire(self._clock.wall_ns()):
            self._result(pending.part_id, pending.request_id, pending.local_verdict, None, "no_response", None)

    def health_values(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        if self.offload_settings.enabled:
            values.update({f"offload_{k}": v for k, v in sorted(self.offload.counts.items())})
            values.update(self.offload.rtt_stats())
        if self.sample_settings.enabled:
            values["sample_bytes_last_hour"] = self.budget.used(self._clock.monotonic_ns())
        return values
