"""`python -m rnnlib ...`: see `rnnlib.run.cli`."""

import sys

from rnnlib.run.cli import main

sys.exit(main())
