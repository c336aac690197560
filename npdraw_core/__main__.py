"""`python -m npdraw_core ...` is `npdraw ...`."""

import sys

from npdraw_core.cli import main

sys.exit(main())
