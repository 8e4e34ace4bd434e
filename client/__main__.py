"""``python -m client`` runs the ``qsecret`` command."""

import sys

from client.cli.entry import main

sys.exit(main())
