"""`python -m synthehr.agent.cli` runs the command line."""

from synthehr.agent.cli.main import main

if __name__ == "__main__":  # pragma: no cover
    main()
