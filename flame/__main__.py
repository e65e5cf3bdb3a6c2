import sys

from flame.app.cli import main

sys.exit(main())
