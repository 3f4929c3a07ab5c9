# client/: see DESIGN.md §2.
LIB_SRCS += $(sort $(wildcard client/*.c))
