"""Fixtures that run a real Kura server on loopback for the interoperability suite.

The binary is $KURA_BIN, or <repo>/target/release/kura. Each test module gets its own server
with an empty archive (`kura`), so that modules storing the same sample files in different
encodings cannot collide; `kura_factory` starts further servers for tests that need a clean
archive of their own.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from dicomweb_client.api import DICOMwebClient

from kura_interop import KuraServer, kura_binary


@pytest.fixture(scope="session")
def kura_bin() -> Path:
    binary = kura_binary()
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        pytest.fail(
            f"Kura binary {binary} not found; build it (cargo build --release) or set KURA_BIN",
            pytrace=False,
        )
    return binary


@pytest.fixture(scope="module")
def kura(kura_bin):
    """A server with an empty archive, shared by the tests of one module."""
    server = KuraServer(kura_bin).start()
    yield server
    server.stop()


@pytest.fixture
def kura_factory(kura_bin):
    """Starts extra servers (each with a clean archive) that live for one test."""
    servers: list[KuraServer] = []

    def start(*extra_args: str) -> KuraServer:
        server = KuraServer(kura_bin, extra_args).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def base_url(kura) -> str:
    return kura.url


@pytest.fixture(scope="module")
def client(kura) -> DICOMwebClient:
    return DICOMwebClient(url=kura.url)
