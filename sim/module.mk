# sim/: the fleet simulator. `make sim` runs the default simulated fleet.
LIB_SRCS += $(sort $(wildcard sim/*.c))

SIM_OUT ?= results/default

.PHONY: sim
sim: deps
	$(Q)$(MAKE) --no-print-directory $(BIN)
	$(Q)$(BIN) sim --out $(SIM_OUT)
