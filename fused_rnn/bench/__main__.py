"""``python -m fused_rnn.bench [options]``, the same as ``python -m fused_rnn bench``."""
import sys

from .cli import main

sys.exit(main())
