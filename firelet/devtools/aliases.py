"""The ``firecracker`` command for a checkout that is not pip-installed (tests, a developer's PATH).

``pip install`` makes it from ``[project.scripts]``; this writes the same kind of
script (a shebang line naming this Python, then a call of the entry point), so a
test runs the alias exactly as a user's PATH would, named ``firecracker``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from firelet.devtools.cache import repo_root

#: Command name -> (module, function), as in pyproject.toml's [project.scripts].
ALIASES = {"firecracker": ("firelet.cli.vmm", "firecracker_console")}


def write_alias(bin_dir: Path, name: str = "firecracker", *, python: str = sys.executable) -> Path:
    """An executable ``bin_dir/name`` that runs firelet's entry point for ``name`` from this checkout."""
    module, function = ALIASES[name]
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / name
    path.write_text(
        f"#!{python}\n"
        "import sys\n"
        f"sys.path.insert(0, {str(repo_root())!r})\n"
        f"from {module} import {function}\n"
        f"sys.exit({function}())\n"
    )
    os.chmod(path, 0o755)
    return path
