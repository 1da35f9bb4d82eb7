"""Queue/dict backends: `local` (SQLite, the default) and `modal` (production)."""

from __future__ import annotations

from app.core.config import Settings
from app.core.errors import BackendError, QueueItemTooLarge
from app.store.backends.base import KV, Backend, Queue

__all__ = ["KV", "Backend", "BackendError", "Queue", "QueueItemTooLarge", "open_backend"]


def open_backend(settings: Settings) -> Backend:
    """The backend the settings name."""
    if settings.backend == "modal":
        from app.store.backends.modal import ModalBackend

        return ModalBackend(
            settings.modal_app_name,
            settings.modal_environment or None,
            put_timeout_s=settings.queue_put_timeout_s,
        )
    from app.store.backends.sqlite import SqliteBackend

    return SqliteBackend(settings.state_db_path)
