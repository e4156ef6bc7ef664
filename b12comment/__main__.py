import sys

from b12comment.launch import main

sys.exit(main())
