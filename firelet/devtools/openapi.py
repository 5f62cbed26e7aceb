"""Builds ``firelet/api/openapi.json``: Firecracker's operations, with firelet's actual bodies.

The operations, their ids, path parameters and success answers come from
Firecracker's ``firecracker.yaml`` (Swagger 2.0); every request body schema is
generated from the msgspec struct firelet decodes it with, so the document
states exactly what the server accepts (ranges, enums, unknown fields refused).
Answer-only schemas (statistics, status, instance info) are Firecracker's.
Refusals are documented as firelet sends them: 400 with a ``fault_message``,
413 when the MMDS store would overflow, 500 when the VMM does not answer.

Run ``python -m firelet.devtools.openapi [firecracker.yaml]`` after changing an
endpoint or a body; ``tests/unit/test_api_openapi.py`` checks the result
against Firecracker's document and the live server.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import msgspec

from firelet import __version__
from firelet.config import model, requests

REPO = Path(__file__).resolve().parents[2]
#: Where Firecracker's reference documents sit: ``../shared`` beside the repository (CI, a checkout in
#: /work/main), or two levels up for a git worktree kept in a subdirectory (/work/wt/NAME).
SPECS_CANDIDATES = (REPO.parent / "shared/specs/firecracker", REPO.parent.parent / "shared/specs/firecracker")
YAML_IN_SPECS = "src/firecracker/swagger/firecracker.yaml"


def firecracker_yaml() -> Path | None:
    """Firecracker's OpenAPI document, if the reference documents are checked out beside the repo."""
    for specs in SPECS_CANDIDATES:
        if (specs / YAML_IN_SPECS).is_file():
            return specs / YAML_IN_SPECS
    return None


OUT = Path(__file__).resolve().parents[1] / "api" / "openapi.json"

#: Firecracker's schema name -> the struct firelet decodes that body with.
BODIES: dict[str, Any] = {
    "Balloon": model.Balloon, "BalloonUpdate": requests.BalloonUpdate,
    "BalloonStatsUpdate": requests.BalloonStatsUpdate, "BalloonStartCmd": requests.BalloonStartCmd,
    "BootSource": model.BootSource, "CpuConfig": model.CpuConfig, "CpuidLeafModifier": model.CpuidLeafModifier,
    "CpuidRegisterModifier": model.CpuidRegisterModifier, "MsrModifier": model.MsrModifier,
    "ArmRegisterModifier": model.ArmRegisterModifier, "VcpuFeatures": model.VcpuFeatures,
    "Drive": model.Drive, "Pmem": model.Pmem, "EntropyDevice": model.Entropy,
    "InstanceActionInfo": requests.InstanceActionInfo, "Logger": model.Logger,
    "MachineConfiguration": model.MachineConfig, "MemoryBackend": requests.MemoryBackend,
    "Metrics": model.Metrics, "MmdsConfig": model.MmdsConfig, "NetworkInterface": model.NetworkInterface,
    "PartialDrive": requests.PartialDrive, "PartialNetworkInterface": requests.PartialNetworkInterface,
    "PartialPmem": requests.PartialPmem, "RateLimiter": model.RateLimiter,
    "SnapshotCreateParams": requests.SnapshotCreateParams, "NetworkOverride": requests.NetworkOverride,
    "VsockOverride": requests.VsockOverride, "SnapshotLoadParams": requests.SnapshotLoadParams,
    "TokenBucket": model.TokenBucket, "Vm": requests.VmState, "SerialDevice": model.SerialConfig,
    "MemoryHotplugConfig": model.MemoryHotplugConfig, "MemoryHotplugSizeUpdate": requests.MemoryHotplugSizeUpdate,
    "Vsock": model.Vsock,
}
#: Fields firelet adds to Firecracker's schemas (its own features; Firecracker's tools never send them).
EXTENSIONS: dict[str, set[str]] = {"NetworkInterface": {"vhost"}}
#: Sections of ``GET /vm/config`` (:func:`firelet.config.export.full_vm_configuration`) and their schemas.
FULL_VM_SECTIONS: dict[str, str | list[str]] = {
    "balloon": "Balloon", "drives": ["Drive"], "boot-source": "BootSource", "cpu-config": "CpuConfig",
    "logger": "Logger", "machine-config": "MachineConfiguration", "metrics": "Metrics",
    "memory-hotplug": "MemoryHotplugConfig", "mmds-config": "MmdsConfig", "network-interfaces": ["NetworkInterface"],
    "pmem": ["Pmem"], "vsock": "Vsock", "entropy": "EntropyDevice",
}
_ERROR = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
_REFUSED = {"description": "Refused: bad input, a feature firelet lacks, or not allowed in the current state", **_ERROR}
_NO_ANSWER = {"description": "The VMM did not answer in time", **_ERROR}
_TOO_BIG = {"description": "The MMDS data store would exceed its size limit (--mmds-size-limit)", **_ERROR}
_STRUCT_NAMES = {struct.__name__: name for name, struct in BODIES.items()}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _section(ref: str | list[str]) -> dict[str, Any]:
    """A list section (``drives``) is an array, any other a nullable object."""
    if isinstance(ref, list):
        return {"type": "array", "items": _ref(ref[0])}
    return {"nullable": True, "allOf": [_ref(ref)]}


