# model/: see DESIGN.md §2.
LIB_SRCS += $(sort $(wildcard model/*.c))
