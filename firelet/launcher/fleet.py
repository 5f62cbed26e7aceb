"""``Fleet``: many microVMs from one Firecracker config file, through a warm launcher.

Each member gets its own id, directory (``DIR/<id>/``), API socket, log, metrics and
console files, and a private sparse copy of each writable drive; read-only drives
(a shared root) are used in place. The config is rewritten per member and handed
to firelet-vmm unchanged otherwise, so firelet-vmm validates it: a bad config or a
full disk fails that member, reported by its id, and the others go on.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from firelet.errors import UsageError
from firelet.launcher.client import Launcher, Records
from firelet.launcher.memory import MemoryBudget, guest_mib
from firelet.launcher.placement import (
    API_SOCK,
    CONFIG,
    CONSOLE,
    DRIVE_PREFIX,
    JAIL_RECORD,
    LOG,
    METRICS,
    STDERR,
    JailPlacement,
    Placement,
    tidy,
)
from firelet.launcher.socket_path import MAX_SOCKET_PATH, LauncherError

#: The launcher socket a fleet directory uses unless told otherwise.
LAUNCHER_SOCK = "launcher.sock"
#: How long a member may take from launch to a started VM (s): the nested rig boots slowly.
READY_TIMEOUT_S = 120.0


def default_dir() -> Path:
    """Where a fleet lives unless ``--dir`` says: a short path (sockets), private to the user."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "firelet-fleet"
    return Path("/run/firelet/fleet") if os.geteuid() == 0 else Path(f"/tmp/firelet-fleet-{os.getuid()}")


@dataclass
class Member:
    """One microVM of a fleet launch: its pid once launched, or why it failed."""

    id: str
    dir: Path
    pid: int | None = None
    error: str | None = None
    ready: bool = False
    root: Path | None = None  # the jail's root when jailed: its files and API socket are there

    @property
    def api_sock(self) -> Path:
        return (self.root or self.dir) / API_SOCK


Progress = Callable[[int, int, int], None]  # (ready, failed, total)


