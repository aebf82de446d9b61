import sys

from sdflow.cli import main

sys.exit(main())
