"""``/v1/builds`` and ``/v1/registry``: build runs and their logs, registry events, capability
scores over HTTP."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["builds"])
