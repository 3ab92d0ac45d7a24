"""`python -m camcaffe.cli ...` runs the command line."""

import sys

from camcaffe.cli.main import main

sys.exit(main())
