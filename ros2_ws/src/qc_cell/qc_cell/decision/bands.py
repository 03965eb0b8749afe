"""Which decision bands a part is judged with: the decision node's own thresholds, or those the model's package
proposes (manifest decision_bands, fitted on the validation split by `qc_cloud train`), per model version.

`bands: params` (default): reinspect_threshold / defective_threshold, always.
`bands: from_model`: the bands the model that scored the part proposes (model/active carries them). A threshold
set explicitly at run time (ros2 param set reinspect_threshold / defective_threshold: an operator's decision) wins
over them until `bands` is set again. A model that proposes no bands, or bands that are not
0 < reinspect < defective <= 1, is judged with the thresholds parameters (fail-safe: a bad package never widens
the Normal band by itself).
"""

from __future__ import annotations

import math
from collections import OrderedDict

from qc_cell.decision.verdict_rule import Thresholds

BAND_SOURCES = ("params", "from_model")
KEPT_VERSIONS = 8  # model versions whose bands are remembered (results of the previous model still in flight)


class ModelBands:
    """The per-model-version thresholds, and why each applies (ROS-free; the node feeds it model/active)."""

    def __init__(self, source: str, explicit: bool = False) -> None:
        if source not in BAND_SOURCES:
            raise ValueError(f"bands = {source!r} must be one of {list(BAND_SOURCES)}")
        self.source = source
        self.explicit = explicit  # a threshold was set at run time: it wins over the model's bands
        self._proposed: OrderedDict[str, Thresholds | None] = OrderedDict()
        self._refused: dict[str, str] = {}
        self.active_version = ""

    @property
    def use_model(self) -> bool:
        return self.source == "from_model" and not self.explicit

    def on_model(self, version: str, reinspect: float, defective: float) -> str | None:
        """An active model and the bands it proposes (NaN: none). Returns a problem to report, if any."""
        self.active_version = version
        problem = None
        if (math.isnan(reinspect) and math.isnan(defective)) or (reinspect == 0.0 and defective == 0.0):
            # none proposed (NaN), or a ModelInfo from a publisher that does not fill them in (0, 0)
            bands = None
        else:
            try:
                bands = Thresholds(float(reinspect), float(defective))
            except ValueError as exc:
                bands = None
                problem = f"model {version} proposes invalid bands, refused ({exc}); the thresholds parameters apply"
                self._refused[version] = problem
        self._proposed[version] = bands
        self._proposed.move_to_end(version)
        while len(self._proposed) > KEPT_VERSIONS:
            old, _ = self._proposed.popitem(last=False)
            self._refused.pop(old, None)
        return problem

    def model_thresholds(self) -> dict[str, Thresholds]:
        """version -> thresholds for the decision engine (empty: the thresholds parameters for every part)."""
        if not self.use_model:
            return {}
        return {v: t for v, t in self._proposed.items() if t is not None}

    def describe(self, params: Thresholds) -> str:
        """Which bands the active model's parts are judged with, and why (log and diagnostics)."""
        pair = f"{params.reinspect:g}/{params.defective:g}"
        if self.source == "params":
            return f"params {pair} (bands: params)"
        if self.explicit:
            return f"params {pair} (bands: from_model, but a threshold was set explicitly at run time)"
        chosen = self._proposed.get(self.active_version)
        if chosen is not None:
            return f"from_model {chosen.reinspect:g}/{chosen.defective:g} (model {self.active_version})"
        if self.active_version in self._refused:
            return f"params {pair} ({self._refused[self.active_version]})"
        why = f"model {self.active_version} proposes none" if self.active_version else "no active model yet"
        return f"params {pair} (bands: from_model, {why})"
