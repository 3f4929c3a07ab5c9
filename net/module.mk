# net/: see DESIGN.md §2.
LIB_SRCS += $(sort $(wildcard net/*.c))
