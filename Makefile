# flotilla — one non-recursive Makefile. Each folder adds its sources in its
# own module.mk; objects and binaries go to $(BUILD).
#
#   make              build everything (library, flotilla binary, tests)
#   make check        install missing packages, build, run every Check suite
#   make lint         clang-format check and banned-function check
#   make depcheck     the include rules of DESIGN.md §2
#   make fuzz         libFuzzer targets, FUZZ_RUNS executions each
#   make install      PREFIX=/usr/local DESTDIR=
#
# Variables: V=1 (show commands), CI=true (warnings are errors),
# SAN=address,undefined or SAN=thread (sanitizers), BUILD=dir, CC=cc.

ifeq ($(origin CC),default)
CC := gcc
endif
BUILD    ?= build
PREFIX   ?= /usr/local
DESTDIR  ?=
PKG_CONFIG ?= pkg-config
PYTHON   ?= /usr/bin/python3
FUZZ_RUNS ?= 1000000
VERSION  := 0.1.0

ifeq ($(V),1)
Q :=
else
Q := @
endif

# Sanitizer builds get their own object directory so they never mix with
# the plain build.
comma := ,
# Cross builds (make CROSS=aarch64-linux-gnu): Debian's cross compiler and
# multiarch libraries (deploy/install-deps.sh --cross arm64); the tests run
# under qemu-user.
ifneq ($(CROSS),)
CC := $(CROSS)-gcc
BUILD := $(BUILD)/$(CROSS)
# (override: debhelper names a <triplet>-pkg-config that Debian 12 lacks)
override PKG_CONFIG := PKG_CONFIG_LIBDIR=/usr/lib/$(CROSS)/pkgconfig:/usr/share/pkgconfig pkg-config
# The tests load the multiarch libraries (libc6:arm64 and friends, under /):
# qemu's -L /usr/$(CROSS) would pair the cross toolchain's dynamic loader
# with the multiarch libc, two builds of glibc that deadlock at the first
# fork or thread.
TEST_EXEC := qemu-$(firstword $(subst -, ,$(CROSS))) -L /
CROSS_DEBARCH := $(if $(filter aarch64-%,$(CROSS)),arm64,$(firstword $(subst -, ,$(CROSS))))
endif
# The target machine, for per-architecture kernels in the modules.
TARGET_ARCH_NAME := $(firstword $(subst -, ,$(shell $(CC) -dumpmachine)))
ifneq ($(SAN),)
BUILD := $(BUILD)/san-$(subst $(comma),-,$(SAN))
endif

PKGS := libuv openssl libprotobuf-c libsodium openblas inih jansson
PKG_CFLAGS := $(shell $(PKG_CONFIG) --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell $(PKG_CONFIG) --libs $(PKGS) 2>/dev/null)
CHECK_CFLAGS := $(shell $(PKG_CONFIG) --cflags check 2>/dev/null)
CHECK_LIBS   := $(shell $(PKG_CONFIG) --libs check 2>/dev/null)

WARN := -Wall -Wextra -Wshadow -Wpointer-arith -Wstrict-prototypes \
        -Wmissing-prototypes -Wno-unused-parameter -Wformat=2 -Wvla
ifeq ($(CI),true)
WARN += -Werror
endif

OPT ?= -O2
CFLAGS_BASE := -std=c11 -D_GNU_SOURCE -g $(OPT) -fPIC $(WARN) \
               -I. -I$(BUILD)/gen $(PKG_CFLAGS) -DFL_VERSION=\"$(VERSION)\"
LDLIBS_BASE := $(PKG_LIBS) -lpthread -lm

ifneq ($(SAN),)
SANFLAGS := -fsanitize=$(SAN) -fno-omit-frame-pointer -fno-sanitize-recover=all
CFLAGS_BASE += $(SANFLAGS)
LDFLAGS += $(SANFLAGS)
endif

ALL_CFLAGS = $(CFLAGS_BASE) $(CFLAGS)

# Filled in by the module.mk files.
LIB_SRCS :=
GEN_SRCS :=
CLI_SRCS :=
GEN_HDRS :=
TEST_SRCS :=
FUZZ_SRCS :=
CHECK_DEPS :=

LIB := $(BUILD)/libflotilla.a
BIN := $(BUILD)/flotilla

include $(sort $(wildcard */module.mk))

# Nothing built here is a throw-away intermediate (generated code, fuzz objects).
.SECONDARY:

LIB_OBJS  := $(LIB_SRCS:%.c=$(BUILD)/%.o) $(GEN_SRCS:%.c=%.o)
CLI_OBJS  := $(CLI_SRCS:%.c=$(BUILD)/%.o)

.PHONY: all check lint depcheck fuzz install clean deps sim format
.DEFAULT_GOAL := all

all: $(BIN) $(TEST_BIN)

$(LIB): $(LIB_OBJS)
	@echo "  AR      $@"
	$(Q)rm -f $@ && ar rcs $@ $^

$(BIN): $(CLI_OBJS) $(LIB)
	@echo "  LINK    $@"
	$(Q)$(CC) $(LDFLAGS) -o $@ $(CLI_OBJS) $(LIB) $(LDLIBS_BASE)

# Every object waits for the generated headers (order-only), so the first
# build works before -MMD has written any dependency file.
$(BUILD)/%.o: %.c | $(GEN_HDRS)
	@mkdir -p $(dir $@)
	@echo "  CC      $<"
	$(Q)$(CC) $(ALL_CFLAGS) -MMD -MP -c -o $@ $<

$(BUILD)/gen/%.o: $(BUILD)/gen/%.c | $(GEN_HDRS)
	@mkdir -p $(dir $@)
	@echo "  CC      $<"
	$(Q)$(CC) $(ALL_CFLAGS) -Wno-missing-prototypes -MMD -MP -c -o $@ $<

DEPS_ARGS := $(if $(CROSS),--cross $(CROSS_DEBARCH))
deps:
	$(Q)deploy/install-deps.sh --check $(DEPS_ARGS) >/dev/null 2>&1 || deploy/install-deps.sh $(DEPS_ARGS)

check: deps
	$(Q)$(MAKE) --no-print-directory all
	$(Q)$(MAKE) --no-print-directory run-check

lint:
	$(Q)tests/tools/lint.sh

depcheck:
	$(Q)$(PYTHON) tests/tools/depcheck.py

format:
	$(Q)clang-format -i $$(git ls-files --cached --others --exclude-standard '*.c' '*.h')

# The binary, the man page, example configurations, systemd units and docs.
SYSTEMD_UNIT_DIR ?= $(PREFIX)/lib/systemd/system
install: $(BIN)
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/man/man1 \
	  $(DESTDIR)$(PREFIX)/share/doc/flotilla/examples $(DESTDIR)$(SYSTEMD_UNIT_DIR)
	install -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/flotilla
	install -m 0644 docs/man/flotilla.1 $(DESTDIR)$(PREFIX)/share/man/man1/flotilla.1
	install -m 0644 deploy/*.example.ini $(DESTDIR)$(PREFIX)/share/doc/flotilla/examples/
	install -m 0755 deploy/make-ca.sh $(DESTDIR)$(PREFIX)/share/doc/flotilla/examples/
	install -m 0644 deploy/systemd/*.service $(DESTDIR)$(SYSTEMD_UNIT_DIR)/
	install -m 0644 README.md $$(ls docs/*.md) $(DESTDIR)$(PREFIX)/share/doc/flotilla/

clean:
	rm -rf build

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
