"""`python -m cxrtriage.cli`: how the supervisor (and the tests) start each process."""

import sys

from cxrtriage.cli.command import main

if __name__ == "__main__":
    sys.exit(main())
