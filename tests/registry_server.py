"""Real OCI registries for the tests: fixtures around :class:`testkit.registry.RegistryServer`
(Debian's docker-registry, distribution 2.8).

Session fixture ``registry_server``: htpasswd (Basic) authentication on
127.0.0.1:``_state["registry_port"]``, storage under ``<base>/registry``, deletes enabled, one
htpasswd user (bcrypt). ``set_password`` takes effect at the next request; ``stop()``/``start()``
(or ``with server.stopped():``) make an unreachable registry for a test; ``put_image`` uploads a
tiny image over plain HTTP, so registry tests need no Docker engine or buildah.

Session fixture ``token_registry_server``: a second one with token (Bearer) authentication and
a small token service (:class:`testkit.registry.TokenIssuer`), for clients of registries like
Docker Hub or GHCR.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from drydock import localservers
from testkit.registry import (
    REGISTRY_BINARY,
    TOKEN_ISSUER,
    TOKEN_SERVICE,
    RegistryServer,
    TokenIssuer,
    new_registry_server,
    registry_config,
)
from tests.conftest import _missing, _register_stop, _state

USERNAME = "drydock"


def _new_server(name: str, port: int) -> RegistryServer:
    if shutil.which(REGISTRY_BINARY) is None:
        _missing(f"docker-registry ({REGISTRY_BINARY}, Debian package docker-registry)")
    workdir: Path = _state["base"] / name
    return new_registry_server(workdir, port, USERNAME)


@pytest.fixture(scope="session")
def registry_server() -> RegistryServer:
    """The registry of the tests, with htpasswd (Basic) authentication."""
    server = _new_server("registry", _state["registry_port"])
    server.config_path.write_text(
        registry_config(server.workdir, server.port, server.htpasswd_path)
    )
    _register_stop(server.stop)
    server.start()
    return server


@pytest.fixture(scope="session")
def token_registry_server() -> RegistryServer:
    """A second registry, with token (Bearer) authentication, as registries behind a token
    service (Docker Hub, GHCR, Harbor) have: a challenge names a realm, the client fetches a
    token for the scope with its username and password, and retries with the token.

    The token service is a small one of the tests' own: it checks the user against the same
    htpasswd file (so ``set_password`` works here too) and signs ES256 JWTs with a key whose
    self-signed certificate the registry trusts. The registry verifies them for real."""
    server = _new_server("token-registry", localservers.free_port())
    issuer = TokenIssuer(server.htpasswd_path, server.workdir / "token-issuer.pem")
    _register_stop(issuer.stop)
    auth = {
        "token": {
            "realm": f"{issuer.url}/token",
            "service": TOKEN_SERVICE,
            "issuer": TOKEN_ISSUER,
            "rootcertbundle": str(issuer.certificate_path),
        }
    }
    server.config_path.write_text(registry_config(server.workdir, server.port, auth=auth))
    _register_stop(server.stop)
    server.start()
    return server
