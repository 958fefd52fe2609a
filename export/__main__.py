"""``python -m export``: see export/pipeline.py."""
import sys

from export.pipeline import main

sys.exit(main())
