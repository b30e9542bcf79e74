"""``python -m SyntheticContrastLib.cli``: how torchrun and Slicer's PythonSlicer start the command line."""

import sys

from . import main

sys.exit(main())
