"""The actuator's durable journal of planned ejections (plain Python, no ROS): what a restarted actuator must still
do, and which verdicts it already handled.

An append-only JSON-lines file: a `plan` line when a part is given a lane (before its output is scheduled), a
`done` line when the part got its terminal reject/event. A plan line is fsynced before the call returns, so neither
a SIGKILL nor a power cut loses a plan; a done line is only flushed to the OS (it is written on the actuation
thread, which must not wait for the disk): it survives a SIGKILL, and one lost to a power cut makes the restarted
actuator report that part MISSED although it was ejected (a false alarm, never a silent loss). On open, the file is
compacted to the plans still open, the parts still waiting for their verdict, plus the ids of the most recent done
parts (to recognise verdicts the decision node replays from its history).

Parts registered at the camera but not decided yet are journalled too (`wait`, closed by `decided`, a plan or a done
line; flushed, not fsynced: they are many, and one lost to a power cut is a part the restarted actuator does not
watch, while its verdict still comes from the decision node's history). A restarted actuator watches them again:
a verdict replayed for one is acted on, and one without a verdict by the watchdog's timeout is failed safe
(NOT_INSPECTED) instead of passing unnoticed.

Steady stamps (Part.steady_ns, the host's monotonic clock) only mean something within one boot: every line carries
the boot id, and a part journalled in another boot is read without its steady stamp.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from qc_cell.reject.records import Part

KEEP_DONE = 5_000  # done part ids kept across a compaction (the decision node replays at most 1000 verdicts)
KEEP_WAITING = 10_000  # parts awaiting a verdict kept (the watchdog tracks as many)


def boot_id() -> str:
    """This boot's id (Linux); "" where there is none: steady stamps are then never trusted across a restart."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


@dataclass(frozen=True)
class PlannedEjection:
    part: Part
    verdict: int
    lane: str


class EjectionJournal:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._open: OrderedDict[str, PlannedEjection] = OrderedDict()
        self._done: OrderedDict[str, None] = OrderedDict()
        self._waiting: OrderedDict[str, Part] = OrderedDict()
        self._boot = boot_id()
        self.corrupt_lines = 0
        if self.path.exists():
            self._load()
        self._compact()
        self._file = self.path.open("a", encoding="utf-8")

    def _load(self) -> None:
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
                part_id = entry["part_id"]
                op = entry["op"]
                if op in ("plan", "wait"):
                    part = Part(**entry["part"])
                    if not self._boot or entry.get("boot") != self._boot:
                        part = replace(part, steady_ns=0)  # another boot's monotonic clock
                    self._waiting.pop(part_id, None)
                    if op == "plan":
                        self._open[part_id] = PlannedEjection(part, int(entry["verdict"]), str(entry["lane"]))
                    else:
                        self._waiting[part_id] = part
                elif op == "decided":
                    self._waiting.pop(part_id, None)
                elif op == "done":
                    self._open.pop(part_id, None)
                    self._waiting.pop(part_id, None)
                    self._remember_done(part_id)
            except (ValueError, KeyError, TypeError):
                self.corrupt_lines += 1  # a line torn by a crash mid-write: the lines before it stand

    def _compact(self) -> None:
        temporary = self.path.with_suffix(self.path.suffix + ".tmp")
        with temporary.open("w", encoding="utf-8") as out:
            for part_id in self._done:
                out.write(json.dumps({"op": "done", "part_id": part_id}) + "\n")
            for planned in self._open.values():
                out.write(self._plan_line(planned))
            for part in list(self._waiting.values())[-KEEP_WAITING:]:
                out.write(self._wait_line(part))
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, self.path)

    def _plan_line(self, planned: PlannedEjection) -> str:
        entry = {"op": "plan", "part_id": planned.part.part_id, "part": asdict(planned.part), "boot": self._boot}
        entry.update(verdict=int(planned.verdict), lane=planned.lane)
        return json.dumps(entry) + "\n"

    def _wait_line(self, part: Part) -> str:
        return json.dumps({"op": "wait", "part_id": part.part_id, "part": asdict(part), "boot": self._boot}) + "\n"

    def _remember_done(self, part_id: str) -> None:
        self._done[part_id] = None
        self._done.move_to_end(part_id)
        if len(self._done) > KEEP_DONE:
            self._done.popitem(last=False)

    def _append(self, line: str, sync: bool = True) -> None:
        self._file.write(line)
        self._file.flush()
        if sync:
            os.fsync(self._file.fileno())

    # ---- what the controller calls

    def planned(self, part: Part, verdict: int, lane: str) -> None:
        """A part given a lane (also again: a divert after a miss, a cloud verdict's new lane)."""
        planned = PlannedEjection(part, verdict, lane)
        if self._open.get(part.part_id) == planned:
            return
        self._open[part.part_id] = planned
        self._waiting.pop(part.part_id, None)
        self._append(self._plan_line(planned))

    def waiting(self, part: Part) -> None:
        """A part registered at the camera whose verdict has not come yet (flushed, not fsynced)."""
        if part.part_id in self._waiting or part.part_id in self._open or part.part_id in self._done:
            return
        self._waiting[part.part_id] = part
        if len(self._waiting) > KEEP_WAITING:
            self._waiting.popitem(last=False)
        self._append(self._wait_line(part), sync=False)

    def decided(self, part_id: str) -> None:
        """The part's verdict came (a plan or done line follows when it is acted on)."""
        if self._waiting.pop(part_id, None) is not None:
            self._append(json.dumps({"op": "decided", "part_id": part_id}) + "\n", sync=False)

    def waiting_parts(self) -> list[Part]:
        """Parts registered but not decided when the journal was last written (oldest first)."""
        return list(self._waiting.values())

    def done(self, part_id: str) -> None:
        """The part got a terminal event (a later plan for it opens it again)."""
        self._waiting.pop(part_id, None)
        if self._open.pop(part_id, None) is None and part_id in self._done:
            return
        self._remember_done(part_id)
        self._append(json.dumps({"op": "done", "part_id": part_id}) + "\n", sync=False)

    def open_plans(self) -> list[PlannedEjection]:
        """Plans without a terminal event: what a restarted actuator must still do (oldest first)."""
        return list(self._open.values())

    def handled(self, part_id: str) -> bool:
        """Whether the part got its terminal event, or is planned (a replayed verdict for it is not new)."""
        return part_id in self._done or part_id in self._open

    def is_done(self, part_id: str) -> bool:
        """Whether the part got its terminal event (journalled, also before a restart)."""
        return part_id in self._done

    def close(self) -> None:
        self._file.close()
