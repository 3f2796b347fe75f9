"""``python -m bnpo.verl.preflight``: see ``bnpo.verl.preflight.run``."""

import sys

from .run import main

sys.exit(main())
