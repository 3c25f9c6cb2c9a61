"""``python -m agent.cli``: the console script."""

import sys

from agent.cli.main import main

sys.exit(main())
