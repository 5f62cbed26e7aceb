"""``python -m firelet.jailer``: the same as the ``firelet-jailer`` command."""

import sys

from firelet.jailer.main import console

sys.exit(console())
