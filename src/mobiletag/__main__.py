import sys

from mobiletag.cli import main

sys.exit(main())
