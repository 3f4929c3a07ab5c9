# compress/: see DESIGN.md §2.
LIB_SRCS += $(sort $(wildcard compress/*.c))

# The kernels (clipping, quantization, the Hadamard butterflies, the ring,
# r-bit packing) are written as plain loops for the auto-vectorizer: -O3
# turns it on fully. Contraction into FMA stays off so every build and
# every CPU produce the same bits (the fast kernels are tested against the
# references for equality).
$(BUILD)/compress/%.o $(BUILD)/common/bitpack.o: CFLAGS += -O3 -ffp-contract=off
