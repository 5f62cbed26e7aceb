"""Resolving the rig's kernel modules from a modules.dep text."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firelet.devtools.nested.modules import ModuleResolveError, module_name, resolve_modules

DEP = """\
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/arch/x86/kvm/kvm-amd.ko: kernel/drivers/crypto/ccp/ccp.ko kernel/arch/x86/kvm/kvm.ko kernel/virt/lib/irqbypass.ko
kernel/arch/x86/kvm/kvm.ko: kernel/virt/lib/irqbypass.ko
kernel/drivers/crypto/ccp/ccp.ko:
kernel/virt/lib/irqbypass.ko:
kernel/drivers/net/tun.ko.xz:
"""


def test_name_normalises_dashes_and_compression() -> None:
    assert module_name("kernel/arch/x86/kvm/kvm-amd.ko") == "kvm_amd"
    assert module_name("kernel/drivers/net/tun.ko.xz") == "tun"


def test_dependencies_come_first_and_once() -> None:
    order = resolve_modules(DEP, ["kvm-amd", "kvm", "tun"])
    names = [module_name(p) for p in order]
    assert names.count("irqbypass") == 1
    assert names.index("irqbypass") < names.index("kvm") < names.index("kvm_amd")
    assert names.index("ccp") < names.index("kvm_amd")
    assert names[-1] == "tun"


def test_virtio_pci_pulls_its_helpers() -> None:
    names = {module_name(p) for p in resolve_modules(DEP, ["virtio_pci"])}
    assert names == {"virtio_pci", "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio", "virtio_ring"}


def test_missing_required_module_is_an_error_naming_it() -> None:
    with pytest.raises(ModuleResolveError, match="9p"):
        resolve_modules(DEP, ["9p"])


def test_missing_optional_module_is_skipped() -> None:
    assert [module_name(p) for p in resolve_modules(DEP, ["tun"], ["bridge"])] == ["tun"]


def test_cycle_is_reported() -> None:
    with pytest.raises(ModuleResolveError, match="cycle"):
        resolve_modules("a.ko: b.ko\nb.ko: a.ko\n", ["a"])


@given(st.data())
def test_any_dag_resolves_in_dependency_order(data: st.DataObject) -> None:
    n = data.draw(st.integers(1, 12))
    # module i may only depend on modules with a larger index: a DAG.
    deps = {i: data.draw(st.sets(st.integers(i + 1, n - 1), max_size=4)) if i < n - 1 else set()
            for i in range(n)}
    text = "\n".join(f"m{i}.ko: " + " ".join(f"m{d}.ko" for d in sorted(ds)) for i, ds in deps.items())
    wanted = data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=4))
    order = [module_name(p) for p in resolve_modules(text, [f"m{w}" for w in wanted])]
    assert len(order) == len(set(order))
    for w in wanted:
        assert f"m{w}" in order
    for i, name in enumerate(order):
        for d in deps[int(name[1:])]:
            assert order.index(f"m{d}") < i
