#!/usr/bin/env python3
"""Per-request timeline of one nx-probe udp-echo run recorded by perf (issue 17,
docs/bench/issue17-udp.md: sched_switch, sched_wakeup, raw_syscalls).
Usage: analyze.py trace.txt pids.txt [N: print the N slowest requests]
trace.txt = perf script -F comm,pid,tid,cpu,time,event,trace
pids.txt = lines 'name pid' (netmuxd, netmux-server, nx-echo)."""
import re, sys, statistics as st
from collections import defaultdict

NR = {0:'read',1:'write',44:'sendto',45:'recvfrom',46:'sendmsg',47:'recvmsg',299:'recvmmsg',307:'sendmmsg',
      202:'futex',232:'epoll_wait',281:'epoll_pwait',441:'epoll_pwait2',230:'clock_nanosleep',54:'setsockopt',
      228:'clock_gettime',39:'getpid',186:'gettid',24:'sched_yield',20:'writev',19:'readv'}
line_re = re.compile(r'^\s*(\S.*?)\s+(\d+)/(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+(\S+):\s*(.*)$')
names = {}
for l in open(sys.argv[2]):
    n, p = l.split()
    for pid in p.split(','):
        if pid: names[int(pid)] = n
ev = []
for l in open(sys.argv[1]):
    m = line_re.match(l)
    if not m: continue
    comm, pid, tid, cpu, t, name, rest = m.groups()
    ev.append((float(t), int(pid), int(tid), int(cpu), name, rest, comm))
ev.sort(key=lambda e: e[0])
probe = None
for e in ev:
    if e[6].startswith('nx-probe'):
        probe = e[1]
names[probe] = 'probe'
tid2pid = {}
for e in ev: tid2pid[e[2]] = e[1]
# requests: probe sendto enter .. recvfrom exit with ret > 0
reqs = []
t0 = None
for e in ev:
    if e[1] != probe: continue
    if e[4] == 'raw_syscalls:sys_enter' and e[5].startswith('NR 44 '):
        t0 = e[0]
    elif e[4] == 'raw_syscalls:sys_exit' and e[5].startswith('NR 45 ') and t0 is not None:
        ret = int(e[5].split('=')[1])
        if ret > 0:
            reqs.append((t0, e[0])); t0 = None
print(f'requests: {len(reqs)}')
lat = sorted((b - a) * 1e6 for a, b in reqs)
q = lambda p: lat[min(len(lat)-1, int(p*len(lat)))]
print(f'rtt us: p50 {q(.5):.0f} p95 {q(.95):.0f} p99 {q(.99):.0f} (under perf)')
# index events per request window
import bisect
times = [e[0] for e in ev]
def window(a, b):
    i = bisect.bisect_left(times, a); j = bisect.bisect_right(times, b)
    return ev[i:j]
# per request: syscalls per process, switches-in per process, runqueue waits
per = defaultdict(list)
rq_tail = defaultdict(list); rq_all = defaultdict(list)
details = []
for (a, b) in reqs:
    w = window(a, b)
    sysc = defaultdict(int); swin = defaultdict(int); pending = {}; rqw = defaultdict(float)
    byname = defaultdict(lambda: defaultdict(int))
    for e in w:
        t, pid, tid, cpu, name, rest, comm = e
        if name == 'raw_syscalls:sys_enter':
            who = names.get(pid)
            if who:
                sysc[who] += 1
                nr = int(rest.split()[1]); byname[who][NR.get(nr, str(nr))] += 1
        elif name == 'sched:sched_wakeup':
            m = re.search(r'pid=(\d+)', rest); wp = int(m.group(1))
            pending[wp] = t
        elif name == 'sched:sched_switch':
            m = re.search(r'next_pid=(\d+)', rest); np_ = int(m.group(1))
            who = names.get(tid2pid.get(np_))
            if who:
                swin[who] += 1
                if np_ in pending:
                    rqw[who] += t - pending.pop(np_)
    rtt = (b - a) * 1e6
    details.append((rtt, dict(sysc), dict(swin), {k: v*1e6 for k, v in rqw.items()}, {k: dict(v) for k, v in byname.items()}, a, b))
details.sort(key=lambda d: d[0])
def summarize(sel, label):
    print(f'== {label}: {len(sel)} requests, rtt mean {st.mean(d[0] for d in sel):.0f} us')
    for who in ['netmuxd', 'netmux-server', 'nx-echo', 'probe']:
        s = st.mean(d[1].get(who, 0) for d in sel); w = st.mean(d[2].get(who, 0) for d in sel)
        r = st.mean(d[3].get(who, 0) for d in sel)
        print(f'  {who:14} syscalls {s:5.1f}  switches-in {w:4.1f}  runqueue wait {r:7.1f} us')
    for who in ['netmuxd', 'netmux-server']:
        agg = defaultdict(float)
        for d in sel:
            for k, v in d[4].get(who, {}).items(): agg[k] += v
        print(f'  {who} syscalls by name:', ', '.join(f'{k} {v/len(sel):.2f}' for k, v in sorted(agg.items(), key=lambda x: -x[1])))
n = len(details)
summarize(details[: n // 2], 'fastest half')
summarize(details[int(n * .95):], 'slowest 5%')
if len(sys.argv) > 3:
    # dump the slowest few windows
    for d in details[-int(sys.argv[3]):]:
        print(f'--- rtt {d[0]:.0f} us')
        a = d[5]
        for e in window(d[5], d[6]):
            t, pid, tid, cpu, name, rest, comm = e
            who = names.get(pid) or names.get(tid2pid.get(pid))
            if not who and 'sched' not in name: continue
            if 'sched' in name and not any(f'pid={p}' in rest for p in tid2pid if names.get(tid2pid[p])):
                if not who: continue
            if name.startswith('raw_syscalls'):
                nr = int(rest.split()[1]); rest = NR.get(nr, str(nr)) + ' ' + rest.split(')')[-1] if 'exit' in name else NR.get(nr, str(nr))
            print(f'  {(t-a)*1e6:8.1f} cpu{cpu} {who or comm:13} {tid:7} {name.split(":")[1]:14} {rest[:110]}')
