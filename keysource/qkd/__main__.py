"""`python -m keysource.qkd alice|bob ...`: one end of a TCP link (see keysource.qkd.net)."""

import sys

from .net import _main

sys.exit(_main())
