"""The VMM commands' processes start lean: typing_extensions stays out, msgspec still validates."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

BAD_CONFIG = {"boot-source": {"kernel_image_path": "/nonexistent"},
              "machine-config": {"vcpu_count": 0, "mem_size_mib": 128}}
ERROR = "machine-config.vcpu_count: expected int >= 1, got 0"

# Runs a console entry point as the whole process would, then reports what got imported.
_HARNESS = """
import importlib, sys
module, sys.argv = sys.argv[1], sys.argv[1:]
try:
    code = importlib.import_module(module).console()
finally:
    loaded = sys.modules.get("typing_extensions") is not None
    try:
        import typing_extensions
        importable = True
    except ImportError:
        importable = False
    print("typing_extensions:", loaded, importable, "msgspec:", "msgspec" in sys.modules)
sys.exit(code)
"""


@pytest.fixture
def bad_config(tmp_path: Path) -> Path:
    path = tmp_path / "vm.json"
    path.write_text(json.dumps(BAD_CONFIG))
    return path


def _console(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", _HARNESS, module, *args], capture_output=True, text=True, timeout=60)


def test_typing_extensions_is_installed_here() -> None:
    # Otherwise the tests below would pass for the wrong reason.
    assert importlib.util.find_spec("typing_extensions") is not None


def test_firelet_run_keeps_typing_extensions_out(bad_config: Path) -> None:
    result = _console("firelet.cli.main", "run", "--config-file", str(bad_config))
    assert result.stdout.strip() == "typing_extensions: False False msgspec: True"
    assert result.returncode == 2 and ERROR in result.stderr


def test_firelet_vmm_keeps_typing_extensions_out(bad_config: Path) -> None:
    result = _console("firelet.cli.vmm", "--no-api", "--config-file", str(bad_config))
    assert result.stdout.strip() == "typing_extensions: False False msgspec: True"
    assert result.returncode != 0 and ERROR in result.stderr


def test_other_commands_leave_it_importable() -> None:
    result = _console("firelet.cli.main", "build", "--help")
    assert result.returncode == 0
    assert result.stdout.splitlines()[-1] == "typing_extensions: False True msgspec: False"


def test_library_use_leaves_it_importable() -> None:
    result = subprocess.run([sys.executable, "-c", "import firelet.config.model, typing_extensions"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def _python(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_gc_is_deferred_while_starting_then_frozen_and_back_on() -> None:
    out = _python(
        "import gc; from firelet.cli import lean\n"
        "lean.defer_gc(); off = gc.isenabled()\n"
        "junk = [object() for _ in range(1000)]\n"
        "lean.resume_gc(); print(off, gc.isenabled(), gc.get_freeze_count() > 1000)\n"
        "lean.resume_gc(); print(gc.isenabled())"
    )
    assert out.splitlines() == ["False True True", "True"]


def test_gc_left_alone_when_the_program_had_turned_it_off() -> None:
    out = _python(
        "import gc; gc.disable(); from firelet.cli import lean\n"
        "lean.defer_gc(); lean.resume_gc(); print(gc.isenabled(), gc.get_freeze_count())"
    )
    assert out == "False 0"


def test_firelet_run_defers_gc_only_for_vmm_commands(bad_config: Path) -> None:
    code = ("import gc, sys; from firelet.cli.main import console\n"
            "sys.argv = ['firelet', *sys.argv[1:]]\n"
            "try:\n    console()\nexcept SystemExit:\n    pass\n"
            "print(gc.isenabled())")
    run = subprocess.run([sys.executable, "-c", code, "run", "--config-file", str(bad_config)],
                         capture_output=True, text=True, timeout=60)
    assert run.stdout.strip() == "False"  # failed before the VM started: the process just ends
    build = subprocess.run([sys.executable, "-c", code, "build", "--help"], capture_output=True, text=True, timeout=60)
    assert build.stdout.strip().splitlines()[-1] == "True"


@pytest.mark.parametrize(("env", "language"), [
    ({"LANG": "C.UTF-8"}, "C"),
    ({"LC_ALL": "POSIX", "LANG": "de_DE.UTF-8"}, "C"),
    ({}, "C"),
    ({"LANG": "de_DE.UTF-8"}, None),
    ({"LANGUAGE": "fr", "LANG": "C.UTF-8"}, "fr"),
])
def test_message_catalogs_skipped_only_for_the_c_language(env: dict[str, str], language: str | None) -> None:
    base = {k: v for k, v in __import__("os").environ.items() if k not in ("LANG", "LANGUAGE", "LC_ALL", "LC_MESSAGES")}
    out = subprocess.run(
        [sys.executable, "-c", "import os; from firelet.cli import lean; lean.skip_message_catalog_search(); "
                               "print(os.environ.get('LANGUAGE'))"],
        capture_output=True, text=True, timeout=60, env={**base, **env},
    ).stdout.strip()
    assert out == str(language)


def test_argparse_finds_no_catalog_files_after_the_skip(tmp_path: Path) -> None:
    code = ("import gettext, os, sys; from firelet.cli import lean; lean.skip_message_catalog_search()\n"
            "looked = []\n"
            "real = os.path.exists\n"
            "os.path.exists = lambda p: looked.append(p) or real(p)\n"
            "import argparse; argparse.ArgumentParser(prog='x').add_argument('--y')\n"
            "print(len(looked))")
    base = {k: v for k, v in __import__("os").environ.items() if k not in ("LANGUAGE", "LC_ALL", "LC_MESSAGES")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**base, "LANG": "C.UTF-8"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "0"


def test_sigusr2_prints_every_threads_stack() -> None:
    code = ("import os, signal, threading, time\n"
            "from firelet.cli import lean\n"
            "lean.dump_stacks_on_signal()\n"
            "def parked_vcpu_thread():\n    time.sleep(5)\n"
            "threading.Thread(target=parked_vcpu_thread, daemon=True).start()\n"
            "time.sleep(0.2)\n"
            "os.kill(os.getpid(), signal.SIGUSR2)\n"
            "time.sleep(0.2)\n"
            "print('still running')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "still running"
    assert "parked_vcpu_thread" in result.stderr and "Current thread" in result.stderr
