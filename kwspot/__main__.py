"""``python -m kwspot``."""

import sys

from kwspot.cli import main

sys.exit(main())
