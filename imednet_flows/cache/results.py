"""What a sync did, as typed results: returned by the flow, shown in its artifact and the
CLI, stored in the cache's run log. Defined once, here, with what "changed" means."""

from __future__ import annotations

from pydantic import BaseModel, Field


class CollectionResult(BaseModel):
    """One collection of one study in one run."""

    collection: str
    fetched: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    #: Rows whose ``deleted`` flag turned true (transitions only).
    soft_deleted: int = 0
    hard_deleted: int = 0
    #: Rows the hard-delete search found missing from the cache and fetched.
    recovered: int = 0
    requests: int = 0
    watermark_before: str | None = None
    watermark_after: str | None = None
    #: Why this collection was not synced this run (e.g. the API refused it); None if it was.
    skipped: str | None = None

    @property
    def changed(self) -> bool:
        return bool(self.inserted or self.updated or self.hard_deleted)


class StudyResult(BaseModel):
    study_key: str
    collections: dict[str, CollectionResult] = Field(default_factory=dict)
    requests: int = 0
    seconds: float = 0.0
    full_refresh: bool = False
    #: The study's data version after this run (what its snapshot is compared with).
    data_version: int = 0

    @property
    def changed(self) -> bool:
        return any(c.changed for c in self.collections.values())

    @property
    def changed_collections(self) -> list[str]:
        return [name for name, c in self.collections.items() if c.changed]

    @property
    def skipped_collections(self) -> dict[str, str]:
        return {name: c.skipped for name, c in self.collections.items() if c.skipped}

    def collection(self, name: str) -> CollectionResult:
        if name not in self.collections:
            self.collections[name] = CollectionResult(collection=name)
        return self.collections[name]
