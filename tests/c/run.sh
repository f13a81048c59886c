#!/bin/sh
# Run C test programs: exit 0 passes, 77 skips, anything else fails.
pass=0 skip=0 fail=0
for t in "$@"; do
	out=$("$t" 2>&1)
	rc=$?
	name=$(basename "$t")
	case $rc in
	0) pass=$((pass + 1)); echo "PASS $name" ;;
	77) skip=$((skip + 1)); echo "SKIP $name: $(echo "$out" | tail -n 1)" ;;
	*) fail=$((fail + 1)); echo "FAIL $name (exit $rc)"; echo "$out" | sed 's/^/    /' ;;
	esac
done
echo "C tests: $pass passed, $skip skipped, $fail failed"
[ "$fail" -eq 0 ]
