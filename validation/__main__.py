"""Entry point: ``python -m validation SUBCOMMAND ...``."""

import sys

from validation.cli import main

sys.exit(main())
