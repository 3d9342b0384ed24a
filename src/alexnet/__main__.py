import sys

try:
    from alexnet.cli import main
except KeyboardInterrupt:  # Ctrl-C while Python imports the command line
    sys.exit(130)

sys.exit(main())
