"""Puts this checkout first on ``sys.path``: a benchmark measures the code beside it, not
whichever checkout the virtualenv's editable install points at. Imported first, for its effect."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
