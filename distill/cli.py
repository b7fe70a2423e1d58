"""``python -m distill.cli`` (the CLI lives in :mod:`distill.app.cli`)."""

from distill.app.cli import app, main

__all__ = ["app", "main"]

if __name__ == "__main__":
    main()
