"""Open the portal store named in the configuration.

``portal.store`` is either a PostgreSQL URL (``postgresql://user:pass@host/db``, for several
portal or gateway nodes sharing one store) or a file path for SQLite (the default,
``<paths.var>/portal.db``). Driver errors surface as ``StoreError``, whose message names the
store and the failure, never content.
"""

from __future__ import annotations

from pathlib import Path

from portal.model import PortalStore, StoreError

PG_SCHEMES = ("postgresql://", "postgres://")


def is_postgres_url(url_or_path: str | Path) -> bool:
    return isinstance(url_or_path, str) and url_or_path.startswith(PG_SCHEMES)


def open_store(url_or_path: str | Path) -> PortalStore:
    """``postgresql://...`` (or ``postgres://...``): ``PostgresStore``; anything else is the
    path of a SQLite file (created with mode 0600 if missing), also accepted as
    ``sqlite:///path``."""
    if is_postgres_url(url_or_path):
        try:
            from portal.store_pg import PostgresStore
        except ImportError as exc:  # psycopg missing: say what to install
            raise StoreError("portal store: PostgreSQL needs psycopg "
                             "(pip install 'psycopg[binary]' psycopg-pool)") from exc
        return PostgresStore(str(url_or_path))
    if isinstance(url_or_path, str) and url_or_path.startswith("sqlite:///"):
        # SQLAlchemy's spelling: sqlite:///relative.db, sqlite:////absolute/path.db
        url_or_path = url_or_path[len("sqlite:///"):]
    from portal.store_sqlite import SqliteStore

    return SqliteStore(Path(url_or_path))
