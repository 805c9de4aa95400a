# Per-request segments of a netmux udp-echo trace (issue 17, docs/bench/issue17-udp.md): usage segments.py trace.txt pids.txt
import sys
exec(open('docs/bench/issue17-udp/analyze.py').read().split("n = len(details)")[0])
# per request: daemon in->out gap, server in->fwd, server back->out, daemon back->client, and total outside netmux
import statistics as st
rows = []
for (a, b) in reqs:
    w = window(a, b)
    m = {}
    for e in w:
        t, pid, tid, cpu, name, rest, comm = e
        who = names.get(pid)
        if name != 'raw_syscalls:sys_exit' or who not in ('netmuxd', 'netmux-server'): continue
        nr = int(rest.split()[1]); ret = int(rest.split('=')[1])
        key = None
        if who == 'netmuxd' and nr == 45 and ret > 0 and 'd_in' not in m: key = 'd_in'
        elif who == 'netmuxd' and nr == 46 and 'd_in' in m and 'd_out' not in m: key = 'd_out'
        elif who == 'netmux-server' and nr in (299, 47) and ret > 0 and 'd_out' in m and 's_in' not in m: key = 's_in'
        elif who == 'netmux-server' and nr == 44 and 's_in' in m and 's_fwd' not in m: key = 's_fwd'
        elif who == 'netmux-server' and nr == 45 and ret > 0 and 's_fwd' in m and 's_back' not in m: key = 's_back'
        elif who == 'netmux-server' and nr == 46 and ret > 60 and 's_back' in m and 's_out' not in m: key = 's_out'
        elif who == 'netmuxd' and nr in (299, 47) and ret > 0 and 's_out' in m and 'd_back' not in m: key = 'd_back'
        elif who == 'netmuxd' and nr == 44 and 'd_back' in m and 'd_rep' not in m: key = 'd_rep'
        if key: m[key] = t
    if len(m) == 8:
        rows.append(((b-a)*1e6, (m['d_in']-a)*1e6, (m['d_out']-m['d_in'])*1e6, (m['s_in']-m['d_out'])*1e6, (m['s_fwd']-m['s_in'])*1e6,
                     (m['s_back']-m['s_fwd'])*1e6, (m['s_out']-m['s_back'])*1e6, (m['d_back']-m['s_out'])*1e6, (m['d_rep']-m['d_back'])*1e6, (b-m['d_rep'])*1e6))
print(len(rows), 'complete of', len(reqs))
names_ = ['rtt','probe->d_in','d_in->d_out','link d->s','s_in->s_fwd','echo','s_back->s_out','link s->d','d_back->d_rep','d_rep->probe']
for i, n in enumerate(names_):
    v = sorted(r[i] for r in rows)
    print(f'{n:14} p50 {v[len(v)//2]:9.0f}  p95 {v[int(len(v)*.95)]:9.0f}')
