"""``python -m streamer.cli``: the ``harstream`` command without its installed script (the tests and
a checkout that was never installed use it)."""

from streamer.cli.main import main

raise SystemExit(main())
