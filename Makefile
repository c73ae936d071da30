# The README's commands. `make help` lists them.
.PHONY: help demo test bench lint

help:  ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

demo:  ## install what is missing, then run the whole system with a live view
	@scripts/bootstrap
	cpo demo

test:  ## install what is missing, then run the whole test suite
	@scripts/bootstrap
	python3 -m pytest -q -ra -n 2 --dist loadfile -m 'not alone'  # two processes, a file each
	python3 -m pytest -q -ra -m alone

bench:  ## install what is missing, then run the throughput and latency benchmark
	@scripts/bootstrap
	python3 -m bench

lint:  ## ruff over the package and tests
	python3 -m ruff check streams tests bench
