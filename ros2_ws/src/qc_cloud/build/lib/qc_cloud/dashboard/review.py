"""The re-inspection station's rules, without I/O: answers, defect types and the agreement figures.

Bands follow the cell's verdict: NORMAL = passed, REINSPECT = the uncertain band (0.5 <= P < 0.8 by default),
DEFECTIVE = rejected. An operator's answer is good / defective / unsure; unsure answers count nowhere.
- agreement (passed): share of labelled passed parts the operators call good; (rejected): share called defective.
- false-reject estimate: share of labelled rejected parts called good.
- escape estimate: share of labelled passed parts (the cell's random samples) called defective.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

ANSWERS = ("good", "defective", "unsure")
KEYS = {"g": "good", "d": "defective", "u": "unsure"}  # keyboard shortcuts on the review screen
BANDS = {"NORMAL": "passed", "REINSPECT": "re-inspect", "DEFECTIVE": "rejected", "NOT_INSPECTED": "not inspected"}
DEFAULT_DEFECT_TYPES = ("crack", "scratch", "contamination", "deformation", "missing_feature", "color")
DEFECT_TYPE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


class LabelError(ValueError):
    pass


def check_answer(answer: str, defect_type: str | None) -> tuple[str, str | None]:
    """A valid (answer, defect_type): a defect type only with `defective`, normalised to a folder-safe name."""
    if answer not in ANSWERS:
        raise LabelError(f"answer {answer!r}: one of {', '.join(ANSWERS)}")
    if answer != "defective":
        return answer, None
    kind = (defect_type or "").strip().lower().replace(" ", "_") or "defect"
    if not DEFECT_TYPE.match(kind) or kind == "good":
        raise LabelError("a defect type is 1-64 lowercase letters, digits, _ or - (and not 'good')")
    return answer, kind


@dataclass
class Tally:
    labelled: int = 0
    good: int = 0
    defective: int = 0
    unsure: int = 0

    def add(self, answer: str) -> None:
        self.labelled += 1
        setattr(self, answer, getattr(self, answer) + 1)

    @property
    def decided(self) -> int:
        return self.good + self.defective

    def share(self, answer: str) -> float | None:
        return getattr(self, answer) / self.decided if self.decided else None


def agreement(rows: Iterable[tuple[str, str, str]]) -> dict:
    """rows: (cell verdict, model version, operator answer) of the current labels."""
    by_band: dict[str, Tally] = defaultdict(Tally)
    by_version: dict[tuple[str, str], Tally] = defaultdict(Tally)
    for verdict, version, answer in rows:
        band = BANDS.get(verdict, verdict)
        by_band[band].add(answer)
        by_version[(version, band)].add(answer)

    def agree(band: str, t: Tally) -> float | None:
        return t.share("good") if band == "passed" else t.share("defective") if band == "rejected" else None

    bands = [
        {
            "band": band,
            "labelled": t.labelled,
            "good": t.good,
            "defective": t.defective,
            "unsure": t.unsure,
            "agreement": agree(band, t),
            "defective_share": t.share("defective"),
        }
        for band, t in sorted(by_band.items())
    ]
    versions = [
        {"model_version": v, "band": band, "labelled": t.labelled, "agreement": agree(band, t)}
        for (v, band), t in sorted(by_version.items())
    ]
    passed, rejected = by_band.get("passed", Tally()), by_band.get("rejected", Tally())
    return {
        "bands": bands,
        "versions": versions,
        "false_reject_estimate": rejected.share("good"),
        "false_reject_n": rejected.decided,
        "escape_estimate": passed.share("defective"),
        "escape_n": passed.decided,
    }
