"""`python -m evpilot`."""

from evpilot.cli import main

raise SystemExit(main())
