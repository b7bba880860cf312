"""`python -m charlm` is the `charlm` command."""

from charlm.cli import main

if __name__ == "__main__":
    main()
