# sim/: see DESIGN.md §2.
LIB_SRCS += $(sort $(wildcard sim/*.c))
