"""The I/O buses: lookups while devices are inserted (the vCPUs run as the devices are made)."""

import sys
import threading

from firelet.vstate.bus import Bus


def test_bus_lookups_stay_whole_while_devices_are_inserted() -> None:
    # Vmm.start inserts devices while a vCPU may already serve ports nobody owns.
    class Dev:
        def read(self, offset: int, data: memoryview) -> None:
            data[:] = b"\x01" * len(data)

        def write(self, offset: int, data: bytes | memoryview) -> None: ...

    errors: list[BaseException] = []
    done = threading.Event()
    bus = Bus()

    def lookups() -> None:
        buf = memoryview(bytearray(1))
        try:
            while not done.is_set():
                for port in (0x0, 0x80, 0x1FF, 0xFFFF):  # nobody's ports, between and around devices
                    assert bus.read(port, buf) is False and buf[0] == 0xFF
        except BaseException as exc:  # reported below
            errors.append(exc)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    reader = threading.Thread(target=lookups)
    reader.start()
    try:
        for i in range(2000):
            bus.insert(Dev(), 0x200 + 4 * i, 2)
    finally:
        done.set()
        reader.join()
        sys.setswitchinterval(interval)
    assert errors == []
    assert len(bus.devices()) == 2000 and bus.read(0x200 + 4 * 1999 + 1, memoryview(bytearray(1)))
