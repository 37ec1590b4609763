"""pytest fixtures for the local Hub (:mod:`tests.hub_server`). Use them from a test module with

    pytest_plugins = ["tests.hub_fixtures"]

in the test module (or once for the whole suite in the root ``tests/conftest.py``). Do not also import this
module by name before pytest does, or its asserts are not rewritten.

Clients read ``HF_ENDPOINT`` when they are imported, so tests drive ``huggingface_hub``, ``transformers`` and
``datasets`` against the local Hub in a subprocess (``tests.hub_server.run_client``) with ``env=hub_env``: the
local endpoint, a token the server accepts, ``HF_HUB_DISABLE_XET=1`` and an empty ``HF_HOME`` per test.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from .hub_server import LocalHub

__all__ = ["local_hub", "hub_env"]


@pytest.fixture(scope="session")
def local_hub(tmp_path_factory) -> Iterator[LocalHub]:
    """A Hub-compatible server on 127.0.0.1 (free port) for the whole session; repos live in a temp folder."""
    hub = LocalHub(tmp_path_factory.mktemp("local-hub")).start()
    try:
        yield hub
    finally:
        hub.stop()


@pytest.fixture
def hub_env(local_hub: LocalHub, tmp_path: Path) -> dict[str, str]:
    """``os.environ`` plus the client settings for ``local_hub``, with an EMPTY cache (``HF_HOME`` in tmp_path)."""
    return {**os.environ, **local_hub.client_env(tmp_path / "hf-home")}
