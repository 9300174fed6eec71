"""Configuration that used to weaken authentication or TLS without a word: an empty or padded bearer token,
one token for two tenants, two ``authorization`` values, an empty TLS path, and TLS files gRPC cannot use (which
were reported as "the port is in use")."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest
from agentrt.v1 import memory_pb2, memory_pb2_grpc
from pydantic import SecretStr, ValidationError

from core.errors import UnauthenticatedError
from runtime.config import Settings, TokenSettings, describe_validation_error
from runtime.server import AgentrtServer, Authenticator, StartupError
from tests.conftest import make_settings
from tests.spine.tlsutil import make_pki


@pytest.mark.parametrize(
    ("token", "why"),
    [
        ("", "must not be empty"),  # token: "${AGENTRT_TOKEN}" with the variable unset
        ("   ", "must not be empty"),
        ("abc\n", "leading or trailing whitespace"),  # read from a file with its newline
        (" abc", "leading or trailing whitespace"),
    ],
)
def test_an_empty_or_padded_token_is_a_config_error_naming_the_key_not_the_value(token: str, why: str) -> None:
    with pytest.raises(ValidationError) as err:
        Settings(auth={"tokens": [{"token": token, "tenant": "acme"}]})
    line = describe_validation_error(err.value)
    assert "auth.tokens.0.token" in line and why in line
    if token.strip():
        assert token.strip() not in line and token.strip() not in str(err.value)


def test_the_same_token_for_two_tenants_is_a_config_error() -> None:
    tokens = [{"token": "shared-secret", "tenant": "tenant-a"}, {"token": "shared-secret", "tenant": "tenant-b"}]
    with pytest.raises(ValidationError) as err:
        Settings(auth={"tokens": tokens})
    line = describe_validation_error(err.value)
    assert "auth.tokens[0] and auth.tokens[1]" in line
    assert "shared-secret" not in line and "shared-secret" not in str(err.value)


def test_a_bearer_header_of_spaces_matches_no_token_even_an_empty_one() -> None:
    """The presented token is stripped before the emptiness check: ``Bearer  `` matched a configured ""."""
    settings = Settings()
    settings.auth.tokens = [TokenSettings.model_construct(token=SecretStr(""), tenant="acme", namespaces=["*"],
                                                          read_only=False)]
    auth = Authenticator(settings)
    for header in ("Bearer  ", "Bearer ", "Bearer"):
        with pytest.raises(UnauthenticatedError, match="Bearer <token>"):
            auth.authenticate({"authorization": header})


def test_two_authorization_values_are_unauthenticated_whichever_comes_last(make_server: Any) -> None:
    srv = make_server(embedding_model="hashing", tokens=[{"token": "good-a", "tenant": "ta"},
                                                        {"token": "good-b", "tenant": "tb"}])
    stub = memory_pb2_grpc.MemoryServiceStub(srv.channel)
    req = memory_pb2.SearchRequest(namespace="ns", query="hello")
    assert stub.Search(req, metadata=[("authorization", "Bearer good-a")], timeout=30) is not None
    for pair in (("Bearer nope", "Bearer good-a"), ("Bearer good-a", "Bearer nope"),
                 ("Bearer good-b", "Bearer good-a")):
        with pytest.raises(grpc.RpcError) as err:
            stub.Search(req, metadata=[("authorization", value) for value in pair], timeout=30)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, pair
        assert "more than one" in (err.value.details() or "")


def test_an_empty_tls_path_is_unset_and_half_configured_tls_refuses_to_start(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    # cert_file: "" with a key used to serve plaintext, as if TLS were not configured at all.
    for tls in ({"cert_file": "", "key_file": str(pki["server_key"])},
                {"cert_file": str(pki["server_cert"]), "key_file": ""}):
        with pytest.raises(StartupError, match="needs both cert_file and key_file"):
            AgentrtServer(make_settings(data_dir=tmp_path, embedding_model="hashing", server={"tls": tls}))
    with pytest.raises(StartupError, match="client_ca_file"):
        AgentrtServer(make_settings(data_dir=tmp_path, embedding_model="hashing", server={"tls": {
            "cert_file": "", "key_file": "", "client_ca_file": str(pki["ca"])}}))
    plain = make_settings(data_dir=tmp_path, embedding_model="hashing", server={"tls": {"cert_file": "",
                                                                                      "key_file": ""}})
    assert plain.server.tls.cert_file is None and not plain.server.tls.enabled


def _tls_cases(tmp_path: Path) -> dict[str, tuple[dict[str, str], str]]:
    pki = make_pki(tmp_path)
    (tmp_path / "other").mkdir()
    other = make_pki(tmp_path / "other")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    cert, key = str(pki["server_cert"]), str(pki["server_key"])
    return {
        "garbage cert": ({"cert_file": str(garbage), "key_file": key}, r"server\.tls\.cert_file .* no PEM certificate"),
        "garbage key": ({"cert_file": cert, "key_file": str(garbage)}, r"server\.tls\.key_file .* no usable PEM"),
        "key of another cert": ({"cert_file": cert, "key_file": str(other["server_key"])},
                                r"server\.tls\.key_file .* not the private key of the certificate"),
        "cert and key swapped": ({"cert_file": key, "key_file": cert}, r"server\.tls\.cert_file .* no PEM"),
        "garbage client CA": ({"cert_file": cert, "key_file": key, "client_ca_file": str(garbage)},
                              r"server\.tls\.client_ca_file .* no PEM certificate"),
    }


def test_unusable_tls_files_name_the_setting_before_anything_is_bound(tmp_path: Path) -> None:
    for name, (tls, expected) in _tls_cases(tmp_path).items():
        server = AgentrtServer(make_settings(data_dir=tmp_path / "data", embedding_model="hashing",
                                             server={"tls": tls}))

        async def start(server: AgentrtServer = server) -> None:
            try:
                await server.start()
            finally:
                await server.stop(0)

        with pytest.raises(StartupError, match=expected) as err:
            asyncio.run(start())
        assert "port is in use" not in str(err.value), name
        assert server.port == 0, name  # refused before binding


def test_a_server_with_unusable_tls_files_fails_to_start_in_one_clear_line(make_server: Any,
                                                                           tmp_path: Path) -> None:
    tls, expected = _tls_cases(tmp_path)["key of another cert"]
    with pytest.raises(StartupError, match=expected):
        make_server(embedding_model="hashing", server={"tls": tls})
