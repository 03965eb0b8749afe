"""The re-inspection station's rules, without I/O: answers, defect types and the agreement figures.

Bands follow the cell's verdict: NORMAL = passed, REINSPECT = the uncertain band (0.5 <= P < 0.8 by default),
DEFECTIVE = rejected. An operator's answer is good / defective / unsure; unsure answers count nowhere.
- agreement (passed): share of labelled passed parts the operators call good; (rejected): share called defective.
- false-reject estimate: share of labelled rejected parts called good.
- escape estimate: share of labelled random samples of passed parts called defective. Only random samples
  count: the cell picks them by a hash of the part id at `sample_random_rate`, whatever the verdict or score,
  so the NORMAL ones are a uniform sample of all passed parts; passed parts sent for another reason are not.
  With it a 95 % Wilson interval, since escapes are rare and the counts small.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
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


def wilson(hits: int, n: int, z: float = 1.96) -> tuple[float, float] | None:
    """95 % Wilson score interval of a share hits/n (None without data)."""
    if n <= 0:
        return None
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def agreement(rows: Iterable[tuple[str, str, str, bool]]) -> dict:
    """rows: (cell verdict, model version, operator answer, random sample?) of the current labels."""
    by_band: dict[str, Tally] = defaultdict(Tally)
    by_version: dict[tuple[str, str], Tally] = defaultdict(Tally)
    random_passed = Tally()
    for verdict, version, answer, random_sample in rows:
        band = BANDS.get(verdict, verdict)
        by_band[band].add(answer)
        if random_sample and band == "passed":
            random_passed.add(answer)
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
    rejected = by_band.get("rejected", Tally())
    return {
        "bands": bands,
        "versions": versions,
        "false_reject_estimate": rejected.share("good"),
        "false_reject_n": rejected.decided,
        "escape_estimate": random_passed.share("defective"),
        "escape_interval": wilson(random_passed.defective, random_passed.decided),
        "escape_n": random_passed.decided,
    }


def cloud_agreement(rows: Iterable[tuple[str | None, str, str | None, int]]) -> dict:
    """Edge versus cloud (the verifier's verification records, issue 21). rows: (edge verdict, outcome, cloud
    verdict, count). Per band of the edge's verdict: the parts the cloud scored, its verdicts, the answers that
    expired or were refused, and the agreement: for passed the share the cloud also found normal, for rejected
    the share it also found defective; for re-inspect and not inspected (no edge decision to agree with) the
    share the cloud found defective. `overall` is the agreement over the passed and rejected bands together."""
    bands: dict[str, Counter] = defaultdict(Counter)
    for edge, outcome, cloud, n in rows:
        b = bands[BANDS.get(edge or "", edge or "unknown")]
        b[outcome] += n  # scored, expired, refused
        if outcome == "scored":
            b[{"DEFECTIVE": "defective", "NORMAL": "normal"}.get(cloud or "", "other")] += n
    out, agree_n, agree_hits = [], 0, 0
    for band, b in sorted(bands.items()):
        scored = b["scored"]
        hits = b["normal"] if band == "passed" else b["defective"] if band == "rejected" else None
        if hits is not None:
            agree_n, agree_hits = agree_n + scored, agree_hits + hits
        out.append(
            {
                "band": band,
                "scored": scored,
                "cloud_normal": b["normal"],
                "cloud_defective": b["defective"],
                "expired": b["expired"],
                "refused": b["refused"],
                "agreement": hits / scored if hits is not None and scored else None,
                "cloud_defective_share": b["defective"] / scored if scored else None,
            }
        )
    return {"bands": out, "overall": agree_hits / agree_n if agree_n else None, "scored": sum(b["scored"] for b in out)}
