"""``python -m tlmic``: the ``tlmic`` command line (as the console script runs it)."""

from tlmic_cli.main import main

if __name__ == "__main__":
    main()
