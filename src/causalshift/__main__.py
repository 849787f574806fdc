"""`python -m causalshift` (and `torchrun -m causalshift train ...`)."""

import sys

from causalshift.cli import main

if __name__ == "__main__":
    sys.exit(main())
