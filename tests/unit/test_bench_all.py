"""bench/all.py: every benchmark's flags exist in its script, and bad input is refused."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

import all as bench_all  # noqa: E402  (bench/ is scripts, not a package)


@pytest.mark.parametrize("bench", bench_all.BENCHES, ids=lambda b: b.name)
def test_each_benchmarks_flags_are_its_scripts(bench: bench_all.Bench, tmp_path: Path) -> None:
    helptext = subprocess.run([sys.executable, str(REPO / "bench" / bench.full[0]), "--help"], capture_output=True,
                              text=True, timeout=60, check=True).stdout
    for quick in (False, True):
        argv = bench_all.command(bench, quick, tmp_path)
        flags = [a for a in argv[2:] if a.startswith("--")]
        assert all(f in helptext for f in flags), (flags, helptext)
        assert ("--json" in argv) == bench.json


def test_an_unknown_benchmark_is_refused_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        bench_all.main(["--only", "boot,nope"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith("--only: no benchmark named nope (known: api, boot, "
                                                             "disk, first-entry, fleet, launch, launch-rate, net)")
