import sys

from function.cli import main

sys.exit(main())
