"""Which part images leave the cell, and what becomes of the re-inspections offloaded to the cloud.

- Frames: the last `frame_buffer` captured frames by part id, decoded only when one is sent.
- Samples (retraining): JPEGs of the chosen verdicts, within a byte budget per sliding hour and at most one per
  min_interval_s (sampler.ByteBudget); what does not fit is counted (`samples_over_budget`).
- Random samples: a share `random_rate` of all parts, whatever their verdict (NORMAL included), is sampled too
  and marked `random_sample`: the labels of these passed parts give the plant its escape estimate. The pick
  is a hash of the part id (sampler.random_pick), so it does not depend on the verdict or the score.
- Heatmaps: the inference node's class-activation map of a part (inspection/heatmap, greyscale on the image),
  when it sent one, goes with that part's sample as a greyscale JPEG of the same size (`heatmap_b64`).
- Offload: the latency-aware policy (offload.OffloadPolicy) decides for each REINSPECT part (and, when the edge
  is overloaded, each part it could not inspect in time) whether its image goes to verify/request, and as what
  image (ROI crop, size, JPEG quality); the request expires unsent at the part's deadline. A part kept local gets
  a `not_sent` verify record with the policy's reason.
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
from qc_cell.bridge.offload import Decision, OffloadPolicy, OffloadTracker
from qc_cell.bridge.outbox import PutResult
from qc_cell.bridge.outputs import CloudVerdict
from qc_cell.bridge.sampler import ByteBudget, encode_heatmap, encode_jpeg, random_pick
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
        self.policy = OffloadPolicy(offload.policy())
        self._frames: OrderedDict[str, PartImage] = OrderedDict()
        self._heatmaps: OrderedDict[str, PartImage] = OrderedDict()  # decode() gives a greyscale (H, W) uint8

    def on_frame(self, frame: PartImage) -> None:
        if frame.captured:
            self._frames[frame.part_id] = frame
            while len(self._frames) > self.frame_buffer:
                self._frames.popitem(last=False)

    def on_heatmap(self, heatmap: PartImage) -> None:
        """A part's class-activation map from the inference node (only kept while samples are on)."""
        if self.sample_settings.enabled and heatmap.captured:
            self._heatmaps[heatmap.part_id] = heatmap
            while len(self._heatmaps) > self.frame_buffer:
                self._heatmaps.popitem(last=False)

    def on_part(self, part: PartVerdict) -> None:
        """A verdict decided while the link runs (a recovered one has no frame and no deadline left)."""
        frame = self._frames.pop(part.part_id, None)
        heatmap = self._heatmaps.pop(part.part_id, None)
        if self.offload_settings.enabled:
            self.policy.observe_part(part.verdict, tuple(part.reasons), part.defect_probability)
            if self.policy.candidate(part.verdict, tuple(part.reasons), part.defect_probability):
                self._offload(part, frame)
        sample = self.sample_settings
        if not sample.enabled:
            return
        picked = random_pick(part.part_id, sample.random_rate)
        if picked or name_of(VERDICT_NAMES, part.verdict) in sample.verdicts:
            self._sample(part, frame, heatmap, picked)

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

    def _heatmap_jpeg(self, heatmap: PartImage | None, width: int, height: int) -> str | None:
        if heatmap is None:
            return None
        try:
            return encode_heatmap(heatmap.decode(), width, height, self.sample_settings.jpeg_quality)
        except (ValueError, cv2.error) as exc:
            self.counts["heatmap_errors"] += 1
            self._log("warn", f"cannot encode the heatmap of {heatmap.part_id}: {exc}")
            return None

    def _sample(self, part: PartVerdict, frame: PartImage | None, heatmap: PartImage | None, picked: bool) -> None:
        now = self._clock.monotonic_ns()
        if not self.budget.allows(0, now):  # check before spending CPU on the JPEG
            self.counts["samples_over_budget"] += 1
            return
        jpeg = self._jpeg(frame, self.sample_settings.jpeg_quality, self.sample_settings.max_side)
        if jpeg is None:
            return
        body = self._body(part, jpeg, heatmap_b64=self._heatmap_jpeg(heatmap, jpeg[1], jpeg[2]), random_sample=picked)
        if not self.budget.allows(len(records.encode(body)) + ENVELOPE_BYTES, now):
            self.counts["samples_over_budget"] += 1
            return
        result = self._send("sample", body)
        if result.accepted:
            self.budget.spend(len(result.entry.payload), now)
            self.counts["samples_sent"] += 1
            self.counts["random_samples_sent"] += picked

    def _offload(self, part: PartVerdict, frame: PartImage | None) -> None:
        now_ns = self._clock.wall_ns()
        deadline = self.offload.deadline(part.capture_ns)
        if not self.offload.worth_sending(part.capture_ns, now_ns):
            self._result(part.part_id, "", part.verdict, None, "not_sent", None, {"reason": "no_slack"})
            return
        image = self._decode(frame)
        if image is None:
            self._result(part.part_id, "", part.verdict, None, "not_sent", None, {"reason": "no_image"})
            return
        height, width = image.shape[:2]
        slack_ms = (deadline - self._clock.wall_ns()) / 1e6
        decision = self.policy.decide(
            part.verdict,
            tuple(part.reasons),
            slack_ms,
            width,
            height,
            self.offload.pending_count,
            probability=part.defect_probability,
        )
        if not decision.send:
            self._result(part.part_id, "", part.verdict, None, "not_sent", None, self._policy_record(decision))
            return
        plan = decision.plan
        if plan.roi is not None:
            x, y, w, h = plan.roi
            image = image[y : y + h, x : x + w]
        try:
            jpeg = encode_jpeg(image, plan.quality, plan.max_side, interpolation=cv2.INTER_LINEAR)  # for the model
        except (ValueError, cv2.error) as exc:
            self.counts["image_errors"] += 1
            self._log("warn", f"cannot encode the image of {part.part_id}: {exc}")
            self._result(part.part_id, "", part.verdict, None, "not_sent", None, {"reason": "no_image"})
            return
        self.policy.observe_jpeg(plan.quality, jpeg[1] * jpeg[2], len(jpeg[0]) * 3 // 4)
        result = self._send("verify_request", self._body(part, jpeg, deadline_ns=deadline), expires_ns=deadline)
        if not result.accepted:
            self._result(part.part_id, "", part.verdict, None, "not_sent", None, {"reason": "outbox_refused"})
            return
        request_id = records.record_id(self._epoch, "verify_request", result.entry.seq)
        wire = len(result.entry.payload)
        self.offload.sent(
            part.part_id,
            request_id,
            part.verdict,
            part.capture_ns,
            self._clock.monotonic_ns(),
            wire,
            self._policy_record(decision, wire),
        )

    def _decode(self, frame: PartImage | None):
        if frame is None:
            self.counts["image_missing"] += 1
            return None
        try:
            return frame.decode()
        except ValueError as exc:
            self.counts["image_errors"] += 1
            self._log("warn", f"cannot decode the image of {frame.part_id}: {exc}")
            return None

    def _policy_record(self, decision: Decision, wire_bytes: int | None = None) -> dict[str, Any]:
        return decision.record(self.policy.link_figures(), wire_bytes)

    def _result(
        self,
        part_id: str,
        request_id: str,
        local: int,
        cloud: str | None,
        outcome: str,
        rtt_ms: float | None,
        policy: dict[str, Any] | None = None,
    ) -> None:
        if outcome == "not_sent":
            self.offload.counts[f"not_sent_{policy['reason'] if policy else 'unknown'}"] += 1
        record = records.verify_result(
            part_id=part_id,
            request_id=request_id,
            local_verdict=local,
            cloud_verdict=cloud,
            outcome=outcome,
            rtt_ms=rtt_ms,
            policy=policy,
        )
        self._send("verify", record)

    # -- the cloud's answers ---------------------------------------------------------------------------

    def on_verify_response(self, payload: bytes) -> None:
        """Raises InboundError for a payload that is not a valid response to a pending request."""
        data = parse(payload, "verify_response", self.offload_settings.max_response_bytes)
        cloud_outcome = data.get("outcome", "scored")
        out = self.offload.response(
            data["request_id"], data["part_id"], self._clock.wall_ns(), self._clock.monotonic_ns(), cloud_outcome
        )
        pending = out.pending
        if pending is None:
            raise InboundError("unknown_request", f"request {data['request_id']!r} not pending")
        if out.rtt_ms is not None and pending.wire_bytes:
            self.policy.observe_answer(pending.wire_bytes, out.rtt_ms)
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
            pending.part_id,
            pending.request_id,
            pending.local_verdict,
            data.get("verdict"),
            out.outcome,
            out.rtt_ms,
            pending.policy,
        )

    def expire(self) -> None:
        """Offloaded parts without any answer by their deadline + late_grace_s."""
        for pending in self.offload.expire(self._clock.wall_ns()):
            self._result(
                pending.part_id, pending.request_id, pending.local_verdict, None, "no_response", None, pending.policy
            )

    def health_values(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        if self.offload_settings.enabled:
            values.update({f"offload_{k}": v for k, v in sorted(self.offload.counts.items())})
            values.update(self.offload.rtt_stats())
            values.update({f"offload_policy_{k}": v for k, v in sorted(self.policy.counts.items())})
            values.update({f"offload_{k}": v for k, v in self.policy.link_figures().items()})
        if self.sample_settings.enabled:
            values["sample_bytes_last_hour"] = self.budget.used(self._clock.monotonic_ns())
        return values
