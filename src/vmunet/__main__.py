import sys

from vmunet.cli import main

sys.exit(main())