def _oas30(node: Any) -> Any:
    """msgspec's JSON Schema as OpenAPI 3.0: ``anyOf [X, null]`` -> nullable, Firecracker's names in refs."""
    if isinstance(node, list):
        return [_oas30(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _oas30(value) for key, value in node.items() if key != "title"}
    if "$ref" in out:
        out["$ref"] = _ref(_STRUCT_NAMES.get(out["$ref"].rsplit("/", 1)[1], out["$ref"].rsplit("/", 1)[1]))["$ref"]
    choices = out.get("anyOf")
    if isinstance(choices, list) and {"type": "null"} in choices:
        rest = [c for c in choices if c != {"type": "null"}]
        del out["anyOf"]
        inner = rest[0] if len(rest) == 1 else {"anyOf": rest}
        out.update({"nullable": True, "allOf": [inner]} if "$ref" in inner else {**inner, "nullable": True})
    if out.get("required") == []:
        del out["required"]
    if "enum" in out and "type" not in out and all(isinstance(v, str) for v in out["enum"]):
        out["type"] = "string"
    return out


def _swagger_schema(node: Any) -> Any:
    """A Swagger 2.0 schema of firecracker.yaml as OpenAPI 3.0 (refs move to components)."""
    if isinstance(node, list):
        return [_swagger_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {k: _swagger_schema(v) for k, v in node.items() if k not in ("example", "readOnly")}
    if "$ref" in out:
        out = {"$ref": out["$ref"].replace("#/definitions/", "#/components/schemas/")}
    return out


def schemas(fc: dict[str, Any]) -> dict[str, Any]:
    _, components = msgspec.json.schema_components(list(BODIES.values()), ref_template="#/components/schemas/{name}")
    out: dict[str, Any] = {}
    for name, struct in BODIES.items():
        out[name] = _oas30(components[struct.__name__])
        fc_doc = fc["definitions"].get(name, {}).get("description")
        if fc_doc:
            out[name]["description"] = " ".join(str(fc_doc).split())
    for name, schema in fc["definitions"].items():  # answers only: Firecracker's shapes
        if name not in out:
            out[name] = _swagger_schema(schema)
    out["CpuTemplate"] = {"type": "string", "enum": ["C3", "T2", "T2S", "T2CL", "T2A", "V1N1", "None"],
                          "description": "Deprecated; \"None\" is accepted, any template is refused "
                                         "(firelet cannot apply CPU templates yet)."}
    out["MachineConfiguration"]["properties"]["cpu_template"] = _ref("CpuTemplate")
    out["PartialMachineConfiguration"] = {k: v for k, v in out["MachineConfiguration"].items() if k != "required"}
    out["PartialMachineConfiguration"]["description"] = "PATCH /machine-config: any subset of MachineConfiguration."
    out["MmdsContentsObject"] = {"type": "object", "additionalProperties": True,
                                 "description": "The MMDS data store: any JSON object."}
    out["FullVmConfiguration"] = {
        "type": "object", "additionalProperties": False, "required": sorted(FULL_VM_SECTIONS),
        "description": "Every section, as Firecracker reports it: null or [] when absent; logger, metrics and "
                       "cpu-config are always null.",
        "properties": {key: _section(ref) for key, ref in FULL_VM_SECTIONS.items()},
    }
    return dict(sorted(out.items()))


def _operation(method: str, path: str, op: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"operationId": op["operationId"], "summary": " ".join(op.get("summary", "").split())}
    if op.get("description"):
        out["description"] = " ".join(str(op["description"]).split())
    params = [p for p in op.get("parameters", []) if p.get("in") == "path"]
    if params:
        out["parameters"] = [{"name": p["name"], "in": "path", "required": True, "schema": {"type": "string"},
                              "description": p.get("description", "")} for p in params]
    body = next((p for p in op.get("parameters", []) if p.get("in") == "body"), None)
    if body is not None:
        schema = _swagger_schema(body["schema"])
        if (method, path) == ("patch", "/machine-config"):
            schema = _ref("PartialMachineConfiguration")
        out["requestBody"] = {"required": bool(body.get("required")),
                              "content": {"application/json": {"schema": schema}}}
    responses: dict[str, Any] = {}
    for code, answer in op["responses"].items():
        if str(code).startswith("2"):
            entry: dict[str, Any] = {"description": answer.get("description", "OK")}
            if "schema" in answer:
                entry["content"] = {"application/json": {"schema": _swagger_schema(answer["schema"])}}
            responses[str(code)] = entry
    responses["400"] = _REFUSED
    if path == "/mmds" and method in ("put", "patch"):
        responses["413"] = _TOO_BIG
    responses["500"] = _NO_ANSWER
    out["responses"] = responses
    return out


def build(fc: dict[str, Any]) -> dict[str, Any]:
    paths = {path: {method: _operation(method, path, op) for method, op in ops.items()}
             for path, ops in fc["paths"].items()}
    return {
        "openapi": "3.0.3",
        "info": {"title": "firelet API", "version": __version__,
                 "description": f"Firecracker's HTTP API (firecracker.yaml {fc['info']['version']}) over a Unix "
                                "socket, as firelet implements it. Bodies are validated strictly: unknown fields, "
                                "wrong types and out-of-range values are refused with a message naming the field. "
                                "Features firelet lacks yet answer 400 with a fault_message saying so."},
        "servers": [{"url": "http://localhost"}],
        "paths": paths,
        "components": {"schemas": schemas(fc)},
    }


def main(argv: list[str]) -> int:
    import yaml  # developer tooling only: the VMM never imports this module

    source = Path(argv[0]) if argv else firecracker_yaml()
    if source is None:
        print(f"firecracker.yaml not found in {' or '.join(map(str, SPECS_CANDIDATES))}; give its "
              "path", file=sys.stderr)
        return 2
    fc = yaml.safe_load(source.read_text())
    OUT.write_text(json.dumps(build(fc), indent=1) + "\n")
    print(f"wrote {OUT} from {source}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
