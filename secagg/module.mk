# secagg/: see DESIGN.md §2.
LIB_SRCS += $(sort $(wildcard secagg/*.c))
