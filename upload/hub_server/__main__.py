"""``python -m upload.hub_server``: what ``upload.loopback.serve_hub`` starts (same flags as ``geollava-hub``)."""

import sys

from upload.hub_server.cli import main


sys.exit(main())
