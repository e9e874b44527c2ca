"""The bundle's entry point: `medgemma-desktop` exactly as the installed command runs it."""

import sys

from medgemma_desktop.cli import main

sys.exit(main())
