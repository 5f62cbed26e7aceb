"""firelet's OpenAPI document: it covers Firecracker's, and the live ``firelet-vmm`` keeps to it.

Property-based: schemathesis drives a real ``firelet-vmm --api-sock`` process
with every operation of the document, over the Unix socket (a requests
adapter speaks HTTP over AF_UNIX). Every answer must be a documented status
with a conforming body, never a 5xx, and every request the document calls
invalid must be refused. A second test compares the operations, schemas and
fields with Firecracker's ``firecracker.yaml`` so drift shows.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
import urllib3
import yaml
from hypothesis import HealthCheck, settings
from schemathesis import checks as st_checks

from firelet.api import routes
from firelet.api.resources import logger_metrics
from firelet.api.routes import Api
from firelet.devtools import openapi as openapi_tool
from firelet.devtools.cache import repo_root

from api_fake_backend import FakeBackend, serve, wait_for_api

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


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[requests.Session, Path]]:
    """A real ``firelet-vmm --api-sock`` process (no VM boots: no request can name a real kernel)."""
    work = tmp_path_factory.mktemp("openapi")
    sock = work / "api.sock"
    env = dict(os.environ)
    env["PYTHONPATH"] = str(repo_root()) + os.pathsep + env.get("PYTHONPATH", "")
    stderr = (work / "stderr").open("wb")  # a file, not a pipe nobody reads: a full pipe would stall the VMM
    proc = subprocess.Popen([sys.executable, "-m", "firelet.cli.vmm", "--api-sock", str(sock), "--id", "schemathesis"],
                            cwd=work, env=env, stderr=stderr)
    try:
        wait_for_api(sock, proc)
        session = requests.Session()
        session.mount("http://", _UdsAdapter(str(sock)))
        yield session, work
        assert proc.poll() is None, "firelet-vmm died under the generated requests"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        stderr.close()


CHECKS = [
    st_checks.not_a_server_error,
    st_checks.status_code_conformance,
    st_checks.content_type_conformance,
    st_checks.response_schema_conformance,
    st_checks.negative_data_rejection,
]
#: Operations that create the file a request names: never run with generated paths in a live process (it may
#: run as root); they run in-process below, with the file writers replaced.
_CREATES_FILES = "^/(logger|metrics)$"


@schema.exclude(path_regex=_CREATES_FILES).parametrize()
@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
def test_live_vmm_conforms_to_its_openapi_document(case: schemathesis.Case,
                                                   live: tuple[requests.Session, Path]) -> None:
    session, _ = live
    response = case.call(base_url="http://localhost", session=session, timeout=10)
    case.validate_response(response, checks=CHECKS)


class _NoFile:
    """Stands in for the log handler and the metrics writer: generated paths never become files."""

    def __init__(self, path: str, *args: Any, **kwargs: Any) -> None:
        self.path = path

    def flush(self) -> bool:
        return True

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def in_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[requests.Session]:
    sock = tmp_path_factory.mktemp("openapi-files") / "api.sock"
    api = Api(instance_id="schemathesis", backend_factory=FakeBackend)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(logger_metrics, "MetricsWriter", _NoFile)
        mp.setattr("firelet.logs.FirecrackerLogHandler", _NoFile)
        mp.setattr("firelet.logs.install", lambda handler: None)
        with serve(api, sock):
            session = requests.Session()
            session.mount("http://", _UdsAdapter(str(sock)))
            yield session


@schema.include(path_regex=_CREATES_FILES).parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_logger_and_metrics_conform_in_process(case: schemathesis.Case, in_process: requests.Session) -> None:
    response = case.call(base_url="http://localhost", session=in_process, timeout=10)
    case.validate_response(response, checks=CHECKS)


def test_document_covers_every_route() -> None:
    doc = json.loads(SPEC.read_text())
    documented = {
        (method.upper(), path.replace("{drive_id}", "{id}").replace("{iface_id}", "{id}"))
        for path, ops in doc["paths"].items() for method in ops
    }
    assert documented == set(routes.route_table().routes)


def _fields(schema: dict[str, Any]) -> set[str]:
    return set(schema.get("properties", {}))


def test_document_matches_firecrackers_operations_and_fields() -> None:
    """Every operation, schema and field of Firecracker's firecracker.yaml is in firelet's document."""
    source = openapi_tool.firecracker_yaml()
    if source is None:
        pytest.skip(f"Firecracker's reference documents are not checked out at "
                    f"{' or '.join(map(str, openapi_tool.SPECS_CANDIDATES))}")
    fc = yaml.safe_load(source.read_text())
    ours = json.loads(SPEC.read_text())
    fc_ops = {(m.upper(), p) for p, ops in fc["paths"].items() for m in ops}
    our_ops = {(m.upper(), p) for p, ops in ours["paths"].items() for m in ops}
    assert fc_ops - our_ops == set(), "operations of Firecracker's document missing from firelet's"
    assert our_ops - fc_ops == set(), "operations firelet documents that Firecracker does not have"
    schemas = ours["components"]["schemas"]
    assert set(fc["definitions"]) - set(schemas) == set(), "schemas missing from firelet's document"
    for name, definition in fc["definitions"].items():
        assert _fields(definition) == _fields(schemas[name]) - openapi_tool.EXTENSIONS.get(name, set()), name
        assert set(definition.get("required", [])) <= set(schemas[name].get("required", [])), name
    for path, ops in fc["paths"].items():  # each body and answer uses the schema Firecracker names
        for method, op in ops.items():
            body = next((p for p in op.get("parameters", []) if p.get("in") == "body"), None)
            ours_op = ours["paths"][path][method]
            if body is not None and (method, path) != ("patch", "/machine-config"):
                ref = ours_op["requestBody"]["content"]["application/json"]["schema"]
                assert ref == {"$ref": body["schema"]["$ref"].replace("#/definitions/", "#/components/schemas/")}
            assert {str(c) for c in op["responses"] if str(c).startswith("2")} <= set(ours_op["responses"])


def test_the_committed_document_is_what_the_generator_builds() -> None:
    """openapi.json is generated from firelet's own body structs; a changed struct needs a re-run."""
    source = openapi_tool.firecracker_yaml()
    if source is None:
        pytest.skip("Firecracker's reference documents are not checked out beside the repository")
    built = openapi_tool.build(yaml.safe_load(source.read_text()))
    assert json.loads(json.dumps(built)) == json.loads(SPEC.read_text()), (
        "run: python -m firelet.devtools.openapi")
