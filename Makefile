# The two commands of the README: `make demo` and `make test`. Both install what they need first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# openssh-server: the script jig's SSH tests. The virtual lab (`make demo`, the e2e tests): a kernel
# and busybox-static for the discovery image, qemu (with its iPXE NIC ROMs, ipxe-qemu), dnsmasq's
# binary (dnsmasq-base: no system-wide DNS service), iPXE's undionly.kpxe/ipxe.efi, iproute2.
# OS deployment: fdisk (sfdisk, copied into the discovery image to partition disks), mmdebstrap (builds
# the OS images), ovmf (UEFI lab VMs), openssh-client (`crowbar nodes ssh`, the script jig).
# The lab's IPMI BMCs (crowbar lab up --bmc ipmi, the ipmi driver tests): openipmi (ipmi_sim), nftables
# (a BMC's configured address answers on UDP 623), ipmitool (in-band BMC reads in the discovery image).
# puppet: the puppet jig's tests run `puppet apply` here (Debian 12's Puppet 7; Chef is not packaged).
# The web UI: chromium (the browser the UI tests drive through Playwright, whose own browser download
# is not reachable). `make web` needs an npm command: Debian's npm package, unless one is there already
# (a Node.js from elsewhere brings its own, and its package conflicts with Debian's npm).
# Online mode (docs/online-mode.md): apt-cacher-ng, the nodes' apt proxy (crowbar server --proxies runs its
# own instance with its own config; the tests put it on free loopback ports). tinyproxy and socat: the lab's
# uplink (crowbar/lab/uplink.py), the lab admin server's one way out to the mirror and PyPI.
APT_PACKAGES := openssh-server linux-image-amd64 busybox-static qemu-system-x86 ipxe-qemu dnsmasq-base ipxe iproute2 fdisk \
	mmdebstrap ovmf openssh-client openipmi ipmitool nftables puppet chromium apt-cacher-ng \
	tinyproxy socat zstd

.PHONY: demo test deps venv web benchmark clean ui-screenshots test-openstack

demo: deps venv web
	$(BIN)/python -m crowbar.demo

test: deps venv web
	scripts/run-tests.sh

# OpenStack Neutron deployed by Crowbar onto two lab VMs, a tenant network on VLAN 501 between them
# (tests/lab/test_lab_neutron.py; about half an hour under emulation, so not in `make test`)
test-openstack: deps venv web
	scripts/run-tests.sh -m openstack tests/lab/test_lab_neutron.py

benchmark: deps venv web
	scripts/run-benchmarks.sh

# The screenshots in docs/ui.md (docs/ui/*.png), taken by a browser test of every page.
ui-screenshots: deps venv web
	CROWBAR_UI_SCREENSHOTS=$(CURDIR)/docs/ui $(BIN)/python -m pytest -q -p no:cacheprovider tests/web/test_ui_screenshots.py

# The web UI's third-party scripts, at the versions package-lock.json pins, copied where the server
# serves them (crowbar/web/static/vendor/, not committed: built here from the lock file).
WEB := crowbar/web
VENDOR := $(WEB)/static/vendor
web: $(VENDOR)/.built

$(VENDOR)/.built: $(WEB)/package.json $(WEB)/package-lock.json
	@command -v npm >/dev/null || { DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm; }
	cd $(WEB) && npm ci --no-audit --no-fund --ignore-scripts
	mkdir -p $(VENDOR)
	cp $(WEB)/node_modules/cytoscape/dist/cytoscape.min.js $(WEB)/node_modules/elkjs/lib/elk.bundled.js \
	  $(WEB)/node_modules/cytoscape-elk/dist/cytoscape-elk.js $(VENDOR)/
	cat $(WEB)/node_modules/cytoscape/LICENSE $(WEB)/node_modules/elkjs/LICENSE.md \
	  $(WEB)/node_modules/cytoscape-elk/LICENSE > $(VENDOR)/LICENSES.txt
	touch $@

deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

venv: $(BIN)/.installed

$(BIN)/.installed: pyproject.toml
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv python3-pip && $(PYTHON) -m venv $(VENV); }
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

clean:
	rm -rf $(VENV) build *.egg-info $(WEB)/node_modules $(VENDOR)
