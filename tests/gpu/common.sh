# tests/gpu/common.sh — what tests/gpu/run.sh and run_audit_shared.sh share: finding
# libcuda, the log and RESULT-row files, the per-scenario runner (timeouts,
# the suite deadline, RESULT collection) and the results table. Sourced, not
# run: it only defines functions; nothing happens until a script calls them.
#
# The functions read and set the calling script's globals:
#   WORK      a private temporary folder (the script makes and removes it)
#   OUT       optional: where the log and the table are also written
#   DEADLINE  seconds after START when run_scn stops starting scenarios
#   TABLE_DETAIL_MAX  longest detail shown in a table row (the log has it all)
#   set by init_files: LOGDIR LOG ROWS BENCH START
#
# Two hooks, no-ops here, a script may redefine after sourcing:
#   scn_env MODE           fills the array `envs` (local to run_scn) with the
#                          command prefix MODE runs CMD under (e.g. env ...)
#   scn_collect MODE OUT   files a finished scenario's non-RESULT lines (e.g.
#                          BENCH rows) from its output file OUT
# and one variable: SCN_LOG_DROP, when set, a grep pattern for output lines
# left out of the log (those the table shows anyway).

# find_libcuda: LIBCUDA_DIR, else /usr/local/nvidia/lib64 when it exists,
# goes first on LD_LIBRARY_PATH; unset and absent, the loader's default.
find_libcuda() {
    LIBCUDA_DIR=${LIBCUDA_DIR:-}
    [ -z "$LIBCUDA_DIR" ] && [ -d /usr/local/nvidia/lib64 ] && LIBCUDA_DIR=/usr/local/nvidia/lib64
    if [ -n "$LIBCUDA_DIR" ]; then
        export LD_LIBRARY_PATH=$LIBCUDA_DIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    fi
}

# init_files LOGNAME: the log ($OUT/LOGNAME, else in $WORK), the RESULT rows
# and the benchmark rows, all emptied; the suite's clock starts.
init_files() {
    LOGDIR=${OUT:-$WORK}
    mkdir -p "$LOGDIR"
    LOG=$LOGDIR/$1
    ROWS=$WORK/rows       # scenario|mode|result|detail
    BENCH=$WORK/bench     # benchmark table rows
    : >"$LOG"; : >"$ROWS"; : >"$BENCH"
    START=$SECONDS
}

say() { echo "$@" | tee -a "$LOG"; }
row() { printf '%s|%s|%s|%s\n' "$1" "$2" "$3" "$4" >>"$ROWS"; }

# gpu_header TITLE [BUILD_EXTRA]: the log's opening lines; sets GPU_LINE
# (nvidia-smi's first GPU, empty without it) for the table's title.
gpu_header() {
    say "$1"
    say "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    say "build: $B   libcuda from: ${LIBCUDA_DIR:-the default library path}${2:-}"
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee -a "$LOG"
    else
        say "nvidia-smi: not found"
    fi
    GPU_LINE=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)
}

scn_env() { :; }
scn_collect() { :; }

