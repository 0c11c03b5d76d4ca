"""``python -m bnbook.grading``: see :func:`bnbook.grading.cli.main`."""

from bnbook.grading.cli import main

raise SystemExit(main())
