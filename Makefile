# The two commands of the README's quick start.
.PHONY: demo test

# Install what firelet needs, build (or reuse) the guest kernel and rootfs, boot a demo microVM.
demo:
	@scripts/setup
	@.venv/bin/firelet demo

# Install the test dependencies and run the whole test suite (what CI runs).
test:
	@scripts/test
