"""`python -m xregion.infra.deploy`: render, check or (in a container) create buckets."""

import sys

from .generate import main

sys.exit(main())
