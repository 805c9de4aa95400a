#!/bin/sh
# A directory for NETMUX_BENCH_BIN_DIR (issue 17, docs/bench/issue17-udp.md):
# symlinks to the release binaries in $1, except nx-probe, which runs under
# `perf record -a` of the sched_switch/sched_wakeup/raw_syscalls tracepoints;
# each probe run leaves $OUT/<ns>.data and $OUT/<ns>.pids (the pids of the
# sandbox's netmuxd, netmux-server and nx-echo, for analyze.py).
# Usage: mkwrap.sh RELEASE_DIR WRAP_DIR OUT_DIR
here=$(cd "$(dirname "$0")" && pwd)
rel=$1; d=$2; out=$3
mkdir -p "$d" "$out"
rm -f "$d"/*
for f in "$rel"/*; do
  [ -f "$f" ] && [ -x "$f" ] && ln -s "$f" "$d/$(basename "$f")"
done
rm -f "$d/nx-probe"
cat > "$d/nx-probe" <<EOS
#!/bin/sh
o=$out/\$(date +%s%N)
$here/pids.sh > \$o.pids
exec perf record -q -a -o "\$o.data" -e sched:sched_switch -e sched:sched_wakeup -e raw_syscalls:sys_enter -e raw_syscalls:sys_exit -- $rel/nx-probe "\$@"
EOS
chmod +x "$d/nx-probe"
