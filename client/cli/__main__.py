"""``python -m client.cli`` runs the ``qsecret`` command (as ``python -m client`` does)."""

import sys

from client.cli.entry import main

sys.exit(main())
