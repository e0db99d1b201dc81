"""The project's tests: a regular package, so a distribution that installs a top-level ``tests`` cannot shadow it."""
