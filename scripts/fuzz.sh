#!/usr/bin/env bash
# Build the cargo-fuzz (libFuzzer) targets of the Rust core and run each for a
# bounded time.  Exits non-zero if any target crashes (a panic, a failed
# invariant, a timeout or running out of memory); the input that did it is
# left in rust/fuzz/artifacts/TARGET/ and the command to replay it is printed.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
#   SECONDS   time per target (default 20)
#   TARGET    command address data reply server server_auto (default: all of them)
#
# Environment:
#   FUZZ_SANITIZER   address | none (default none: the core has no unsafe
#                    code, and without ASan the build takes ~1 min instead of
#                    ~3 and runs about twice as fast; overflow checks and
#                    debug assertions stay on either way)
#   FUZZ_JOBS        parallel fuzzing jobs per target (default 1)
#   FUZZ_ARGS        extra libFuzzer flags, e.g. "-max_len=65536"
#
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`, ~2 min) and a
# toolchain that accepts -Z flags: nightly, or stable with RUSTC_BOOTSTRAP=1,
# which this script sets when the active toolchain is not a nightly.
#
# Corpora: the committed seeds (rust/fuzz/seeds/TARGET, read only) and the
# growing corpus libFuzzer writes to rust/fuzz/corpus/TARGET (git-ignored,
# kept between runs so that each run starts where the last one stopped).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
export PATH="$HOME/.cargo/bin:$PATH"

seconds="${1:-20}"
if [ $# -gt 0 ]; then shift; fi
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [ "$seconds" -lt 1 ]; then
    echo "usage: scripts/fuzz.sh [SECONDS] [TARGET...]" >&2
    exit 2
fi
all_targets=(command address data reply server server_auto)
if [ $# -gt 0 ]; then targets=("$@"); else targets=("${all_targets[@]}"); fi
for t in "${targets[@]}"; do
    if [ ! -f "$root/rust/fuzz/fuzz_targets/$t.rs" ]; then
        echo "fuzz.sh: no target '$t' (have: ${all_targets[*]})" >&2
        exit 2
    fi
done

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: cargo-fuzz is not installed: cargo install cargo-fuzz --locked" >&2
    exit 3
fi
if ! rustc --version | grep -q nightly; then
    export RUSTC_BOOTSTRAP=1   # cargo-fuzz passes -Z flags; stable accepts them so
fi
# pyo3's build script wants an interpreter even though the fuzz targets use
# only the pure-Rust modules (nothing links libpython).
if [ -z "${PYO3_PYTHON:-}" ]; then
    PYO3_PYTHON="$("$root/scripts/find-python.sh" 2>/dev/null || command -v python3)"
    export PYO3_PYTHON
fi

sanitizer="${FUZZ_SANITIZER:-none}"
jobs="${FUZZ_JOBS:-1}"
build_flags=(--sanitizer "$sanitizer" --debug-assertions)
cd "$root/rust"

start=$(date +%s)
echo "fuzz.sh: building ${#targets[@]} target(s) (sanitizer: $sanitizer)"
# `cargo fuzz build` takes one target, or none for all of them.
one=()
if [ ${#targets[@]} -eq 1 ]; then one=("${targets[0]}"); fi
if ! cargo fuzz build "${build_flags[@]}" "${one[@]}" >fuzz/build.log 2>&1; then
    tail -40 fuzz/build.log >&2
    echo "fuzz.sh: the build failed (rust/fuzz/build.log)" >&2
    exit 1
fi
echo "fuzz.sh: built in $(( $(date +%s) - start )) s"

failed=()
for t in "${targets[@]}"; do
    corpus="fuzz/corpus/$t"
    mkdir -p "$corpus" "fuzz/artifacts/$t"
    flags=(-max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1)
    case "$t" in
        command|address|server|server_auto) flags+=(-dict=fuzz/smtp.dict) ;;
    esac
    if [ "$jobs" -gt 1 ]; then flags+=(-fork="$jobs"); fi
    # shellcheck disable=SC2206
    flags+=(${FUZZ_ARGS:-})
    log="fuzz/artifacts/$t/last-run.log"
    t0=$(date +%s)
    if cargo fuzz run "${build_flags[@]}" "$t" "$corpus" "fuzz/seeds/$t" -- "${flags[@]}" >"$log" 2>&1; then
        runs=$( (grep -Eo 'Done [0-9]+ runs' "$log" || grep -Eo '^#[0-9]+' "$log" | tail -1) | grep -Eo '[0-9]+' || echo "?")
        cov=$(grep -Eo 'cov: [0-9]+' "$log" | tail -1 | grep -Eo '[0-9]+' || echo "?")
        echo "fuzz.sh: $t ok: $runs runs in $(( $(date +%s) - t0 )) s, coverage $cov, corpus $(find "$corpus" -type f | wc -l) inputs"
    else
        failed+=("$t")
        echo "fuzz.sh: $t FAILED; the log is rust/$log" >&2
        grep -E "panicked at|^thread|assertion|left:|right:|ERROR: libFuzzer|Test unit written" "$log" | head -20 | cut -c1-400 >&2 || tail -30 "$log" >&2
        artifact=$(grep -Eo 'Test unit written to [^ ]+' "$log" | tail -1 | sed 's/Test unit written to //')
        if [ -n "$artifact" ]; then
            echo "fuzz.sh: replay with: (cd rust && RUSTC_BOOTSTRAP=1 cargo fuzz run ${build_flags[*]} $t $artifact)" >&2
        fi
    fi
done

echo "fuzz.sh: total $(( $(date +%s) - start )) s"
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz.sh: crashes in: ${failed[*]}" >&2
    exit 1
fi
echo "fuzz.sh: ${#targets[@]} target(s) ran ${seconds} s each without a crash"
