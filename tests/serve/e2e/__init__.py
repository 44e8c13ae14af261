"""Browser tests of the served page (opt-in: `make test-e2e`); a package so its conftest keeps its own name."""
