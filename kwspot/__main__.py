"""``python -m kwspot``."""

import sys

try:
    from kwspot.cli import main
except KeyboardInterrupt:  # Ctrl-C while Python is still importing: as quiet as later on
    sys.exit(130)

sys.exit(main())
