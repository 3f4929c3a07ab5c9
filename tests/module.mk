# tests/: one Check runner with a suite per module (tests/unit/check_<module>.c),
# and libFuzzer targets (tests/fuzz/fuzz_<name>.c).

TEST_UNIT_SRCS := $(sort $(wildcard tests/unit/check_*.c))
TEST_SUITES    := $(patsubst tests/unit/check_%.c,%,$(TEST_UNIT_SRCS))
TEST_OBJS      := $(TEST_UNIT_SRCS:%.c=$(BUILD)/%.o) \
                  $(BUILD)/tests/unit/runner.o $(BUILD)/tests/unit/testutil.o \
                  $(BUILD)/gen/tests/suites.o
TEST_BIN       := $(BUILD)/tests/check_all

$(BUILD)/tests/%.o: CFLAGS += $(CHECK_CFLAGS) -Wno-missing-prototypes

# The list of suites is generated from the file names, so adding
# tests/unit/check_foo.c (defining check_foo_suite) is all it takes.
$(BUILD)/gen/tests/suites.c: $(TEST_UNIT_SRCS) tests/module.mk
	@mkdir -p $(dir $@)
	$(Q){ echo '#include <check.h>'; \
	  for s in $(TEST_SUITES); do echo "Suite *check_$${s}_suite(void);"; done; \
	  echo 'Suite *(*const fl_test_suites[])(void) = {'; \
	  for s in $(TEST_SUITES); do echo "    check_$${s}_suite,"; done; \
	  echo '    0};'; \
	  echo 'const char *const fl_test_suite_names[] = {'; \
	  for s in $(TEST_SUITES); do echo "    \"$${s}\","; done; \
	  echo '    0};'; } > $@

$(BUILD)/gen/tests/suites.o: CFLAGS += $(CHECK_CFLAGS)

$(TEST_BIN): $(TEST_OBJS) $(LIB)
	@mkdir -p $(dir $@)
	@echo "  LINK    $@"
	$(Q)$(CC) $(LDFLAGS) -o $@ $(TEST_OBJS) $(LIB) $(CHECK_LIBS) $(LDLIBS_BASE)

# Tests find the binary and the sources through these.
# One OpenBLAS thread: tests are deterministic and do not fight over the
# cores (and OpenBLAS's threads hang under qemu-user in cross builds).
TEST_ENV := FL_BUILD=$(abspath $(BUILD)) FL_SRCDIR=$(CURDIR) FL_PYTHON=$(PYTHON) \
            OPENBLAS_NUM_THREADS=1 \
            FL_EXEC_WRAPPER="$(TEST_EXEC)" \
            $(if $(CROSS),CK_TIMEOUT_MULTIPLIER=$${CK_TIMEOUT_MULTIPLIER:-3}) \
            CK_DEFAULT_TIMEOUT=$${CK_DEFAULT_TIMEOUT:-600} \
            ASAN_OPTIONS=$${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1} \
            UBSAN_OPTIONS=$${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

.PHONY: run-check
run-check: $(TEST_BIN) $(BIN) $(CHECK_DEPS)
	$(Q)$(TEST_ENV) $(TEST_EXEC) $(TEST_BIN) $(SUITE)

# ---- fuzzing (clang + libFuzzer) -------------------------------------------
FUZZ_BUILD  := build/fuzz
FUZZ_CC     ?= clang
FUZZ_FLAGS  := -fsanitize=address,undefined -fno-sanitize-recover=all
FUZZ_CFLAGS  = -std=c11 -D_GNU_SOURCE -g -O1 -I. -I$(BUILD)/gen $(PKG_CFLAGS) \
               -DFL_VERSION=\"$(VERSION)\" -DFL_FUZZING $(FUZZ_FLAGS) -fsanitize=fuzzer-no-link
FUZZ_SRCS   := $(sort $(wildcard tests/fuzz/fuzz_*.c))
FUZZ_NAMES  := $(patsubst tests/fuzz/fuzz_%.c,%,$(FUZZ_SRCS))
# make fuzz FUZZ_TARGETS="frame secagg" runs only those.
FUZZ_TARGETS ?= $(FUZZ_NAMES)
FUZZ_BINS   := $(FUZZ_NAMES:%=$(FUZZ_BUILD)/fuzz_%)
FUZZ_LIBOBJS := $(LIB_SRCS:%.c=$(FUZZ_BUILD)/obj/%.o) \
                $(GEN_SRCS:$(BUILD)/gen/%.c=$(FUZZ_BUILD)/obj/gen/%.o)

$(FUZZ_BUILD)/obj/gen/%.o: $(BUILD)/gen/%.c | $(GEN_HDRS)
	@mkdir -p $(dir $@)
	@echo "  FUZZCC  $<"
	$(Q)$(FUZZ_CC) $(FUZZ_CFLAGS) -MMD -MP -c -o $@ $<

$(FUZZ_BUILD)/obj/%.o: %.c | $(GEN_HDRS)
	@mkdir -p $(dir $@)
	@echo "  FUZZCC  $<"
	$(Q)$(FUZZ_CC) $(FUZZ_CFLAGS) -MMD -MP -c -o $@ $<

$(FUZZ_BUILD)/fuzz_%: $(FUZZ_BUILD)/obj/tests/fuzz/fuzz_%.o $(FUZZ_LIBOBJS)
	@echo "  FUZZLD  $@"
	$(Q)$(FUZZ_CC) $(FUZZ_FLAGS) -fsanitize=fuzzer -o $@ $^ $(LDLIBS_BASE)

.PHONY: fuzz fuzz-build
fuzz-build: $(FUZZ_BINS)

# Each target runs FUZZ_RUNS executions from its seed corpus (copied, so the
# repository is never written); a finding fails the target. Inputs are at
# most 64 KiB, except where a target's messages are small: longer inputs
# only slow those down as the corpus grows (secagg's recorded messages are
# a few hundred bytes, as are agent's and peer's records; a tokenizer image
# of the byte vocabulary is 2.3 KB).
fuzz: $(FUZZ_TARGETS:%=$(FUZZ_BUILD)/fuzz_%)
	$(Q)for n in $(FUZZ_TARGETS); do \
	  work=$$(mktemp -d); \
	  if [ -d tests/fuzz/corpus/$$n ]; then cp -r tests/fuzz/corpus/$$n/. $$work/; fi; \
	  case $$n in secagg|agent|peer) ml=4096 ;; tokenizer) ml=8192 ;; *) ml=65536 ;; esac; \
	  echo "  FUZZ    $$n ($(FUZZ_RUNS) runs, inputs up to $$ml bytes)"; \
	  $(FUZZ_BUILD)/fuzz_$$n -runs=$(FUZZ_RUNS) -max_len=$$ml -print_final_stats=1 \
	     -artifact_prefix=$(FUZZ_BUILD)/crash-$$n- $$work 2>$(FUZZ_BUILD)/$$n.log \
	     || { tail -40 $(FUZZ_BUILD)/$$n.log; rm -rf $$work; exit 1; }; \
	  grep -E 'stat::number_of_executed_units' $(FUZZ_BUILD)/$$n.log; \
	  rm -rf $$work; \
	done

