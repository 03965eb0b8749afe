"""Which proposed decision bands a cell applies by itself (`bands: from_model`) and the gate judges at: only those
that met their targets on the validation split."""

from __future__ import annotations

from qc_contract.model_manifest import SCHEMA_VERSION, Manifest

BASE = {"schema_version": SCHEMA_VERSION, "version": "1.0.0", "sha256": "a" * 64}


def test_only_bands_that_met_their_targets_are_applied():
    met = {"reinspect": 0.2, "defective": 0.6, "feasible": True, "basis": "validation split: targets met"}
    # measured on a 2,000-image run: a 1 % escape target reached only by rejecting 84 % of the good parts
    missed = {"reinspect": 0.046, "defective": 0.049, "feasible": False, "basis": "NOT met (false rejects 83.6 %)"}
    assert Manifest.from_dict(BASE).applicable_bands is None
    applied = Manifest.from_dict({**BASE, "decision_bands": met}).applicable_bands
    assert (applied.reinspect, applied.defective) == (0.2, 0.6)
    kept = Manifest.from_dict({**BASE, "decision_bands": missed})
    assert kept.applicable_bands is None and kept.decision_bands.defective == 0.049  # kept for people to read
