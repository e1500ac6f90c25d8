"""``python -m faceveil.cli``: the command line, for launchers (torchrun, accelerate launch -m)."""

import sys

from faceveil.cli import main

sys.exit(main())
