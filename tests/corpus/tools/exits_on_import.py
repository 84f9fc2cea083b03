"""A tool module that calls sys.exit() at import time: it must not end `voxline check`."""

import sys

sys.exit(7)
