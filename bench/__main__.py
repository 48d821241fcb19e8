"""``python -m bench [--quick] [--only e2e,producer]``: see ``bench.run``."""

import sys

from bench.run import main

sys.exit(main())
