"""Fixtures of the roll-up's tests: a PostgreSQL cluster for the session, a database per test."""

from __future__ import annotations

from tests.fixtures.postgres import postgres_db, postgres_server

__all__ = ["postgres_db", "postgres_server"]
