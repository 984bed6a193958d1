"""`python -m tui --broker mqtt://host:port --site SITE`."""

import sys

from tui.cli import main

sys.exit(main(sys.argv[1:]))
