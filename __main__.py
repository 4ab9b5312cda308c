"""`python -m omnitok ...` runs the command line."""

import sys

from omnitok.cli import main

sys.exit(main())
