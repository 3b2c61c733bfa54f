"""`python -m rnnlib ...`: see `rnnlib.cli`."""

import sys

from rnnlib.cli import main

sys.exit(main())
