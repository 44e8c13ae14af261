"""`python -m wavslm.serve`: the same as `wavslm serve`."""

from .command import main

raise SystemExit(main())
