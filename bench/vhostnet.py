"""vhost-net for QEMU's row of bench/net.py: the kernel modules, fetched out here, loaded in the rig.

The rig's outer kernel is Debian's generic 6.1, where vhost_net is a module. Rig kernels
prepared since it joined ``OPTIONAL_MODULES`` load it at boot; one prepared before
has no copy of it. For that case :func:`fetch_modules` takes vhost_net and what it needs
(vhost, vhost_iotlb, tap) from the same kernel package, once, into firelet's cache, and
:func:`load` (run inside the rig, as root) insmods them. Whatever fails is a reason
the vhost=on row gives, never an error of the benchmark.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

DEVICE = Path("/dev/vhost-net")


def fetch_modules() -> tuple[Path | None, str]:
    """(a folder whose ``order`` file lists the modules to insmod, or None; why not)."""
    from firelet.devtools.cache import cache_dir
    from firelet.devtools.nested.modules import resolve_modules
    from firelet.devtools.nested.outer import prepare_base

    kernel = prepare_base().kernel
    have = {p.name for p in kernel.modules}
    if "vhost_net.ko" in have:
        return None, "the rig kernel carries vhost_net itself"
    target = cache_dir() / "bench" / f"vhost-{kernel.release}"
    if (target / "order").exists():
        return target, ""
    package = f"linux-image-{kernel.release}-unsigned"
    # The rig kernel's folder is named kernel-<package>_<version>: fetch that very build.
    _, _, version = kernel.vmlinuz.parent.name.partition("_")
    wanted = f"{package}={version}" if version else package
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            work = Path(tmp)
            _run(["apt-get", "download", wanted], work)
            debs = list(work.glob("*.deb"))
            if not debs:
                return None, f"apt-get download {wanted} gave no .deb"
            tree = work / "x"
            _run(["dpkg-deb", "-x", str(debs[0]), str(tree)], work)
            _run(["depmod", "-b", str(tree), kernel.release], work)
            moddir = next(p for p in (tree / "lib" / "modules" / kernel.release,
                                      tree / "usr" / "lib" / "modules" / kernel.release) if p.exists())
            order = resolve_modules((moddir / "modules.dep").read_text(), ["vhost_net"])
            staging = work / "out"
            staging.mkdir()
            names = []
            for rel in order:
                name = rel.rsplit("/", 1)[-1]
                if name not in have:
                    shutil.copy2(moddir / rel, staging / name)
                    names.append(name)
            (staging / "order").write_text("\n".join(names) + "\n")
            staging.chmod(0o755)
            staging.rename(target)
    except (OSError, subprocess.CalledProcessError, StopIteration) as exc:
        return None, f"could not fetch vhost_net for {kernel.release}: {_describe(exc)}"
    return target, ""


def load(modules: Path | None, fetch_note: str) -> str | None:
    """Make /dev/vhost-net appear (modprobe, else insmod from ``modules``); None, or why it did not."""
    if DEVICE.exists():
        return None
    tried = []
    probe = subprocess.run(["modprobe", "vhost_net"], capture_output=True, text=True)
    if DEVICE.exists():
        return None
    tried.append(f"modprobe vhost_net: {(probe.stderr.strip().splitlines() or ['exit ' + str(probe.returncode)])[-1]}")
    if modules is None:
        tried.append(fetch_note or "no module copy handed in")
    else:
        for name in (modules / "order").read_text().split():
            done = subprocess.run(["insmod", str(modules / name)], capture_output=True, text=True)
            if done.returncode != 0 and "File exists" not in done.stderr:
                tried.append(f"insmod {name}: {done.stderr.strip()}")
                break
    if DEVICE.exists():
        return None
    return "; ".join([*tried, "no /dev/vhost-net"])


def _run(argv: list[str], cwd: Path) -> None:
    subprocess.run(argv, cwd=cwd, check=True, capture_output=True, text=True)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, subprocess.CalledProcessError):
        last = (str(exc.stderr or "").strip().splitlines() or ["no output"])[-1]
        return f"{' '.join(map(str, exc.cmd[:3]))} failed: {last}"
    if isinstance(exc, StopIteration):
        return "the package has no modules folder"
    return str(exc)
