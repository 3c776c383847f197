"""Source reports before they become a benchmark: one record per study, whatever the source."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SourceReport:
    """One study of a report source (an IU X-ray XML, or a synthetic study).

    ``findings`` is the text the model learns to generate (as R2Gen: the FINDINGS section);
    ``mesh_major`` are the indexers' MeSH major terms that the renderer draws.
    """

    uid: str
    findings: str | None = None
    impression: str | None = None
    comparison: str | None = None
    indication: str | None = None
    mesh_major: list[str] = field(default_factory=list)
    mesh_automatic: list[str] = field(default_factory=list)
    image_ids: list[str] = field(default_factory=list)
    source_file: str = ""

    def target_text(self, include_impression: bool = False) -> str | None:
        """FINDINGS (R2Gen's target), optionally followed by IMPRESSION; None without FINDINGS."""
        if not self.findings:
            return None
        if include_impression and self.impression:
            return f"{self.findings} {self.impression}"
        return self.findings


@dataclass(frozen=True)
class Skipped:
    """An item left out of a build, and why (listed in benchmark.json)."""

    item: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"item": self.item, "reason": self.reason}
