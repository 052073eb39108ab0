#!/bin/sh
# Counts the bytes of its payload and says where it ran: tests the exec runtime's `./script`.
bytes=$(wc -c | tr -d ' ')
printf '{"bytes": %s, "cwd": "%s", "attempt": %s}\n' "$bytes" "$(pwd)" "$FNSPOOL_ATTEMPT"
