"""Declarative base with a naming convention, so Alembic names constraints the same way twice."""

from __future__ import annotations

from enum import StrEnum

from sqlalchemy import MetaData
from sqlalchemy.orm import DeclarativeBase


def sql_in_list(column: str, values: tuple[StrEnum, ...]) -> str:
    """``column IN ('a', 'b')`` for a set of enum values, for constraints and raw statements."""
    return f"{column} IN ({', '.join(repr(v.value) for v in values)})"


NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
