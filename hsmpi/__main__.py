"""`python -m hsmpi`: see hsmpi.cli."""

from __future__ import annotations

import sys

from hsmpi.cli import main

if __name__ == "__main__":
    sys.exit(main())
