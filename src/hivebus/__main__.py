"""``python -m hivebus`` is the ``hivebus`` command."""

from hivebus.cli import main

main()
