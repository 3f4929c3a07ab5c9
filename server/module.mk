# server/: see DESIGN.md §2.
LIB_SRCS += $(sort $(wildcard server/*.c))
