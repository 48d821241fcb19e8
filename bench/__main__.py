"""``python -m bench [--quick] [--only e2e,producer]`` (see ``bench.run``), and
``python -m bench ab --old COMMIT …`` (see ``bench.ab``)."""

import sys

if sys.argv[1:2] == ["ab"]:
    from bench.ab import main as ab_main

    sys.exit(ab_main(sys.argv[2:]))

from bench.run import main

sys.exit(main())
