#!/bin/sh
# The netmuxd in this netns, the netmux-server of the same sandbox, nx-echo in the server's netns.
me=$(readlink /proc/self/ns/net)
for p in $(pgrep -x netmuxd); do [ "$(readlink /proc/$p/ns/net)" = "$me" ] && d=$p; done
echo "netmuxd $d"
sb=$(tr '\0' ' ' < /proc/$d/cmdline | grep -o '/tmp/nxb-sb-[0-9]*-[0-9]*' | head -1)
for p in $(pgrep -x netmux-server); do tr '\0' ' ' < /proc/$p/cmdline | grep -q "$sb" && s=$p; done
echo "netmux-server $s"
sn=$(readlink /proc/$s/ns/net); e=""
for p in $(pgrep -x nx-echo); do [ "$(readlink /proc/$p/ns/net)" = "$sn" ] && e="$e$p,"; done
echo "nx-echo $e"
