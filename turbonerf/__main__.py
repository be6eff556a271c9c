"""``python -m turbonerf``: the same as the ``turbonerf`` command (and what torchrun can launch)."""

import sys

from turbonerf.cli.main import main

sys.exit(main())
