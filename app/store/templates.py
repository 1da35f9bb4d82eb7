"""A tenant's workflow templates in the `templates` dict: immutable versions, a `latest`.

Version numbers come from a put-if-absent sequence whose entries are never removed, so a
number names one graph forever (`portrait@3` never changes meaning, even after
`portrait@3` is deleted). A tenant's names are listed by a second sequence, so listing
reads only that tenant's keys (a `keys()` scan on Modal streams the whole dict).

Templates count against no job cap and are kept until deleted; on Modal their dict needs
the durable-record refresh (entries expire after 7 idle days). A job stores its resolved
graph, so deleting a version never breaks a job made from it.
"""

from __future__ import annotations

from app.core.templates import Template
from app.store.backends.base import KV, Backend
from app.store.claims import claim_next, sequence_end
from app.store.keys import (
    TEMPLATES_DICT,
    sequence_key,
    template_key,
    template_latest_key,
    template_name_key,
    template_names_prefix,
    template_versions_prefix,
)


class TemplateStore:
    """Templates of every tenant, always addressed by (tenant id, name, version)."""

    def __init__(self, backend: Backend) -> None:
        self.kv: KV = backend.kv(TEMPLATES_DICT)

    def next_version(self, tenant_id: str, name: str) -> int:
        """A version number no other push of this name has or will get (1, 2, ...)."""
        n = claim_next(self.kv, template_versions_prefix(tenant_id, name), "1")
        assert n is not None  # an unbounded sequence always has a next number
        return n + 1

    def add(self, template: Template, *, make_latest: bool) -> None:
        """Store a new version (numbered by `next_version`); list its name once."""
        key = template_key(template.tenant_id, template.name, template.version)
        if not self.kv.put_if_absent(key, template.model_dump_json()):
            raise ValueError(f"template version {template.id} exists")  # numbers are unique
        if self.kv.put_if_absent(template_name_key(template.tenant_id, template.name), "1"):
            claim_next(self.kv, template_names_prefix(template.tenant_id), template.name)
        if make_latest or self.latest_version(template.tenant_id, template.name) is None:
            self.set_latest(template.tenant_id, template.name, template.version)

    def get(self, tenant_id: str, name: str, version: int | None = None) -> Template | None:
        """One version, or the one `latest` names when `version` is None."""
        if version is None:
            version = self.latest_version(tenant_id, name)
            if version is None:
                return None
        raw = self.kv.get(template_key(tenant_id, name, version))
        return None if raw is None else Template.model_validate_json(raw)

    def latest_version(self, tenant_id: str, name: str) -> int | None:
        raw = self.kv.get(template_latest_key(tenant_id, name))
        return int(raw) if raw else None

    def set_latest(self, tenant_id: str, name: str, version: int) -> None:
        """Point `latest` at `version` (the caller checked it exists)."""
        self.kv.put(template_latest_key(tenant_id, name), str(version))

    def versions(self, tenant_id: str, name: str) -> list[Template]:
        """The name's stored versions, oldest first (deleted ones are skipped)."""
        end = sequence_end(self.kv, template_versions_prefix(tenant_id, name))
        found = (self.get(tenant_id, name, v) for v in range(1, end + 1))
        return [t for t in found if t is not None]

    def names(self, tenant_id: str) -> list[str]:
        """Every name the tenant ever pushed, in push order (some may have no version left)."""
        prefix = template_names_prefix(tenant_id)
        listed = (
            self.kv.get(sequence_key(prefix, n)) for n in range(sequence_end(self.kv, prefix))
        )
        return [name for name in listed if name]

    def delete(self, tenant_id: str, name: str, version: int) -> bool:
        """Remove one version; `latest` moves to the newest one left. False if absent."""
        if self.kv.pop(template_key(tenant_id, name, version)) is None:
            return False
        if self.latest_version(tenant_id, name) == version:
            left = self.versions(tenant_id, name)
            if left:
                self.set_latest(tenant_id, name, left[-1].version)
            else:
                self.kv.pop(template_latest_key(tenant_id, name))
        return True

    def delete_all(self, tenant_id: str, name: str) -> int:
        """Remove every version of a name; how many there were."""
        removed = 0
        for template in self.versions(tenant_id, name):
            removed += self.kv.pop(template_key(tenant_id, name, template.version)) is not None
        self.kv.pop(template_latest_key(tenant_id, name))
        return removed
