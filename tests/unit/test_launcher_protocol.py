"""The launcher's JSON-lines protocol and its bookkeeping, without a launcher process."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from firelet.launcher import procinfo, protocol
from firelet.launcher.children import Child, Children, last_line


def test_a_launch_request_decodes_with_its_defaults() -> None:
    request = protocol.decode_request(b'{"op": "launch", "id": "vm-1", "argv": ["--api-sock", "/tmp/a.sock"]}')
    assert request == protocol.Launch(id="vm-1", argv=["--api-sock", "/tmp/a.sock"])
    assert (request.stdout, request.stderr, request.name, request.cwd) == ("inherit", "inherit", "firelet-vmm", None)


@pytest.mark.parametrize(("line", "message"), [
    (b"{not json", "malformed JSON"),
    (b"[1, 2]", 'a request is a JSON object with an "op"'),
    (b'{"op": "explode"}', "unknown op 'explode': expected one of launch, list"),
    (b'{"id": "vm-1"}', "unknown op None"),
    (b'{"op": "launch", "id": "vm_1", "argv": []}', "launch: id 'vm_1': use 1 to 64 letters, digits or '-'"),
    (b'{"op": "launch", "id": "vm-1"}', "launch: Object missing required field `argv`"),
    (b'{"op": "launch", "id": "vm-1", "argv": [1]}', "launch: Expected `str`, got `int` - at `$.argv[0]`"),
    (b'{"op": "launch", "id": "vm-1", "argv": [], "stdout": "out.txt"}', "give an absolute path, 'inherit' or 'null'"),
    (b'{"op": "launch", "id": "vm-1", "argv": [], "name": "a-name-longer-than-15"}', "1 to 15 bytes"),
    (b'{"op": "launch", "id": "vm-1", "argv": [], "colour": "red"}', "launch: Object contains unknown field `colour`"),
    (b'{"op": "stop"}', "stop: give an id or all: true (one of them)"),
    (b'{"op": "stop", "id": "vm-1", "all": true}', "stop: give an id or all: true"),
    (b'{"op": "stop", "all": true, "signal": "SIGNOPE"}', "unknown signal 'SIGNOPE'"),
    (b'{"op": "stop", "all": true, "grace_s": -1}', "grace_s must not be negative"),
    (b'{"op": "wait", "timeout_s": -1}', "timeout_s must not be negative"),
])
def test_bad_requests_are_refused_in_one_line(line: bytes, message: str) -> None:
    with pytest.raises(protocol.ProtocolError) as caught:
        protocol.decode_request(line)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(("name", "number"), [("SIGTERM", 15), ("term", 15), ("KILL", 9), ("9", 9)])
def test_signals_by_name_or_number(name: str, number: int) -> None:
    assert protocol.signal_number(name) == number


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_decode_to_a_request_or_a_one_line_refusal(line: bytes) -> None:
    try:
        request = protocol.decode_request(line)
    except protocol.ProtocolError as exc:
        assert "\n" not in " ".join(str(exc).split())
    else:
        assert type(request).__name__.lower() in protocol.OPS


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.dictionaries(st.sampled_from(["op", "id", "argv", "all", "signal", "grace_s", "timeout_s", "stdout"]),
                       st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20),
                                 st.lists(st.text(max_size=5), max_size=3)), max_size=6))
def test_any_object_decodes_to_a_request_or_a_one_line_refusal(obj: dict[str, object]) -> None:
    try:
        protocol.decode_request(json.dumps(obj).encode())
    except protocol.ProtocolError as exc:
        assert str(exc)


def test_an_error_reply_is_one_line() -> None:
    reply = protocol.error("bad\nthing  happened", "wait")
    assert reply == {"ok": False, "error": "bad thing happened", "op": "wait"}
    assert protocol.encode(reply).count(b"\n") == 1


def test_children_are_reaped_with_their_status_and_forgotten_on_request(tmp_path) -> None:
    children = Children()
    err = tmp_path / "err"
    err.write_text("something\nfirelet-vmm: error: it broke\n\n")
    pid_ok = os.fork()
    if pid_ok == 0:
        os._exit(0)
    pid_bad = os.fork()
    if pid_bad == 0:
        os._exit(3)
    pid_sleep = os.fork()
    if pid_sleep == 0:
        time.sleep(60)
        os._exit(0)
    for vm_id, pid in (("ok", pid_ok), ("bad", pid_bad), ("sleepy", pid_sleep)):
        children.add(Child(vm_id, pid, [], str(err) if vm_id == "bad" else None))
    assert children.signal(children.get("sleepy"), signal.SIGTERM, grace_s=0.0)
    children.kill_overdue(time.monotonic() + 1)  # the grace is over: SIGKILL
    deadline = time.monotonic() + 10
    while children.running() and time.monotonic() < deadline:
        children.reap()
        time.sleep(0.01)
    records = {c.id: c.record() for c in children.all()}
    assert (records["ok"]["state"], records["ok"]["exit_code"]) == ("exited", 0)
    assert (records["bad"]["exit_code"], records["bad"]["error"]) == (3, "firelet-vmm: error: it broke")
    assert records["sleepy"]["state"] == "killed"
    assert records["sleepy"]["exit_signal"] in ("SIGTERM", "SIGKILL")
    assert not children.signal(children.get("ok"), signal.SIGTERM, grace_s=1.0)  # ended: nothing sent
    assert sorted(c.id for c in children.forget_ended()) == ["bad", "ok", "sleepy"]
    assert len(children) == 0


def test_last_line_of_a_missing_file_is_none(tmp_path) -> None:
    assert last_line(str(tmp_path / "nope")) is None


def test_proc_readings_of_this_process_and_of_a_gone_one() -> None:
    cpu_s, uptime_s = procinfo.stat_times(os.getpid())
    rss, uss = procinfo.memory_kib(os.getpid())
    assert cpu_s > 0 and uptime_s > 0
    assert rss >= uss > 0
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    assert procinfo.stat_times(pid) == (0.0, 0.0)
    assert procinfo.memory_kib(pid) == (0, 0)


_JAIL_VALUES = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2, max_value=1 << 33),
                         st.sampled_from(["a/b", "..", "/srv/j", "j", "vm-1", "-", "x" * 65, "a\nb", "/a/../b",
                                          "firelet/../..", "/", ""]),
                         st.text(max_size=12),
                         st.dictionaries(st.sampled_from(["pids.max", "memory.max", "pids", "../x.y", "fsize",
                                                          "no-file", "a.b\n"]),
                                         st.one_of(st.integers(min_value=-1, max_value=9), st.text(max_size=4)),
                                         max_size=3))


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.dictionaries(st.sampled_from(["uid", "gid", "id", "chroot_base_dir", "netns", "new_pid_ns",
                                        "cgroup_version", "cgroups", "parent_cgroup", "resource_limits", "extra"]),
                       _JAIL_VALUES, max_size=8))
@example({"uid": 1, "gid": 2, "chroot_base_dir": "/srv/j", "parent_cgroup": "a/b", "cgroups": {"pids.max": "9"}})
@example({"uid": 1, "gid": 2, "parent_cgroup": "a/../b"})
def test_any_jail_is_refused_in_one_line_or_stays_under_its_base(jail: dict[str, object]) -> None:
    """Hostile jail options: a refusal, or a jail whose root and cgroup cannot leave their base."""
    from firelet.jailer import layout
    from firelet.launcher.jail import EXEC_NAME, spec_for

    line = json.dumps({"op": "launch", "id": "vm-1", "argv": [], "jail": jail}).encode()
    try:
        request = protocol.decode_request(line)
    except protocol.ProtocolError as exc:
        assert str(exc).startswith("launch") and "\n" not in " ".join(str(exc).split())
        return
    assert isinstance(request, protocol.Launch) and request.jail is not None
    spec = spec_for(request.id, request.jail)
    root = layout.jail_for(spec.chroot_base_dir, EXEC_NAME, spec.id).root
    assert root == os.path.join(os.path.abspath(spec.chroot_base_dir), EXEC_NAME, spec.id, "root")
    assert ".." not in spec.id.split("/") and "/" not in spec.id
    assert ".." not in spec.parent_cgroup_path.split("/") and not spec.parent_cgroup_path.startswith("/")
    assert 0 <= spec.uid <= protocol.MAX_ID and 0 <= spec.gid <= protocol.MAX_ID
    assert spec.cgroup_version in (1, 2)
    assert all("/" not in name and "\n" not in value for name, value in spec.cgroups)
