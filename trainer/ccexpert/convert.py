"""``python -m trainer.ccexpert.convert``, the documented command: :mod:`trainer.models.ccexpert.convert`."""

import sys

from trainer.models.ccexpert.convert import main


if __name__ == "__main__":
    sys.exit(main())
