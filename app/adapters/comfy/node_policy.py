"""The deployment's node policy, checked on every workflow at submit (pure).

Refused: a class in `node_denylist` (by default `app.core.node_policy.DENIED_BY_DEFAULT`),
an API node unless `allow_api_nodes`, and with `node_allowlist_only` every class not in
`node_allowlist`. `node_allowlist` always wins over the deny-list: it is how an operator
allows a node (docs/security.md, "Node policy").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from app.adapters.comfy.catalog import NodeCatalog
from app.core.config import Settings
from app.core.errors import InvalidWorkflow
from app.core.node_policy import DENIED_BY_DEFAULT

__all__ = ["NodePolicy", "check_nodes"]


@dataclass(frozen=True, slots=True)
class NodePolicy:
    """Which node classes a workflow may use on this deployment."""

    denied: frozenset[str] = frozenset(DENIED_BY_DEFAULT)
    allowed: frozenset[str] = frozenset()
    allowlist_only: bool = False
    allow_api_nodes: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> NodePolicy:
        return cls(
            denied=frozenset(settings.node_denylist),
            allowed=frozenset(settings.node_allowlist),
            allowlist_only=settings.node_allowlist_only,
            allow_api_nodes=settings.allow_api_nodes,
        )

    def refusal(self, class_type: str, catalog: NodeCatalog | None) -> str | None:
        """Why `class_type` is refused here, or None if it is allowed."""
        if class_type in self.allowed:
            return None
        if self.allowlist_only:
            return "this deployment allows only the node types its operator listed"
        if class_type in self.denied:
            return DENIED_BY_DEFAULT.get(class_type, "this deployment's operator refuses it")
        spec = catalog.get(class_type) if catalog is not None else None
        if spec is not None and spec.api_node and not self.allow_api_nodes:
            return "it calls a paid third-party service with this server's account"
        return None


def check_nodes(graph: Mapping[str, Any], policy: NodePolicy, catalog: NodeCatalog | None) -> None:
    """Raise `InvalidWorkflow` naming every node whose class the policy refuses."""
    refused: list[str] = []
    for node_id, node in graph.items():
        class_type = node.get("class_type") if isinstance(node, Mapping) else None
        if not isinstance(class_type, str):
            continue
        reason = policy.refusal(class_type, catalog)
        if reason:
            refused.append(f"node {node_id} ({class_type}) is not allowed: {reason}")
    if refused:
        raise InvalidWorkflow(
            "; ".join(refused[:8]) + (f"; and {len(refused) - 8} more" if len(refused) > 8 else "")
        )
