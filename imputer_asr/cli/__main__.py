"""``python -m imputer_asr.cli``: the imputer-asr command."""

import sys

from imputer_asr.cli import main

sys.exit(main())
