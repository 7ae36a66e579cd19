"""How the rotation jobs batch their work: rows per transaction and checkpoint, full passes per run."""

from __future__ import annotations

CHUNK = 200
"""Rows per transaction and checkpoint."""
PASSES = 3
"""Full passes at most per run: a pass after the first picks up rows written behind the cursor meanwhile (by a
process that had not heard of the new version yet); a pass that changes nothing ends the run."""
