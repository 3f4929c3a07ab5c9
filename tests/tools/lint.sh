#!/bin/sh
# make lint: the committed .clang-format, and a ban on unsafe libc calls.
set -u
cd "$(dirname "$0")/../.."
files=$(git ls-files --cached --others --exclude-standard '*.c' '*.h')
status=0
if ! clang-format --dry-run --Werror $files 2>/tmp/fl-lint.$$; then
    head -40 /tmp/fl-lint.$$
    echo "lint: formatting differs from .clang-format (run 'make format')" >&2
    status=1
fi
rm -f /tmp/fl-lint.$$
# Banned: unbounded or unchecked string and number functions.
banned='\b(sprintf|vsprintf|strcpy|strcat|strtok|atoi|atol|atof|gets)[[:space:]]*\('
if grep -nE "$banned" $files | grep -v 'lint-allow'; then
    echo "lint: banned function used (sprintf, strcpy, strcat, strtok, atoi, gets, ...)" >&2
    status=1
fi
[ $status -eq 0 ] && echo "lint: ok ($(echo $files | wc -w) files)"
exit $status
