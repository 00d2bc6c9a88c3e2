"""`python -m score_diffusers ...` runs the `score-diffusers` command."""

import sys

from .cli import main

sys.exit(main())
