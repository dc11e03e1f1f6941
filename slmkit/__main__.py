import sys

from slmkit.cli import main

sys.exit(main())
