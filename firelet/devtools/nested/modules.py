"""Which kernel modules the rig's outer Linux loads, in load order.

The outer kernel is Debian's generic one, where 9p, virtio-pci and kvm-amd are
modules. ``modules.dep`` (written by ``depmod``) lists, for each module, every
module it needs; we resolve the wanted names against it once on the host, so
the initramfs only has to ``insmod`` a fixed list in order.
"""

from __future__ import annotations

from firelet.errors import FireletError

# What the rig needs to reach the host root and offer /dev/kvm, /dev/net/tun.
REQUIRED_MODULES: tuple[str, ...] = ("virtio_pci", "9pnet_virtio", "9p", "kvm", "kvm_amd", "tun")
# Cheap extras later tests use (bridges, veth pairs for netns, loop devices, overlayfs, and
# vhost-net for bench/net.py's QEMU vhost=on row: ~240 KiB with vhost, vhost_iotlb and tap).
OPTIONAL_MODULES: tuple[str, ...] = ("bridge", "veth", "loop", "overlay", "vhost_net")


class ModuleResolveError(FireletError):
    """A wanted module is not in the outer kernel's ``modules.dep``."""


def module_name(path: str) -> str:
    """The canonical name of a module file: ``kernel/arch/x86/kvm/kvm-amd.ko.xz`` -> ``kvm_amd``.

    The kernel treats ``-`` and ``_`` in module names as the same character.
    """
    base = path.rsplit("/", 1)[-1]
    for suffix in (".xz", ".zst", ".gz"):
        base = base.removesuffix(suffix)
    return base.removesuffix(".ko").replace("-", "_")


def parse_modules_dep(text: str) -> dict[str, tuple[str, list[str]]]:
    """Parse ``modules.dep`` into ``name -> (path, [dependency paths])``."""
    table: dict[str, tuple[str, list[str]]] = {}
    for line in text.splitlines():
        if ":" not in line:
            continue
        path, _, deps = line.partition(":")
        path = path.strip()
        if path:
            table[module_name(path)] = (path, deps.split())
    return table


def resolve_modules(dep_text: str, wanted: list[str] | tuple[str, ...],
                    optional: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Paths of ``wanted`` and ``optional`` modules plus everything they need, dependencies first.

    A missing wanted module is an error; a missing optional one is left out
    (built into the kernel, or absent from this flavour).
    """
    table = parse_modules_dep(dep_text)
    by_path = {path: name for name, (path, _) in table.items()}
    order: list[str] = []
    state: dict[str, str] = {}  # path -> "visiting" | "done"

    def visit(path: str) -> None:
        if state.get(path) == "done":
            return
        if state.get(path) == "visiting":
            raise ModuleResolveError(f"modules.dep has a dependency cycle through {path}; rebuild it with depmod")
        state[path] = "visiting"
        name = by_path.get(path)
        deps = table[name][1] if name is not None else []
        for dep in deps:
            visit(dep)
        state[path] = "done"
        order.append(path)

    for raw in wanted:
        name = raw.replace("-", "_")
        if name not in table:
            raise ModuleResolveError(
                f"kernel module {raw!r} is not in the outer kernel's modules.dep; "
                "use Debian's generic linux-image-*-amd64-unsigned kernel (the -cloud- flavour lacks 9p)")
        visit(table[name][0])
    for raw in optional:
        name = raw.replace("-", "_")
        if name in table:
            visit(table[name][0])
    return order
