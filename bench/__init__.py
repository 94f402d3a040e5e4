"""Benchmarks of swarmd against supervisord and circus (`make bench`; never part of `make test`)."""