class Fleet:
    """The microVMs a launcher runs for one fleet directory."""

    def __init__(self, launcher: Launcher, directory: str | os.PathLike[str]) -> None:
        self.launcher = launcher
        self.dir = Path(directory).absolute()

    @classmethod
    def open(cls, directory: str | os.PathLike[str] | None = None, *, launcher_socket: str | None = None,
             start: bool = False) -> Fleet:
        """The fleet in ``directory``, through its launcher (started in the background if ``start``)."""
        path = Path(directory) if directory is not None else default_dir()
        sock = launcher_socket or str(path / LAUNCHER_SOCK)
        try:
            return cls(Launcher.connect(sock), path)
        except LauncherError:
            if not start:
                raise
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        launcher = Launcher.start(sock, log_path=path / "launcher.log")
        launcher.process = None  # it outlives this process: the fleet's commands come and go
        return cls(launcher, path)

    def close(self) -> None:
        """Disconnect; the launcher and the microVMs keep running."""
        self.launcher.close()

    # -- up ---------------------------------------------------------------------------------
    def up(self, count: int, config_path: str | os.PathLike[str], *, prefix: str = "vm",
           ready_timeout_s: float = READY_TIMEOUT_S, progress: Progress | None = None,
           memory_check: bool = False, available_mib: int | None = None,
           jail: dict[str, Any] | None = None) -> list[Member]:
        """Launch ``count`` microVMs from one config file; each member says its pid or its error.

        ``jail`` confines each member as firelet-jailer would (a launch's ``jail``, e.g. from
        :func:`firelet.jailer.flags.jail_options`; its ``id`` is the member's): the fleet lays
        the member's files (config, kernel, drives, log, metrics) in the jail's root
        ``<chroot_base_dir>/firelet-vmm/<id>/root`` and the VMM sees them there by in-jail paths.

        Guest RAM is lazy, so members may add up to more than the host holds. With
        ``memory_check``, a member whose whole guest RAM would not fit in the memory left
        (firelet.launcher.memory; ``available_mib`` stands for the host's MemAvailable) is
        refused by its id and not launched.
        """
        if count < 1:
            raise UsageError("fleet up: give a number of microVMs, 1 or more")
        config = _read_config(Path(config_path))
        records = self.launcher.list()
        taken = {vm["id"] for vm in records}
        budget = None if not memory_check else MemoryBudget.measure(
            ((self._guest_mib(vm["id"]), int(vm.get("rss_kib") or 0)) for vm in records if vm["state"] == "running"),
            available_mib)
        ids: list[str] = []
        k = 1
        while len(ids) < count:
            if f"{prefix}-{k}" not in taken:
                ids.append(f"{prefix}-{k}")
            k += 1
        members = [Member(vm_id, self.dir / vm_id) for vm_id in ids]
        for member in members:
            if budget is not None and (refused := budget.admit(member.id, guest_mib(config))):
                member.error = refused
                continue
            try:
                argv = self._prepare(member, config, jail)
                member.pid = self.launcher.launch(member.id, argv, stdout=str(member.dir / CONSOLE),
                                                  stderr=str(member.dir / STDERR),
                                                  cwd="/" if jail else os.getcwd(),
                                                  jail={**jail, "id": member.id} if jail else None)
            except OSError as exc:
                member.error = f"{member.id}: {exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
            except (LauncherError, UsageError) as exc:
                member.error = f"{member.id}: {exc}"
        self._wait_ready(members, ready_timeout_s, progress)
        for member in members:
            if member.error is not None:
                tidy(member.dir)
        return members

    def _guest_mib(self, vm_id: str) -> int:
        """A running member's guest RAM, from the config the fleet wrote for it (0 if not one of ours)."""
        member_dir = self.dir / vm_id
        try:
            where = Path(json.loads((member_dir / JAIL_RECORD).read_text())["root"])  # jailed: the jail holds it
        except (OSError, ValueError, KeyError, TypeError):
            where = member_dir
        try:
            return guest_mib(json.loads((where / CONFIG).read_bytes()))
        except (OSError, ValueError, AttributeError):
            return 0

    def _prepare(self, member: Member, config: dict[str, Any], jail: dict[str, Any] | None = None) -> list[str]:
        """The member's directory and files, its config rewritten for it; firelet-vmm's arguments."""
        if member.dir.exists():  # left by an earlier fleet's member of the same id, which has ended
            tidy(member.dir)
            shutil.rmtree(member.dir)
        member.dir.mkdir(parents=True, mode=0o700)
        place = Placement(member.dir) if jail is None else JailPlacement(member, jail)
        if len(os.fsencode(member.api_sock)) > MAX_SOCKET_PATH:
            raise UsageError(f"API socket {member.api_sock}: longer than a Unix socket path may be; use a shorter "
                             f"{'--chroot-base-dir' if jail else '--dir'}")
        mine = json.loads(json.dumps(config))  # a deep copy
        boot = mine.get("boot-source")
        for key in ("kernel_image_path", "initrd_path"):
            if isinstance(boot, dict) and isinstance(boot.get(key), str):
                boot[key] = place.shared(boot[key], key.removesuffix("_path"))
        for index, drive in enumerate(mine.get("drives") or []):
            if not drive.get("path_on_host"):
                continue
            name = f"{DRIVE_PREFIX}{index}{Path(drive['path_on_host']).suffix}"
            try:
                drive["path_on_host"] = (place.shared(drive["path_on_host"], name) if drive.get("is_read_only")
                                         else place.private(drive["path_on_host"], name))
            except OSError as exc:
                raise UsageError(f"drive {drive.get('drive_id')}: cannot copy {drive['path_on_host']} to "
                                 f"{member.dir if jail is None else member.root}: {exc.strerror or exc}") from None
        argv = ["--api-sock", place.seen(API_SOCK), "--config-file", place.seen(CONFIG), "--id", member.id]
        for key, field, name, flag in (("logger", "log_path", LOG, "--log-path"),
                                       ("metrics", "metrics_path", METRICS, "--metrics-path")):
            path = place.writable(name)
            if isinstance(mine.get(key), dict):
                mine[key][field] = path
            else:
                argv += [flag, path]
        if isinstance(mine.get("serial"), dict) and mine["serial"].get("serial_out_path"):
            mine["serial"]["serial_out_path"] = place.writable(CONSOLE)
        place.write(CONFIG, json.dumps(mine, indent=1))
        return argv

    def _wait_ready(self, members: list[Member], timeout_s: float, progress: Progress | None) -> None:
        """Until each launched member's VM has started (its API says so) or its VMM has ended."""
        from firelet.launcher.probe import instance_state

        deadline = time.monotonic() + timeout_s
        pending = [m for m in members if m.error is None]
        while True:
            if progress is not None:
                progress(sum(m.ready for m in members), sum(m.error is not None for m in members), len(members))
            if not pending:
                return
            ended = {vm["id"]: vm for vm in self.launcher.list() if vm["state"] != "running"}
            for member in list(pending):
                if member.id in ended:
                    vm = ended[member.id]
                    why = vm.get("error") or (f"exit code {vm['exit_code']}" if vm["state"] == "exited"
                                              else f"killed by {vm['exit_signal']}")
                    member.error = f"{member.id}: {why}"
                elif instance_state(member.api_sock) not in (None, "Not started"):
                    member.ready = True
                else:
                    continue
                pending.remove(member)
            if time.monotonic() > deadline:
                for member in pending:
                    member.error = f"{member.id}: not started within {timeout_s:g} s (see {member.dir / STDERR})"
                pending = []
            else:
                time.sleep(0.05)

    # -- list and stop ----------------------------------------------------------------------
    def list(self) -> Records:
        return self.launcher.list()

    def stop(self, vm_id: str | None = None, *, grace_s: float = 5.0, timeout_s: float = 60.0) -> Records:
        """Stop one member (or all): SIGTERM, SIGKILL after ``grace_s``; their records, then their leftovers go."""
        self.launcher.stop(vm_id, grace_s=grace_s)
        self.launcher.wait(vm_id, timeout_s=timeout_s)
        records = self.launcher.reap()
        for vm in records:
            tidy(self.dir / vm["id"])
        return records

    def shutdown(self) -> dict[str, Any]:
        """Stop every member and the launcher itself."""
        self.stop()
        return self.launcher.shutdown()


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_bytes())
    except OSError as exc:
        raise UsageError(f"--config {path}: cannot read it: {exc.strerror}") from None
    except ValueError as exc:
        raise UsageError(f"--config {path}: not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise UsageError(f"--config {path}: expected a JSON object (Firecracker's config file)")
    if config.get("network-interfaces"):
        raise UsageError("--config: network-interfaces: each microVM needs its own TAP, which the fleet cannot "
                         "give yet; launch them one by one")
    base = Path.cwd()
    boot = config.get("boot-source")
    if isinstance(boot, dict):  # absolute, so the launcher's children find them whatever their cwd
        for key in ("kernel_image_path", "initrd_path"):
            if isinstance(boot.get(key), str):
                boot[key] = str(base / boot[key])
    for drive in config.get("drives") or []:
        if isinstance(drive, dict) and isinstance(drive.get("path_on_host"), str):
            drive["path_on_host"] = str(base / drive["path_on_host"])
    return config
