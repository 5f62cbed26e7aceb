"""Property-based: schemathesis drives the live server from firelet's OpenAPI document.

Requests go over the real Unix socket (a requests adapter speaks HTTP over
AF_UNIX); the FakeBackend stands behind the API. Every answer must be a
documented status with a conforming body, never a 5xx, and every request the
document calls invalid must be refused.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
import urllib3
from api_fake_backend import FakeBackend, serve
from hypothesis import HealthCheck, settings
from schemathesis import checks as st_checks

from firelet.api import routes
from firelet.api.resources import logger_metrics
from firelet.api.routes import Api

SPEC = Path(routes.__file__).with_name("openapi.json")
schema = schemathesis.openapi.from_path(SPEC)


class _UdsConnection(urllib3.connection.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._uds_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout if isinstance(self.timeout, (int, float)) else 10)
        sock.connect(self._uds_path)
        self.sock = sock


class _UdsPool(urllib3.HTTPConnectionPool):
    def __init__(self, path: str) -> None:
        super().__init__("localhost")
        self._uds_path = path

    def _new_conn(self) -> _UdsConnection:
        return _UdsConnection(self._uds_path, timeout=10)


class _UdsAdapter(requests.adapters.HTTPAdapter):
    def __init__(self, path: str) -> None:
        super().__init__()
        self._pool = _UdsPool(path)

    def get_connection_with_tls_context(self, request: Any, verify: Any, proxies: Any = None, cert: Any = None) -> _UdsPool:
        return self._pool

    def get_connection(self, url: Any, proxies: Any = None) -> _UdsPool:
        return self._pool


class _NoFileMetrics:
    """Generated metrics paths are random strings: never create files from them."""

    def __init__(self, path: str, metrics: Any = None) -> None:
        self.path = path

    def flush(self) -> bool:
        return True

    def close(self) -> None:
        pass


class _NoFileLog:
    def __init__(self, path: str, *args: Any, **kwargs: Any) -> None:
        self.path = path


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[requests.Session]:
    sock = tmp_path_factory.mktemp("openapi") / "api.sock"
    api = Api(instance_id="schemathesis", backend_factory=FakeBackend)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(logger_metrics, "MetricsWriter", _NoFileMetrics)
        mp.setattr("firelet.logs.FirecrackerLogHandler", _NoFileLog)
        mp.setattr("firelet.logs.install", lambda handler: None)
        with serve(api, sock):
            s = requests.Session()
            s.mount("http://", _UdsAdapter(str(sock)))
            yield s


CHECKS = [
    st_checks.not_a_server_error,
    st_checks.status_code_conformance,
    st_checks.content_type_conformance,
    st_checks.response_schema_conformance,
    st_checks.negative_data_rejection,
]


@schema.parametrize()
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_server_conforms_to_its_openapi_document(case: schemathesis.Case, session: requests.Session) -> None:
    response = case.call(base_url="http://localhost", session=session, timeout=10)
    case.validate_response(response, checks=CHECKS)


def test_document_covers_every_route() -> None:
    doc = json.loads(SPEC.read_text())
    documented = {
        (method.upper(), path.replace("{drive_id}", "{id}").replace("{iface_id}", "{id}"))
        for path, ops in doc["paths"].items() for method in ops
    }
    assert documented == set(routes.route_table().routes)
