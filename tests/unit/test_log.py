"""firelet.log: loggers that do not import logging until it can matter."""

from __future__ import annotations

import subprocess
import sys

import pytest

from firelet.log import DEBUG, INFO, WARNING, get_logger


def _run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stderr


def test_debug_and_info_do_not_import_logging_when_nothing_configured_it() -> None:
    err = _run("import sys; from firelet.log import get_logger; log = get_logger('x'); "
               "log.debug('d %s', 1); log.info('i'); assert not log.isEnabledFor(10); "
               "assert 'logging' not in sys.modules, 'logging was imported'")
    assert err == ""


def test_warnings_reach_stderr_without_configuration() -> None:
    assert _run("from firelet.log import get_logger; get_logger('x').warning('disk %s is full', 'vda')") == \
        "disk vda is full\n"


def test_a_configured_level_is_honoured(caplog: pytest.LogCaptureFixture) -> None:
    log = get_logger("firelet.test_log")
    with caplog.at_level(DEBUG, logger="firelet.test_log"):
        log.debug("seen %d", 1)
        log.info("also seen")
        assert log.isEnabledFor(DEBUG)
    assert [r.levelno for r in caplog.records] == [DEBUG, INFO]
    assert WARNING == 30
