//! netmux connect redirection: cgroup `sock_addr` hooks.
//!
//! * `cgroup/connect4`, `cgroup/connect6`: if the destination (address, port,
//!   protocol) is in [`SERVICES`], rewrite it to the daemon's listener and
//!   remember the original destination under the socket cookie in
//!   [`ORIGINAL_DST`]. An IPv6 socket dialling `::ffff:a.b.c.d` hits the same
//!   key as an IPv4 socket dialling `a.b.c.d`: keys are stored v4-mapped.
//! * `cgroup/getpeername4`, `cgroup/getpeername6`: report the remembered
//!   original destination instead of the listener, so the application sees
//!   the address it dialled.
//! * `cgroup/sock_release`: forgets a closed socket's original destination,
//!   so the LRU only ever evicts when that many redirected sockets are open.
//! * `cgroup/sendmsg4`, `cgroup/sendmsg6`: the same rewrite for each datagram
//!   an unconnected UDP socket sends with a destination (`sendto`,
//!   `sendmsg` with `msg_name`). Nothing is remembered per socket.
//! * `cgroup/recvmsg4`, `cgroup/recvmsg6`: a datagram whose source is a
//!   daemon UDP listener in [`SERVICE_BY_LISTENER`] is reported as coming
//!   from that listener's service address, for connected and unconnected
//!   sockets alike. Each UDP service has its own listener address:port, so
//!   the listener alone names the service.
//!
//! Connected UDP sockets go through the connect hooks like TCP (the key's
//! protocol is the socket's). A v4-mapped destination on an IPv6 UDP socket
//! is handed by the kernel to the IPv4 path, so it meets `sendmsg4` and, for
//! its replies, `recvmsg6` with a v4-mapped source: both hit the IPv4 keys.
//!
//! Policy lives in the daemon; these programs only look up and rewrite. They
//! fail open: a miss, an excluded socket or any error returns [`PROCEED`]
//! with the socket address untouched. Sockets whose `SO_MARK` equals
//! [`RedirectConfig::exclude_mark`] are never redirected (the daemon's own).
//!
//! All accesses to the `bpf_sock_addr` context are single 4-byte volatile
//! loads and stores: the verifier rejects wider or merged context accesses
//! on `user_ip6`.
//!
//! On the host this builds as a stub `main` so workspace-wide `cargo clippy`
//! and `cargo test` keep working; the real object is built for
//! `bpfel-unknown-none` by `netmux-daemon/build.rs`.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::generated::bpf_get_socket_cookie,
    macros::{cgroup_sock, cgroup_sock_addr, map},
    maps::{Array, HashMap, LruHashMap},
    programs::{SockAddrContext, SockContext},
    EbpfContext as _,
};
use aya_log_ebpf::{debug, trace, warn};
use netmux_common::redirect::{
    v4_mapped, v4_unmapped, ListenerKey, ListenerTarget, OriginalDst, RedirectConfig, ServiceKey,
    CONFIG_INDEX, MAX_REDIRECTED_SOCKETS, MAX_SERVICES, MAX_UDP_LISTENERS, PROTO_TCP, PROTO_UDP,
};

/// Published services: destination → daemon listener. Filled by the daemon.
#[map]
static SERVICES: HashMap<ServiceKey, ListenerTarget> = HashMap::with_max_entries(MAX_SERVICES, 0);

/// Original destination of each redirected socket, by socket cookie (never
/// reused within a boot). Entries are removed when the socket is released.
#[map]
static ORIGINAL_DST: LruHashMap<u64, OriginalDst> =
    LruHashMap::with_max_entries(MAX_REDIRECTED_SOCKETS, 0);

/// UDP listener → the service it stands for, so replies are reported from
/// the service address. Filled by the daemon together with [`SERVICES`].
#[map]
static SERVICE_BY_LISTENER: HashMap<ListenerKey, OriginalDst> =
    HashMap::with_max_entries(MAX_UDP_LISTENERS, 0);

