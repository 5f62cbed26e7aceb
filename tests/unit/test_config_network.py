"""Network interfaces in the configuration: MACs, TAP names, duplicates and rate limiter values.

Whatever a config file or API body holds, it either decodes into interfaces a VM can have
(a unicast MAC, distinct ids, TAPs and MACs, buckets the device's limiter takes) or is
refused in one line that names the field.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firelet.config.files import decode_config
from firelet.config.model import _I64_MAX, MAX_REFILL_TIME_MS, ConfigError, VmConfig
from firelet.devices.rate_limiter import RateLimiter


def _decode(ifaces: list[dict[str, Any]]) -> VmConfig:
    return decode_config(json.dumps({"network-interfaces": ifaces}).encode(), source="vm.json")


def _refusal(ifaces: list[dict[str, Any]]) -> str:
    with pytest.raises(ConfigError) as info:
        _decode(ifaces)
    message = str(info.value)
    assert message.startswith("vm.json: ") and "\n" not in message
    return message


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=6, max_size=6), st.booleans())
def test_a_mac_is_accepted_exactly_when_a_nic_may_have_it(raw: bytes, upper: bool) -> None:
    text = ":".join(f"{b:02X}" if upper else f"{b:02x}" for b in raw)
    if raw[0] & 1 or raw == bytes(6):
        message = _refusal([{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": text}])
        assert message.startswith("vm.json: network-interfaces[0].guest_mac: expected a unicast MAC")
        return
    iface = _decode([{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": text}]).network_interfaces[0]
    assert iface.guest_mac == text.lower()  # as Firecracker reports it
    assert iface.mac_bytes == raw


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=20))
def test_text_that_is_not_a_mac_is_refused_naming_the_field(text: str) -> None:
    parts = text.split(":")
    if len(parts) == 6 and all(len(p) == 2 and all(c in "0123456789abcdefABCDEF" for c in p) for p in parts):
        return  # a well-formed MAC: the test above covers it
    message = _refusal([{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": text}])
    assert "network-interfaces[0].guest_mac: expected a MAC like " in message


@pytest.mark.parametrize("name", ["", "t" * 16, "ta p", "tap/0", "tap:0", ".", "..", "tap\t"])
def test_a_name_no_interface_can_have_is_refused(name: str) -> None:
    assert "network-interfaces[0].host_dev_name: expected" in _refusal([{"iface_id": "e", "host_dev_name": name}])


_iface = st.fixed_dictionaries(
    {"iface_id": st.sampled_from(["eth0", "eth1", "eth2"]), "host_dev_name": st.sampled_from(["tap0", "tap1", "tap2"])},
    optional={"guest_mac": st.sampled_from(["06:00:00:00:00:01", "06:00:00:00:00:02", "06:00:00:00:00:0A",
                                            "06:00:00:00:00:0a"])},
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_iface, max_size=4))
def test_duplicate_ids_taps_or_macs_are_refused_naming_the_field(ifaces: list[dict[str, Any]]) -> None:
    def repeats(values: list[str]) -> bool:
        return len(values) != len(set(values))

    ids = [i["iface_id"] for i in ifaces]
    taps = [i["host_dev_name"] for i in ifaces]
    macs = [i["guest_mac"].lower() for i in ifaces if "guest_mac" in i]  # MACs compare without case
    if not (repeats(ids) or repeats(taps) or repeats(macs)):
        assert [n.iface_id for n in _decode(ifaces).network_interfaces] == ids
        return
    message = _refusal(ifaces)
    field = "iface_id" if repeats(ids) else "host_dev_name" if repeats(taps) else "guest_mac"
    assert message.startswith(f"vm.json: network-interfaces: {field} ")
    assert "more than once" in message or "more than one interface" in message


_value = st.one_of(st.integers(min_value=-(1 << 70), max_value=1 << 70),
                   st.sampled_from([-1, 0, 1, _I64_MAX, _I64_MAX + 1, MAX_REFILL_TIME_MS, MAX_REFILL_TIME_MS + 1]))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["rx_rate_limiter", "tx_rate_limiter"]), st.sampled_from(["bandwidth", "ops"]),
       st.sampled_from(["size", "refill_time", "one_time_burst"]), _value)
def test_bucket_values_are_accepted_as_firecracker_takes_them_and_the_device_can_hold_them(
        limiter: str, bucket: str, field: str, value: int) -> None:
    settings_ = {"size": 1000, "refill_time": 100, field: value}
    iface = {"iface_id": "eth0", "host_dev_name": "tap0", limiter: {bucket: settings_}}
    highest = MAX_REFILL_TIME_MS if field == "refill_time" else _I64_MAX
    if 0 <= value <= highest:
        config = getattr(_decode([iface]).network_interfaces[0], limiter)
        RateLimiter.from_config(config)  # what the device is built with: it takes every accepted value
        return
    message = _refusal([iface])
    bound = ">= 0" if value < 0 else f"<= {highest}"
    assert f"network-interfaces[0].{limiter}.{bucket}.{field}: expected int {bound}, got {value}" in message


def test_a_bucket_value_that_is_not_an_integer_is_refused() -> None:
    iface = {"iface_id": "eth0", "host_dev_name": "tap0", "tx_rate_limiter": {"ops": {"size": 1.5, "refill_time": 1}}}
    assert "network-interfaces[0].tx_rate_limiter.ops.size: expected int, got float" in _refusal([iface])
