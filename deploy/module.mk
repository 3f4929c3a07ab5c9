# deploy/: the Debian package.
#
#   make deb     build/deb/flotilla_$(VERSION)_<arch>.deb with dpkg-buildpackage
#   make deb CROSS=aarch64-linux-gnu   the same for arm64 (dpkg-buildpackage
#                -a arm64, against the multiarch libraries that
#                deploy/install-deps.sh --cross arm64 installs)
#
# The packaging lives in deploy/debian/. The source tree (without build/,
# results/ and .git) is copied to build/deb/flotilla-$(VERSION)/ with
# deploy/debian/ as its debian/, and the package is built there, so the
# source tree never gets a debian/ directory. Needs debhelper, dpkg-dev and
# fakeroot (deploy/install-deps.sh). DEB_JOBS sets the parallel build jobs.
DEB_DIR  := build/deb$(if $(CROSS),-$(CROSS_DEBARCH))
DEB_SRC  := $(DEB_DIR)/flotilla-$(VERSION)
DEB_JOBS ?= 2
DEB_ARCH := $(if $(CROSS),$(CROSS_DEBARCH),$(shell dpkg-architecture -qDEB_HOST_ARCH))
DEB_ARCH_ARGS := $(if $(CROSS),-a$(CROSS_DEBARCH))
DEB_CHANGELOG_VERSION = $(shell dpkg-parsechangelog -l deploy/debian/changelog -S Version)

.PHONY: deb
deb:
	$(Q)if [ "$(DEB_CHANGELOG_VERSION)" != "$(VERSION)" ]; then \
	  echo "deb: deploy/debian/changelog is at $(DEB_CHANGELOG_VERSION), the Makefile at $(VERSION)" >&2; exit 1; fi
	$(Q)rm -rf $(DEB_DIR) && mkdir -p $(DEB_SRC)
	@echo "  COPY    source tree -> $(DEB_SRC)"
	$(Q)tar -c --exclude=./build --exclude=./results --exclude=./.git \
	  --exclude=./debian -f - . | tar -x -C $(DEB_SRC) -f -
	$(Q)cp -r deploy/debian $(DEB_SRC)/debian
	@echo "  DPKG    $(DEB_DIR)/flotilla_$(VERSION)_$(DEB_ARCH).deb"
	$(Q)cd $(DEB_SRC) && env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL \
	  dpkg-buildpackage -b -us -uc -J$(DEB_JOBS) $(DEB_ARCH_ARGS) > ../build.log 2>&1 \
	  || { tail -40 ../build.log >&2; echo "deb: failed, see $(DEB_DIR)/build.log" >&2; exit 1; }
	$(Q)ls -l $(DEB_DIR)/*.deb
