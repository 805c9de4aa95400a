import sys
exec(open('docs/bench/issue17-udp/analyze.py').read().split("n = len(details)")[0])
# per thread: epoll_wait exits with ret>0 whose next syscall on that thread is another epoll_wait (nothing done)
from collections import defaultdict
last = {}
spur = defaultdict(int); wakes = defaultdict(int); fut = defaultdict(int)
lo, hi = reqs[0][0], reqs[-1][1]
for e in ev:
    t, pid, tid, cpu, name, rest, comm = e
    who = names.get(pid)
    if not who or not (lo <= t <= hi): continue
    if name == 'raw_syscalls:sys_exit':
        nr = int(rest.split()[1]); ret = int(rest.split('=')[1])
        if nr == 232 and ret > 0:
            wakes[who] += 1; last[tid] = 'ready'
        elif nr != 232:
            last[tid] = None
    elif name == 'raw_syscalls:sys_enter':
        nr = int(rest.split()[1])
        if nr == 232 and last.get(tid) == 'ready':
            spur[who] += 1
        if nr != 232: last[tid] = None
        if nr == 202: fut[who] += 1
n = len(reqs)
for who in ['netmuxd', 'netmux-server', 'nx-echo']:
    print(f'{who:14} epoll wakeups/request {wakes[who]/n:.2f}, of them with nothing to do {spur[who]/n:.2f}; futex/request {fut[who]/n:.2f}')
