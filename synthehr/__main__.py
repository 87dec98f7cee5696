"""`python -m synthehr` runs the command line."""

from synthehr.agent.cli.main import main

if __name__ == "__main__":  # pragma: no cover
    main()
