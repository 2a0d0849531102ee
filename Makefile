# The two commands of the README.
.PHONY: run test lint bench

run:  ## install everything and start the whole cluster on 127.0.0.1:11434 with the demo model
	./scripts/install.sh
	.venv/bin/caravan serve

test:  ## install everything (with dev tools) and run lint, types and the whole test suite
	./scripts/install.sh dev
	.venv/bin/ruff check .
	.venv/bin/mypy
	.venv/bin/python -m pytest -q -p no:cacheprovider

lint:
	.venv/bin/ruff check .
	.venv/bin/mypy

bench:  ## build the peers (once), then run every benchmark and print one table (see bench/README.md)
	./bench/build_peers.sh
	.venv/bin/python -m bench.run_all
