import sys

from b12comment.cli import main

sys.exit(main())
