import sys

from firelet.cli.main import main

sys.exit(main())
