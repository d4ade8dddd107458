"""`python -m mimprobe <verb>`: how the workflow's rules run the package."""

import sys

from .cli import main

sys.exit(main())
