"""pytest-benchmark suite for cbn (see conftest.py). A package, so that its conftest does not
shadow tests/conftest.py when both directories are collected in one run."""
