# tests/deploy/lib.sh — what the package smoke tests share, sourced after
# setting `name` (the prefix of their messages): the arguments
# (--no-build, --help), say and fail, and a temporary directory `tmp` that
# is removed on exit together with the server in `server_pid`; a script may
# define `cleanup_more` to undo more (it runs first).
build=1
for a in "$@"; do
    case "$a" in
        --no-build) build=0 ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) echo "$name: unknown argument '$a'" >&2; exit 2 ;;
    esac
done

say() { echo "$name: $*"; }
fail() { echo "$name: FAIL: $*" >&2; exit 1; }
cleanup_more() { :; }

cd "$(dirname "$0")/../.."
[ -f deploy/debian/control ] || fail "run from the flotilla source tree"
version=$(sed -n 's/^VERSION *:= *//p' Makefile)

tmp=$(mktemp -d)
server_pid=""
cleanup() {
    rc=$?
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
        kill -KILL "$server_pid" 2>/dev/null || true
    fi
    cleanup_more
    rm -rf "$tmp"
    if [ "$rc" = 0 ]; then say "PASS"; else say "failed (status $rc)"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 1' INT TERM
