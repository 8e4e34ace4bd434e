"""``python -m client`` runs the ``qsecret`` command."""

import sys

from client.cli import main

sys.exit(main())
