# artifact/: signed model versions (DESIGN.md §4 "Model artifacts").
LIB_SRCS += $(sort $(wildcard artifact/*.c))
