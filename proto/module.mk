# proto/: the wire protocol. The protobuf-c code is generated at build time.
GEN_HDRS += $(BUILD)/gen/proto/flotilla.pb-c.h
GEN_SRCS += $(BUILD)/gen/proto/flotilla.pb-c.c
LIB_SRCS += $(sort $(wildcard proto/*.c))

$(BUILD)/gen/%.pb-c.c $(BUILD)/gen/%.pb-c.h: %.proto
	@mkdir -p $(BUILD)/gen
	@echo "  PROTOC  $<"
	$(Q)protoc-c --proto_path=. --c_out=$(BUILD)/gen $<
