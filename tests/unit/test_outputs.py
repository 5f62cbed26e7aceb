"""A config's logger, metrics and serial sections under ``firelet run`` and ``MicroVM``: honoured or refused."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from firelet import logs
from firelet.cli.run import build_microvm, console_for
from firelet.config.model import VmConfig, convert
from firelet.devices.legacy.console import ConsoleBuffer, FdSink, NullSink
from firelet.errors import UsageError
from firelet.metrics import Metrics
from firelet.microvm import MicroVM
from firelet.outputs import open_outputs, plan_outputs


def _config(tmp_path: Path, **sections: Any) -> VmConfig:
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(b"\x7fELF")
    raw = {"boot-source": {"kernel_image_path": str(kernel)}, "drives": [],
           "machine-config": {"vcpu_count": 1, "mem_size_mib": 128}}
    raw.update(sections)
    return convert(raw, VmConfig)


@pytest.fixture
def clean_log() -> Iterator[None]:
    yield
    root = logging.getLogger("firelet")
    for handler in [h for h in root.handlers if isinstance(h, logs.FirecrackerLogHandler)]:
        root.removeHandler(handler)
        handler.close()


def test_without_the_sections_nothing_is_asked(tmp_path: Path) -> None:
    plan = plan_outputs(_config(tmp_path), console_given=True)
    assert plan == (None, None, None)
    assert plan_outputs(_config(tmp_path, serial={}), console_given=True).serial_out_path is None


def test_each_section_is_planned(tmp_path: Path) -> None:
    config = _config(tmp_path, logger={"log_path": "l", "level": "debug"}, metrics={"metrics_path": "m"},
                     serial={"serial_out_path": "s"})
    plan = plan_outputs(config, console_given=False)
    assert plan.logger is not None and plan.logger.level == "Debug"
    assert (plan.metrics_path, plan.serial_out_path) == ("m", "s")


@pytest.mark.parametrize(("serial", "console_given", "words"), [
    ({"serial_out_path": "s"}, True, "serial.serial_out_path (s) and the console given"),
    ({"rate_limiter": {"size": 10, "refill_time": 100}}, False, "serial.rate_limiter is not supported"),
])
def test_what_cannot_be_honoured_is_refused_in_one_line_naming_the_section(
        tmp_path: Path, serial: dict[str, Any], console_given: bool, words: str) -> None:
    config = _config(tmp_path, serial=serial)
    with pytest.raises(UsageError, match="serial") as caught:
        plan_outputs(config, console_given=console_given)
    assert words in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(UsageError, match="serial"):  # the library refuses before building anything
        MicroVM(config=config, console=NullSink() if console_given else None)


def test_run_takes_the_console_from_the_flag_or_the_config_never_both(tmp_path: Path) -> None:
    with_path = _config(tmp_path, serial={"serial_out_path": str(tmp_path / "ser")})
    assert console_for(None, with_path) == (None, False)  # MicroVM opens serial_out_path
    with pytest.raises(UsageError, match=r"--console none and the config file's serial.serial_out_path"):
        console_for("none", with_path)
    sink, interactive = console_for("none", _config(tmp_path))
    assert isinstance(sink, NullSink) and not interactive
    sink, _ = console_for(None, _config(tmp_path, serial={}))
    assert isinstance(sink, FdSink) and sink.fd == sys.stdout.fileno()  # the default: stdio


def test_run_with_a_config_file_hands_the_sections_to_the_microvm(tmp_path: Path) -> None:
    path = tmp_path / "vm.json"
    config = {"boot-source": {"kernel_image_path": str(tmp_path / "vmlinux")},
              "machine-config": {"vcpu_count": 1, "mem_size_mib": 128},
              "serial": {"serial_out_path": str(tmp_path / "ser")}, "metrics": {"metrics_path": "m"}}
    path.write_text(json.dumps(config))
    args = argparse.Namespace(config_file=str(path), kernel=None, rootfs=None, drive=[], initrd=None, net=[],
                              console=None, kvm_device="/dev/kvm", boot_timer=False)
    vm, interactive = build_microvm(args)
    assert not interactive and vm._outputs_plan.metrics_path == "m"
    assert vm._outputs_plan.serial_out_path == str(tmp_path / "ser")
    args.console = "stdio"
    with pytest.raises(UsageError, match="keep one"):
        build_microvm(args)


def test_opened_outputs_write_the_metrics_file_serial_file_and_log_like_firelet_vmm(
        tmp_path: Path, clean_log: None) -> None:
    config = _config(tmp_path, logger={"log_path": str(tmp_path / "log"), "level": "Warning", "show_level": True},
                     metrics={"metrics_path": str(tmp_path / "metrics")},
                     serial={"serial_out_path": str(tmp_path / "serial")})
    metrics = Metrics()
    outputs = open_outputs(plan_outputs(config, console_given=False), metrics, instance_id="vm-9")
    outputs.console.write(b"Linux version 6.1\n")
    metrics.uart.write_count += 18
    logging.getLogger("firelet.test").info("below the level")
    logging.getLogger("firelet.test").warning("disk slow")
    outputs.close()
    assert (tmp_path / "serial").read_bytes() == b"Linux version 6.1\n"
    line = json.loads((tmp_path / "metrics").read_text().splitlines()[-1])
    assert line["uart"]["write_count"] == 18
    text = (tmp_path / "log").read_text()
    assert "below the level" not in text and text.endswith("[vm-9:MainThread:WARN] disk slow\n")


def test_a_logger_without_a_path_logs_to_stderr(tmp_path: Path, clean_log: None,
                                                capfd: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path, logger={"level": "Info"})
    open_outputs(plan_outputs(config, console_given=True), Metrics()).close()
    logging.getLogger("firelet.test").info("hello from the VMM")
    err = capfd.readouterr().err
    assert "[anonymous-instance:MainThread] hello from the VMM" in err


def test_an_unopenable_destination_is_one_line_naming_the_section(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "dir"
    for section, words in (({"metrics": {"metrics_path": str(missing)}}, "metrics.metrics_path"),
                           ({"serial": {"serial_out_path": str(missing)}}, "serial.serial_out_path"),
                           ({"logger": {"log_path": str(missing)}}, "logger.log_path")):
        with pytest.raises(UsageError, match=words):
            open_outputs(plan_outputs(_config(tmp_path, **section), console_given=False), Metrics())


def test_each_microvm_has_its_own_metrics_from_the_start(tmp_path: Path) -> None:
    one, two = MicroVM(config=_config(tmp_path)), MicroVM(config=_config(tmp_path))
    assert isinstance(one.console, ConsoleBuffer)
    assert one.metrics["block"]["read_bytes"] == 0 and one.metrics is not two.metrics
    one._metrics.vcpu.exit_io_out += 1
    assert one.metrics["vcpu"]["exit_io_out"] == 1 and two.metrics["vcpu"]["exit_io_out"] == 0
