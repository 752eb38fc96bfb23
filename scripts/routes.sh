#!/usr/bin/env bash
# `make routes`: the course as Binder and Colab build it, notebooks 00-07 at the quick profile in each.
#
#   scripts/routes.sh [binder|colab|all] [NOTEBOOK ...]     (default: all, every course notebook)
#
# binder: as repo2docker builds it: Python 3.11 (binder/runtime.txt), `pip install -r
#   binder/requirements.txt`, then binder/postBuild (HOME in the route's folder, where postBuild
#   writes its IPython kernel config). Each notebook runs inside a memory cgroup of ROUTES_MEMORY
#   bytes (2e9, mybinder's 2 GB): cgroup v2 or v1 written as root, else `systemd-run --scope`.
#   .routes/binder/peaks.tsv gets, per notebook, in MB: the cgroup's own peak ("all": page cache
#   included, which the kernel reclaims at the limit, so a notebook that writes files reaches it),
#   and the peak of its processes' anonymous memory ("anon", what cannot be reclaimed; the
#   cgroup's count read every 0.2 s), and the OOM kills.
# colab: Python 3.12 with colab/preinstalled.txt installed (Colab's versions), then what the
#   notebooks' setup cell runs (scripts/colab_setup.py); fails if that changed any preinstalled
#   version. The notebooks run without a memory limit (Colab's free tier has about 12 GB).
#
# Everything lands in .routes/ (git-ignored): the environments, executed notebooks, kernel logs.
# Needs network for pip (PyPI) and minutes per route; not part of `make test`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="$root/.routes"
which="${1:-all}"
shift || true
notebooks=("$@")
if [ ${#notebooks[@]} -eq 0 ]; then
    for nb in "$root"/notebooks/0*.ipynb; do notebooks+=("$(basename "$nb" .ipynb)"); done
fi
limit="${ROUTES_MEMORY:-2000000000}"
python311="${PYTHON311:-python3.11}"
python312="${PYTHON312:-python3.12}"

# sample_anon STAT KEY OUT: every 0.2 s while STAT exists, write the largest KEY value of the
# cgroup's memory.stat seen so far to OUT (bytes). Runs until killed.
sample_anon() {
    local stat="$1" key="$2" out="$3" max=0 v
    while [ -e "$stat" ]; do
        v="$(awk -v k="$key" '$1 == k { print $2 }' "$stat" 2> /dev/null)"
        if [ -n "$v" ] && [ "$v" -gt "$max" ]; then max="$v" && echo "$max" > "$out"; fi
        sleep 0.2
    done
}

# in_cgroup NAME PEAK_FILE COMMAND...: run COMMAND in a fresh memory cgroup of $limit bytes and
# write "all=MB anon=MB oom_kill=N" to PEAK_FILE (see the header; "unknown" where only
# systemd-run could limit it).
in_cgroup() {
    local name="$1" peak="$2" cg rc=0 sampler all kills
    shift 2
    if [ -f /sys/fs/cgroup/cgroup.controllers ] && [ -w /sys/fs/cgroup ]; then
        cg="/sys/fs/cgroup/routes-$name-$$"
        mkdir "$cg" && echo "$limit" > "$cg/memory.max"
        sample_anon "$cg/memory.stat" anon "$peak.anon" & sampler=$!
        (echo "$BASHPID" > "$cg/cgroup.procs" && exec "$@") || rc=$?
        all="$(cat "$cg/memory.peak" 2> /dev/null || echo 0)"
        kills="$(awk '$1 == "oom_kill" { print $2 }' "$cg/memory.events")"
    elif [ -d /sys/fs/cgroup/memory ] && [ -w /sys/fs/cgroup/memory ]; then
        cg="/sys/fs/cgroup/memory/routes-$name-$$"
        mkdir "$cg" && echo "$limit" > "$cg/memory.limit_in_bytes"
        sample_anon "$cg/memory.stat" total_rss "$peak.anon" & sampler=$!
        (echo "$BASHPID" > "$cg/cgroup.procs" && exec "$@") || rc=$?
        all="$(cat "$cg/memory.max_usage_in_bytes")"
        kills="$(awk '$1 == "oom_kill" { print $2 }' "$cg/memory.oom_control")"
    elif command -v systemd-run > /dev/null && systemd-run --scope --quiet -p MemoryMax=1G true 2> /dev/null; then
        systemd-run --scope --quiet -p MemoryMax="$limit" "$@" || rc=$?
        echo unknown > "$peak"
        return $rc
    else
        echo "routes: no memory cgroup can be made here (needs root, or systemd-run)" >&2
        return 2
    fi
    kill "$sampler" 2> /dev/null || true
    wait "$sampler" 2> /dev/null || true
    echo "all=$((all / 1000000)) anon=$(($(cat "$peak.anon" 2> /dev/null || echo 0) / 1000000)) oom_kill=${kills:-?}" > "$peak"
    rmdir "$cg" 2> /dev/null || true
    return $rc
}

# run_notebooks ROUTE PYTHON LIMITED: each notebook at the quick profile, with papermill, as
# helpers.runner runs them (kernel stderr to a log), in the route's Python.
run_notebooks() {
    local route="$1" python="$2" limited="$3" out="$work/$1/outputs" failed=0 name
    mkdir -p "$out/executed"
    : > "$work/$route/peaks.tsv"
    for name in "${notebooks[@]}"; do
        local cmd=("$python" -c 'import sys
from helpers.runner import execute_notebook
seconds = execute_notebook(sys.argv[1], {"profile": "quick", "dataset": "sandstone", "output_dir": sys.argv[2]}, sys.argv[3])
print(f"{sys.argv[1]}: {seconds:.0f} s")' "$name" "$out" "$out/executed/$name.ipynb")
        echo "[$route] $name"
        if [ "$limited" = yes ]; then
            in_cgroup "$route-$name" "$out/$name.peak" "${cmd[@]}" || failed=1
            printf '%s\t%s\n' "$name" "$(cat "$out/$name.peak")" | tee -a "$work/$route/peaks.tsv"
        else
            "${cmd[@]}" || failed=1
        fi
    done
    return $failed
}

binder() {
    local env="$work/binder/env" home="$work/binder/home"
    grep -qx "python-3.11" "$root/binder/runtime.txt" || { echo "binder/runtime.txt is not python-3.11" >&2; return 2; }
    rm -rf "$work/binder" && mkdir -p "$home"
    "$python311" -m venv "$env"
    "$env/bin/python" -m pip install --quiet --upgrade pip
    "$env/bin/python" -m pip install --quiet -r "$root/binder/requirements.txt"
    (cd "$root" && HOME="$home" PATH="$env/bin:$PATH" bash binder/postBuild)
    HOME="$home" PATH="$env/bin:$PATH" run_notebooks binder "$env/bin/python" yes
}

colab() {
    local env="$work/colab/env" before after
    rm -rf "$work/colab" && mkdir -p "$work/colab"
    "$python312" -m venv "$env"
    "$env/bin/python" -m pip install --quiet --upgrade pip
    "$env/bin/python" -m pip install --quiet -r "$root/colab/preinstalled.txt" ipykernel
    before="$work/colab/before.txt" after="$work/colab/after.txt"
    "$env/bin/python" -m pip list --format=freeze > "$before"
    "$env/bin/python" "$root/scripts/colab_setup.py"
    "$env/bin/python" -m pip list --format=freeze > "$after"
    # every distribution installed before the setup keeps its version
    if ! "$env/bin/python" - "$before" "$after" <<'EOF'; then
import sys
before, after = (dict(line.split("==", 1) for line in open(f) if "==" in line) for f in sys.argv[1:])
changed = {name: (v, after.get(name)) for name, v in before.items() if after.get(name) != v}
print("changed by the setup:", changed or "nothing")
sys.exit(1 if changed else 0)
EOF
        return 1
    fi
    run_notebooks colab "$env/bin/python" no
}

case "$which" in
    binder) binder ;;
    colab) colab ;;
    all) rc=0; binder || rc=1; colab || rc=1; exit $rc ;;
    *) echo "usage: scripts/routes.sh [binder|colab|all] [NOTEBOOK ...]" >&2; exit 2 ;;
esac
