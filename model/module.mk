# model/: see DESIGN.md §2.
LIB_SRCS += $(sort $(wildcard model/*.c))

# int8 kernels: each ISA's file gets its own flags and compiles to nothing
# on other architectures; kernels.c picks one at run time from the CPU.
FL_HOST_ARCH := $(shell $(CC) -dumpmachine 2>/dev/null)
FL_AVX512_FLAGS := -mavx512f -mavx512bw -mavx512vl -mavx512vnni -mfma
FL_AVX2_FLAGS   := -mavx2 -mfma
# Patterns, so that every build directory gets them: the plain and the
# sanitizer builds (CFLAGS) and the libFuzzer build (FUZZ_CFLAGS).
ifneq ($(findstring x86_64,$(FL_HOST_ARCH)),)
%/model/kernels_avx512.o: CFLAGS += $(FL_AVX512_FLAGS)
%/model/kernels_avx512.o: FUZZ_CFLAGS += $(FL_AVX512_FLAGS)
%/model/kernels_avx2.o: CFLAGS += $(FL_AVX2_FLAGS)
%/model/kernels_avx2.o: FUZZ_CFLAGS += $(FL_AVX2_FLAGS)
endif
ifneq ($(findstring aarch64,$(FL_HOST_ARCH)),)
%/model/kernels_neondot.o: CFLAGS += -march=armv8.2-a+dotprod
%/model/kernels_neondot.o: FUZZ_CFLAGS += -march=armv8.2-a+dotprod
endif

# The NEON kernels' test, cross-compiled for aarch64 (static, so that
# qemu-aarch64 needs no sysroot) and run by tests/unit/check_int8.c under
# qemu-user. Built before the tests run through CHECK_DEPS. The baseline
# file gets plain ARMv8-A; only kernels_neondot.c may use sdot.
NEON_CC     ?= aarch64-linux-gnu-gcc
NEON_BIN    := $(BUILD)/tests/neon/neon_kernels
NEON_CFLAGS := -std=c11 -D_GNU_SOURCE -O2 -g -I. -Wall -Wextra -march=armv8-a
NEON_SRCS   := tests/neon/neon_kernels.c model/kernels.c model/kernels_neon.c \
               common/alloc.c common/error.c common/util.c
NEON_OBJS   := $(NEON_SRCS:%.c=$(BUILD)/aarch64/%.o) \
               $(BUILD)/aarch64/model/kernels_neondot.o

$(BUILD)/aarch64/%.o: %.c
	@mkdir -p $(dir $@)
	@echo "  CC64    $<"
	$(Q)$(NEON_CC) $(NEON_CFLAGS) -MMD -MP -c -o $@ $<

$(BUILD)/aarch64/model/kernels_neondot.o: NEON_CFLAGS += -march=armv8.2-a+dotprod

$(NEON_BIN): $(NEON_OBJS)
	@mkdir -p $(dir $@)
	@echo "  LINK64  $@"
	$(Q)$(NEON_CC) -static -o $@ $^ -lm -lpthread

# Only x86-64 hosts cross-compile and emulate; an aarch64 host runs the
# NEON kernels natively in check_int8 (test_every_kernel_exact).
ifneq ($(findstring x86_64,$(FL_HOST_ARCH)),)
CHECK_DEPS += $(NEON_BIN)
endif
