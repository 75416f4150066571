"""`python -m cairn` runs the command line, for when the `cairn` script is not on PATH."""

from cairn.cli.main import main

if __name__ == "__main__":
    main()
