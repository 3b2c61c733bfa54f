"""`python -m rnnlib ...`: see `rnnlib.cli`."""

import sys

from rnnlib.run.cli import main

sys.exit(main())
