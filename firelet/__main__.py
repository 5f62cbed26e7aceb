import sys

from firelet.cli.main import console

sys.exit(console())
