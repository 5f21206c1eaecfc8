"""``python -m autooffload``: the same as the ``autooffload`` command."""

from .cli import main

raise SystemExit(main())
