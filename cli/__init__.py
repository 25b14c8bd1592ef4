"""The `diffit` command line (installed as the import package ``diffit_cli``)."""
