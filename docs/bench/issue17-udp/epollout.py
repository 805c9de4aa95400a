# Does a UDP send raise an EPOLLOUT edge on the sender's own edge-triggered registration?
import socket, select
r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); r.bind(('127.0.0.1', 0))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.connect(r.getsockname()); s.setblocking(False)
ep = select.epoll()
ep.register(s.fileno(), select.EPOLLIN | select.EPOLLOUT | select.EPOLLET)
print('after register:', ep.poll(0.1))      # initial writable edge
print('idle:', ep.poll(0.1))                 # nothing
n_ev = 0
for i in range(100):
    s.send(b'x' * 64)
    ev = ep.poll(0.05)
    n_ev += bool(ev)
print('sends followed by an event on the sender:', n_ev, 'of 100; last:', ev, '(EPOLLOUT=%d)' % select.EPOLLOUT)
ep2 = select.epoll(); ep2.register(s.fileno(), select.EPOLLIN | select.EPOLLET)
ep2.poll(0.05); m = 0
for i in range(100):
    s.send(b'x' * 64); m += bool(ep2.poll(0.05))
print('readable-only registration: events after 100 sends:', m)
