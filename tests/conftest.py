"""Shared fixtures. Real faces and clips come from ../shared/data beside the checkout (never copied
into the repo); tests that need them skip with a clear reason when that folder is absent."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "avatars").is_dir():
        pytest.skip(f"real test faces not found at {SHARED_DATA} (the ../shared/data folder beside the checkout; "
                    "present on CI and developer machines, absent in a bare clone)")
    return SHARED_DATA


@pytest.fixture
def repo() -> Path:
    return REPO
