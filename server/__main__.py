import sys

from server.running.cli import main

sys.exit(main())
