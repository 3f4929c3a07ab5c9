# secagg/: see DESIGN.md §2.
LIB_SRCS += $(sort $(wildcard secagg/*.c))
# The mask kernels need the loop vectoriser, which gcc runs in full at -O3.
$(BUILD)/secagg/crypto.o: CFLAGS += -O3