/// Runtime settings, one entry at [`CONFIG_INDEX`].
#[map]
static CONFIG: Array<RedirectConfig> = Array::with_max_entries(1, 0);

/// The only verdict these programs give: let the syscall proceed (with the
/// address possibly rewritten). getpeername and recvmsg hooks must return
/// exactly 1.
const PROCEED: i32 = 1;

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    match try_connect4(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    match try_connect6(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

#[cgroup_sock_addr(getpeername4)]
pub fn getpeername4(ctx: SockAddrContext) -> i32 {
    match try_getpeername4(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

#[cgroup_sock_addr(getpeername6)]
pub fn getpeername6(ctx: SockAddrContext) -> i32 {
    match try_getpeername6(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    match try_sendmsg4(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
    match try_sendmsg6(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

#[cgroup_sock_addr(recvmsg4)]
pub fn recvmsg4(ctx: SockAddrContext) -> i32 {
    match try_recvmsg4(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

#[cgroup_sock_addr(recvmsg6)]
pub fn recvmsg6(ctx: SockAddrContext) -> i32 {
    match try_recvmsg6(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

#[cgroup_sock(sock_release)]
pub fn sock_release(ctx: SockContext) -> i32 {
    // SAFETY: bpf_get_socket_cookie is allowed for cgroup_sock programs and
    // takes the context pointer.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // Most sockets were never redirected: a miss is the common case.
    let _ = ORIGINAL_DST.remove(cookie);
    PROCEED
}

#[inline(always)]
fn try_connect4(ctx: &SockAddrContext) -> Result<i32, i32> {
    let sa = ctx.sock_addr;
    // SAFETY: `sa` is the context pointer the kernel passed in; every field
    // read below is a 4-byte context load the verifier accepts.
    let (ip4, port) = unsafe {
        (
            load(addr_of!((*sa).user_ip4)),
            load(addr_of!((*sa).user_port)),
        )
    };
    let dst = v4_mapped(ip4.to_ne_bytes());
    let (key, target) = lookup(ctx, dst, port).ok_or(PROCEED)?;
    let Some(listener) = v4_unmapped(&target.addr) else {
        warn!(
            ctx,
            "connect4: listener for {:i} is IPv6, not redirecting",
            ip4.to_ne_bytes()
        );
        return Err(PROCEED);
    };
    if !remember(ctx, &key) {
        return Err(PROCEED);
    }
    // SAFETY: 4-byte stores to writable `bpf_sock_addr` fields.
    unsafe {
        store(addr_of_mut!((*sa).user_ip4), u32::from_ne_bytes(listener));
        store(addr_of_mut!((*sa).user_port), u32::from(target.port));
    }
    debug!(
        ctx,
        "connect4: {:i}:{} -> {:i}:{}",
        ip4.to_ne_bytes(),
        u16::from_be(key.port),
        listener,
        u16::from_be(target.port)
    );
    Ok(PROCEED)
}

#[inline(always)]
fn try_connect6(ctx: &SockAddrContext) -> Result<i32, i32> {
    let sa = ctx.sock_addr;
    // SAFETY: as in `try_connect4`.
    let (dst, port) = unsafe { (load_ip6(sa), load(addr_of!((*sa).user_port))) };
    let (key, target) = lookup(ctx, dst, port).ok_or(PROCEED)?;
    if !remember(ctx, &key) {
        return Err(PROCEED);
    }
    // A v4-mapped listener is fine here: the kernel hands a v6 socket
    // connecting to `::ffff:a.b.c.d` to the IPv4 path (and fails it with
    // ENETUNREACH on an IPV6_V6ONLY socket, as it would without us).
    // SAFETY: as in `try_connect4`.
    unsafe {
        store_ip6(sa, &target.addr);
        store(addr_of_mut!((*sa).user_port), u32::from(target.port));
    }
    debug!(
        ctx,
        "connect6: [{:i}]:{} -> [{:i}]:{}",
        dst,
        u16::from_be(key.port),
        target.addr,
        u16::from_be(target.port)
    );
    Ok(PROCEED)
}

#[inline(always)]
fn try_getpeername4(ctx: &SockAddrContext) -> Result<i32, i32> {
    let orig = original(ctx).ok_or(PROCEED)?;
    let ip4 = v4_unmapped(&orig.addr).ok_or(PROCEED)?;
    let sa = ctx.sock_addr;
    // SAFETY: as in `try_connect4`.
    unsafe {
        store(addr_of_mut!((*sa).user_ip4), u32::from_ne_bytes(ip4));
        store(addr_of_mut!((*sa).user_port), u32::from(orig.port));
    }
    Ok(PROCEED)
}

#[inline(always)]
fn try_getpeername6(ctx: &SockAddrContext) -> Result<i32, i32> {
    let orig = original(ctx).ok_or(PROCEED)?;
    let sa = ctx.sock_addr;
    // SAFETY: as in `try_connect4`.
    unsafe {
        store_ip6(sa, &orig.addr);
        store(addr_of_mut!((*sa).user_port), u32::from(orig.port));
    }
    Ok(PROCEED)
}

#[inline(always)]
fn try_sendmsg4(ctx: &SockAddrContext) -> Result<i32, i32> {
    let sa = ctx.sock_addr;
    // SAFETY: as in `try_connect4`.
    let (ip4, port) = unsafe {
        (
            load(addr_of!((*sa).user_ip4)),
            load(addr_of!((*sa).user_port)),
        )
    };
    let (key, target) = lookup(ctx, v4_mapped(ip4.to_ne_bytes()), port).ok_or(PROCEED)?;
    let listener = v4_unmapped(&target.addr).ok_or(PROCEED)?;
    // SAFETY: as in `try_connect4`.
    unsafe {
        store(addr_of_mut!((*sa).user_ip4), u32::from_ne_bytes(listener));
        store(addr_of_mut!((*sa).user_port), u32::from(target.port));
    }
    // Per datagram: trace, not debug, so debug logs stay readable.
    trace!(
        ctx,
        "sendmsg4: {:i}:{} -> {:i}:{}",
        ip4.to_ne_bytes(),
        u16::from_be(key.port),
        listener,
        u16::from_be(target.port)
    );
    Ok(PROCEED)
}

#[inline(always)]
fn try_sendmsg6(ctx: &SockAddrContext) -> Result<i32, i32> {
    let sa = ctx.sock_addr;
    // SAFETY: as in `try_connect4`.
    let (dst, port) = unsafe { (load_ip6(sa), load(addr_of!((*sa).user_port))) };
    let (key, target) = lookup(ctx, dst, port).ok_or(PROCEED)?;
    // Unlike connect6, udpv6_sendmsg fails a datagram whose destination a
    // program rewrote to a v4-mapped address (ENOTSUPP): leave it alone. The
    // daemon gives IPv6 UDP services IPv6 listeners, so this is a stale or
    // foreign entry.
    if v4_unmapped(&target.addr).is_some() {
        return Err(PROCEED);
    }
    // SAFETY: as in `try_connect4`.
    unsafe {
        store_ip6(sa, &target.addr);
        store(addr_of_mut!((*sa).user_port), u32::from(target.port));
    }
    trace!(
        ctx,
        "sendmsg6: [{:i}]:{} -> [{:i}]:{}",
        dst,
        u16::from_be(key.port),
        target.addr,
        u16::from_be(target.port)
    );
    Ok(PROCEED)
}

#[inline(always)]
fn try_recvmsg4(ctx: &SockAddrContext) -> Result<i32, i32> {
    let sa = ctx.sock_addr;
    // SAFETY: as in `try_connect4`.
    let (ip4, port) = unsafe {
        (
            load(addr_of!((*sa).user_ip4)),
            load(addr_of!((*sa).user_port)),
        )
    };
    let service = service_of(ctx, v4_mapped(ip4.to_ne_bytes()), port).ok_or(PROCEED)?;
    // An IPv4 socket cannot be shown an IPv6 source.
    let service_ip4 = v4_unmapped(&service.addr).ok_or(PROCEED)?;
    // SAFETY: as in `try_connect4`.
    unsafe {
        store(
            addr_of_mut!((*sa).user_ip4),
            u32::from_ne_bytes(service_ip4),
        );
        store(addr_of_mut!((*sa).user_port), u32::from(service.port));
    }
    Ok(PROCEED)
}

#[inline(always)]
fn try_recvmsg6(ctx: &SockAddrContext) -> Result<i32, i32> {
    let sa = ctx.sock_addr;
    // SAFETY: as in `try_connect4`.
    let (src, port) = unsafe { (load_ip6(sa), load(addr_of!((*sa).user_port))) };
    let service = service_of(ctx, src, port).ok_or(PROCEED)?;
    // SAFETY: as in `try_connect4`.
    unsafe {
        store_ip6(sa, &service.addr);
        store(addr_of_mut!((*sa).user_port), u32::from(service.port));
    }
    Ok(PROCEED)
}

/// Finds the listener for `dst`/`port_be` on this socket's protocol, unless
/// the socket is excluded. `None` means "leave this connect alone".
///
/// Helpers return `Option`/`bool`, never the verdict: a verdict passed back
/// through memory from a non-inlined BPF function loses its known range and
/// the verifier then rejects the program's return value. The verdict is only
/// produced in the inlined `try_*` functions.
fn lookup(
    ctx: &SockAddrContext,
    dst: [u8; 16],
    port_be: u32,
) -> Option<(ServiceKey, ListenerTarget)> {
    let sa = ctx.sock_addr;
    // SAFETY: 4-byte context load.
    let proto = unsafe { load(addr_of!((*sa).protocol)) };
    let proto = match proto {
        p if p == u32::from(PROTO_TCP) => PROTO_TCP,
        p if p == u32::from(PROTO_UDP) => PROTO_UDP,
        _ => return None,
    };
    let key = ServiceKey {
        addr: dst,
        // The port sits in the low 16 bits, already in network byte order.
        port: port_be as u16,
        proto,
        _pad: 0,
    };
    // SAFETY: the value is copied out at once; a concurrent update from the
    // daemon can at worst give a stale listener for this one connect.
    let target = *unsafe { SERVICES.get(key) }?;
    if excluded(ctx) {
        return None;
    }
    Some((key, target))
}

/// The service whose UDP listener is `src`/`port_be` (a datagram's source),
/// unless the socket is not UDP or is excluded. `None`: report the source
/// as it is.
fn service_of(ctx: &SockAddrContext, src: [u8; 16], port_be: u32) -> Option<OriginalDst> {
    let sa = ctx.sock_addr;
    // SAFETY: 4-byte context load.
    let proto = unsafe { load(addr_of!((*sa).protocol)) };
    if proto != u32::from(PROTO_UDP) {
        return None;
    }
    let key = ListenerKey {
        addr: src,
        port: port_be as u16,
        proto: PROTO_UDP,
        _pad: 0,
    };
    // SAFETY: copied out at once, as in `lookup`.
    let service = *unsafe { SERVICE_BY_LISTENER.get(key) }?;
    if excluded(ctx) {
        return None;
    }
    Some(service)
}

/// True if the socket carries the daemon's exclusion mark, or the daemon
/// itself is connecting.
fn excluded(ctx: &SockAddrContext) -> bool {
    let Some(config) = CONFIG.get(CONFIG_INDEX) else {
        return false;
    };
    let tgid = config.exclude_tgid;
    if tgid != 0 && ctx.tgid() == tgid {
        return true;
    }
    let mark = config.exclude_mark;
    if mark == 0 {
        return false;
    }
    // SAFETY: `sk` of `bpf_sock_addr` is a non-null PTR_TO_SOCKET for
    // sock_addr programs; `mark` is a readable 4-byte field of `bpf_sock`.
    let sk_mark = unsafe {
        let sk = load(addr_of!((*ctx.sock_addr).__bindgen_anon_1.sk));
        load(addr_of!((*sk).mark))
    };
    sk_mark == mark
}

/// Records the original destination for getpeername(). Failing to record it
/// (false) cancels the redirect: better an honest failure than a wrong peer
/// name.
fn remember(ctx: &SockAddrContext, key: &ServiceKey) -> bool {
    // SAFETY: bpf_get_socket_cookie is allowed for sock_addr programs and
    // takes the context pointer.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let orig = OriginalDst {
        addr: key.addr,
        port: key.port,
        _pad: [0; 2],
    };
    match ORIGINAL_DST.insert(cookie, orig, 0) {
        Ok(()) => true,
        Err(e) => {
            warn!(ctx, "ORIGINAL_DST insert failed: {}", e);
            false
        }
    }
}

/// The original destination of a redirected socket, `None` if this socket
/// was not redirected.
fn original(ctx: &SockAddrContext) -> Option<OriginalDst> {
    // SAFETY: as in `remember`.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: copied out at once; entries are only replaced for the same socket.
    unsafe { ORIGINAL_DST.get(cookie) }.copied()
}

/// # Safety
/// `p` must point to a readable 4-byte field of the context or socket.
#[inline(always)]
unsafe fn load<T: Copy>(p: *const T) -> T {
    // SAFETY: guaranteed by the caller.
    unsafe { read_volatile(p) }
}

/// # Safety
/// `p` must point to a writable 4-byte context field.
#[inline(always)]
unsafe fn store(p: *mut u32, v: u32) {
    // SAFETY: guaranteed by the caller.
    unsafe { write_volatile(p, v) }
}

/// Reads `user_ip6` as four 4-byte loads at constant offsets (the verifier
/// rejects variable-offset context accesses, so no loop).
///
/// # Safety
/// `sa` must be the program's context.
#[inline(always)]
unsafe fn load_ip6(sa: *mut bpf_sock_addr) -> [u8; 16] {
    // SAFETY: 4-byte loads of `user_ip6[0..4]`.
    let w = unsafe {
        [
            load(addr_of!((*sa).user_ip6[0])).to_ne_bytes(),
            load(addr_of!((*sa).user_ip6[1])).to_ne_bytes(),
            load(addr_of!((*sa).user_ip6[2])).to_ne_bytes(),
            load(addr_of!((*sa).user_ip6[3])).to_ne_bytes(),
        ]
    };
    [
        w[0][0], w[0][1], w[0][2], w[0][3], w[1][0], w[1][1], w[1][2], w[1][3], w[2][0], w[2][1],
        w[2][2], w[2][3], w[3][0], w[3][1], w[3][2], w[3][3],
    ]
}

/// Writes `user_ip6` as four 4-byte stores at constant offsets.
///
/// # Safety
/// `sa` must be the program's context.
#[inline(always)]
unsafe fn store_ip6(sa: *mut bpf_sock_addr, a: &[u8; 16]) {
    // SAFETY: 4-byte stores to `user_ip6[0..4]`.
    unsafe {
        store(
            addr_of_mut!((*sa).user_ip6[0]),
            u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
        );
        store(
            addr_of_mut!((*sa).user_ip6[1]),
            u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
        );
        store(
            addr_of_mut!((*sa).user_ip6[2]),
            u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
        );
        store(
            addr_of_mut!((*sa).user_ip6[3]),
            u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
        );
    }
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!(
        "netmux-ebpf is an eBPF object: netmux-daemon/build.rs builds it for bpfel-unknown-none"
    );
    std::process::exit(2);
}

/// License declared to the kernel; GPL-compatible so GPL-only helpers stay
/// available.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
