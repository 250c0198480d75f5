"""The object store's REST routes (sage-storage-api's shape)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["objects"])
