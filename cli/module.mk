# cli/: the flotilla entry point and subcommand dispatch.
CLI_SRCS += $(sort $(wildcard cli/*.c))