# ---- fault injection: make check-faults (tests/faults/) ----------------------
# A real server and client daemons over TLS on loopback, under SIGKILLs, a
# proxy that damages bytes, slow-loris and idle connections; prints its
# counts. Separate from make check (it takes minutes).
FAULTS_BIN := $(BUILD)/tests/faults/faults

$(FAULTS_BIN): $(BUILD)/tests/faults/faults.o $(LIB)
	@mkdir -p $(dir $@)
	@echo "  LINK    $@"
	$(Q)$(CC) $(LDFLAGS) -o $@ $(BUILD)/tests/faults/faults.o $(LIB) $(LDLIBS_BASE)

all: $(FAULTS_BIN)

.PHONY: check-faults
check-faults: $(BIN) $(FAULTS_BIN)
	$(Q)OPENBLAS_NUM_THREADS=1 $(FAULTS_BIN) $(abspath $(BIN)) $(CURDIR)

# ---- fuzz-short: the CI fuzz campaign --------------------------------------
# Builds every target and runs each from a copy of its seed corpus for at
# most FUZZ_SHORT_RUNS executions or FUZZ_SHORT_SECONDS seconds, whichever
# comes first: the fast targets finish their runs in a few seconds, the slow
# ones (secagg, tokenizer, net_stream, config) stop at the time limit. Sized
# so that the whole campaign takes about 3 to 4 minutes on 2 cores
# (docs/SECURITY.md has the measured figures and the long campaign). A
# finding fails the target; its input is kept as build/fuzz/crash-<name>-*.
# The seed is fixed: every CI run fuzzes a prefix of the same sequence, so
# a finding there is reproducible here.
FUZZ_SHORT_RUNS    ?= 500000
FUZZ_SHORT_SECONDS ?= 30

.PHONY: fuzz-short
fuzz-short: $(FUZZ_BINS)
	$(Q)for n in $(FUZZ_NAMES); do \
	  if [ ! -d tests/fuzz/corpus/$$n ]; then \
	    echo "fuzz-short: no seed corpus tests/fuzz/corpus/$$n" >&2; exit 1; fi; \
	  work=$$(mktemp -d); cp -r tests/fuzz/corpus/$$n/. $$work/; \
	  start=$$(date +%s); \
	  $(FUZZ_BUILD)/fuzz_$$n -seed=1 -runs=$(FUZZ_SHORT_RUNS) \
	     -max_total_time=$(FUZZ_SHORT_SECONDS) -max_len=65536 \
	     -print_final_stats=1 -artifact_prefix=$(FUZZ_BUILD)/crash-$$n- \
	     $$work 2>$(FUZZ_BUILD)/short-$$n.log \
	     || { tail -40 $(FUZZ_BUILD)/short-$$n.log; rm -rf $$work; exit 1; }; \
	  printf '  FUZZ    %-18s %9s runs  %3ss\n' $$n \
	     "$$(sed -n 's/^stat::number_of_executed_units: *//p' $(FUZZ_BUILD)/short-$$n.log)" \
	     $$(( $$(date +%s) - start )); \
	  rm -rf $$work; \
	done