# run_scn NAME MODE TIMEOUT CMD... : runs one scenario under its timeout (cut
# to what is left before the suite deadline; with under 15 s left it is not
# run, a FAIL row) and files its RESULT|check|status|detail lines as rows
# NAME/check (NAME alone when check is NAME). A timeout, a non-zero exit with
# no FAIL row, or no rows at all is a FAIL row too.
run_scn() {
    local name=$1 mode=$2 tmo=$3
    shift 3
    local left=$((DEADLINE - (SECONDS - START)))
    if [ "$left" -lt 15 ]; then
        row "$name" "$mode" FAIL "not run: suite deadline (${DEADLINE}s) reached"
        say "[$((SECONDS - START))s] $name [$mode]: SKIPPED (deadline)"
        return
    fi
    [ "$tmo" -gt "$left" ] && tmo=$left
    local out=$WORK/out.$name.$mode envs=()
    scn_env "$mode"
    echo "### $name [$mode] (timeout ${tmo}s): $*" >>"$LOG"
    local t0=$SECONDS rc
    timeout -k 5 "$tmo" ${envs[@]+"${envs[@]}"} "$@" >"$out" 2>&1
    rc=$?
    if [ -n "${SCN_LOG_DROP:-}" ]; then
        grep -av "$SCN_LOG_DROP" "$out" >>"$LOG"
    else
        cat "$out" >>"$LOG"
    fi
    echo "### exit $rc after $((SECONDS - t0))s" >>"$LOG"
    local n=0 fails=0 check status detail
    while IFS='|' read -r _ check status detail; do
        [ "$check" = "$name" ] && row "$name" "$mode" "$status" "$detail" ||
            row "$name/$check" "$mode" "$status" "$detail"
        n=$((n + 1))
        [ "$status" = FAIL ] && fails=$((fails + 1))
    done < <(grep -a '^RESULT|' "$out")
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
        row "$name" "$mode" FAIL "timed out after ${tmo}s ($n rows before)"
        fails=$((fails + 1))
    elif [ "$rc" != 0 ] && [ "$fails" = 0 ]; then
        row "$name" "$mode" FAIL "exit $rc with no FAIL row: $(grep -av '^RESULT|' "$out" | tail -1 | cut -c1-150)"
        fails=$((fails + 1))
    elif [ "$n" = 0 ]; then
        row "$name" "$mode" FAIL "no RESULT rows (exit $rc)"
        fails=$((fails + 1))
    fi
    scn_collect "$mode" "$out"
    say "[$((SECONDS - START))s] $name [$mode]: $n rows, $fails failed, $((SECONDS - t0))s"
}

# collect TAG FILE OUT [PREFIX]: OUT's TAG|... lines, less the tag, PREFIX
# in front, appended to FILE.
collect() {
    grep -a "^$1|" "$3" | cut -d'|' -f2- | sed "s/^/${4:-}/" >>"$2"
}

# ------------------------------------------------------------ the table
table_row() { # one results row, detail shortened for the table (full text in the log)
    local d=$4
    [ ${#d} -gt "$TABLE_DETAIL_MAX" ] && d="${d:0:TABLE_DETAIL_MAX - 3}..."
    echo "| $1 | $2 | $3 | $d |"
}

# results_table [RESULT]: the rows, or only those with RESULT, as a table.
results_table() {
    echo "| scenario | mode | result | detail |"
    echo "|---|---|---|---|"
    local s m r d
    while IFS='|' read -r s m r d; do
        if [ -z "${1:-}" ] || [ "$r" = "$1" ]; then table_row "$s" "$m" "$r" "$d"; fi
    done <"$ROWS"
}

results_section() {
    echo "### Results"
    echo
    results_table
    echo
}

# md_table FILE EMPTY HEADER SEPARATOR: FILE's lines (cells split by |) as a
# table, or the line EMPTY when FILE is empty.
md_table() {
    if [ -s "$1" ]; then
        echo "$3"
        echo "$4"
        sed 's/^/| /; s/$/ |/' "$1"
    else
        echo "$2"
    fi
}

# bench_table: the bench_pairs rows ($BENCH)
bench_table() {
    md_table "$BENCH" "(no benchmark rows)" \
        "| case | native median | shim median | ratio | shim − native | shim + 70GiB budget | ratio | native round medians | shim round medians |" \
        "|---|---|---|---|---|---|---|---|---|"
}

# table_end: the failures again (when any) and the count, last, so that a
# caller reading only the output's tail sees them.
table_end() {
    if grep -q '|FAIL|' "$ROWS"; then
        echo "### Failures (again)"
        echo
        results_table FAIL
        echo
    fi
    local p f i
    p=$(grep -c '|PASS|' "$ROWS"); f=$(grep -c '|FAIL|' "$ROWS"); i=$(grep -c '|info|' "$ROWS")
    echo "**$p PASS, $f FAIL, $i info** in $((SECONDS - START)) s (full log: ${OUT:+$OUT/}${LOG##*/})"
}

# finish TABLE: the table into the log, to $OUT (same name) when set, and to
# stdout; exits 1 when any row is a FAIL, else 0.
finish() {
    cat "$1" >>"$LOG"
    [ -n "${OUT:-}" ] && cp "$1" "$OUT/${1##*/}"
    cat "$1"
    grep -q '|FAIL|' "$ROWS" && exit 1
    exit 0
}
