"""``python -m fastbn.bench``: see ``python -m fastbn.bench --help``."""

import sys

from .cli import main

sys.exit(main())
