//! A passive observer of one namespace's data plane: a netlink socket subscribed to route and
//! neighbour notifications, read on its own thread, that keeps the flanneld-owned objects
//! (routes with protocol 70, or `boot` as Go flanneld v0.11 adds them, permanent neighbours, FDB
//! entries with a remote) and the time each first appeared. It never dumps, so watching costs the agent nothing.

use std::collections::HashMap;
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The route protocol flanneld-rs tags its routes with (`backends::ROUTE_PROTOCOL`).
const OURS: u8 = backends::ROUTE_PROTOCOL;
/// The protocol of Go flanneld v0.11's routes (netlink's default, `RTPROT_BOOT`).
const GO_V011: u8 = 3;

/// A flanneld-owned kernel object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Object {
    /// A tagged route to `dst/len`.
    Route(Ipv4Addr, u8),
    /// A permanent neighbour for this address.
    Neighbour(Ipv4Addr),
    /// An FDB entry for this MAC.
    Fdb([u8; 6]),
}

/// What the object points at: the gateway, the neighbour's MAC or the FDB remote.
pub type Target = u64;

/// The gateway of a route as a [`Target`].
pub fn ip_target(ip: Ipv4Addr) -> Target {
    u64::from(u32::from(ip))
}

/// A MAC as a [`Target`].
pub fn mac_target(mac: [u8; 6]) -> Target {
    mac.iter().fold(0, |acc, b| (acc << 8) | u64::from(*b))
}

#[derive(Default)]
struct State {
    current: HashMap<Object, Target>,
    first_seen: HashMap<Object, Instant>,
    /// When each object was last removed.
    gone_at: HashMap<Object, Instant>,
    expected: HashMap<Object, Target>,
    /// Objects whose current target differs from the expected one (missing, extra or wrong).
    mismatches: usize,
    /// When `mismatches` last became zero.
    matched_at: Option<Instant>,
    overflowed: bool,
}

impl State {
    fn differs(&self, o: &Object) -> bool {
        self.expected.get(o) != self.current.get(o)
    }

    fn set(&mut self, o: Object, target: Option<Target>, at: Instant) {
        let before = self.differs(&o);
        match target {
            Some(t) => {
                self.current.insert(o, t);
                self.first_seen.entry(o).or_insert(at);
            }
            None => {
                if self.current.remove(&o).is_some() {
                    self.gone_at.insert(o, at);
                }
            }
        }
        let after = self.differs(&o);
        match (before, after) {
            (false, true) => self.mismatches += 1,
            (true, false) => {
                self.mismatches -= 1;
                if self.mismatches == 0 {
                    self.matched_at = Some(at);
                }
            }
            _ => {}
        }
    }
}

/// The observer; stops its thread on drop.
pub struct KernelWatch {
    state: Arc<(Mutex<State>, Condvar)>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl KernelWatch {
    /// Subscribes inside network namespace `netns` (a name under /run/netns).
    pub fn start(netns: &str) -> Result<KernelWatch> {
        let path = format!("/run/netns/{netns}");
        let ns = File::open(&path).with_context(|| format!("open {path}"))?;
        let state = Arc::new((Mutex::new(State::default()), Condvar::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = {
            let state = Arc::clone(&state);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let socket = subscribe(&ns);
                let ok = socket.is_ok();
                let _ = ready_tx.send(socket.as_ref().map(|_| ()).map_err(|e| format!("{e:#}")));
                if let (true, Ok(fd)) = (ok, socket) {
                    read_loop(&fd, &state, &stop);
                }
            })
        };
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(KernelWatch {
                state,
                stop,
                thread: Some(thread),
            }),
            Ok(Err(e)) => bail!("netlink subscription in {netns}: {e}"),
            Err(_) => bail!("netlink observer thread died"),
        }
    }

    /// Sets what the kernel should hold; [`KernelWatch::wait_matched`] waits for it.
    pub fn expect(&self, expected: HashMap<Object, Target>) {
        let mut s = self.state.0.lock().expect("observer lock");
        s.expected = expected;
        s.mismatches = s
            .expected
            .keys()
            .chain(s.current.keys().filter(|o| !s.expected.contains_key(o)))
            .filter(|o| s.differs(o))
            .count();
        s.matched_at = (s.mismatches == 0).then(Instant::now);
    }

    /// Waits until the kernel holds exactly the expected objects; returns when that happened.
    pub fn wait_matched(&self, timeout: Duration) -> Result<Instant> {
        self.wait(timeout, |s| s.matched_at.filter(|_| s.mismatches == 0))
            .with_context(|| {
                let s = self.state.0.lock().expect("observer lock");
                format!(
                    "kernel still differs in {} objects (holds {}, expected {})",
                    s.mismatches,
                    s.current.len(),
                    s.expected.len()
                )
            })
    }

    /// Waits until `o` is present; returns when it first appeared.
    pub fn wait_present(&self, o: Object, timeout: Duration) -> Result<Instant> {
        self.wait(timeout, |s| s.first_seen.get(&o).copied())
            .with_context(|| format!("{o:?} did not appear"))
    }

    /// Waits until `o` is gone (after being present); returns when it disappeared.
    pub fn wait_absent(&self, o: Object, timeout: Duration) -> Result<Instant> {
        self.wait(timeout, |s| {
            (!s.current.contains_key(&o))
                .then(|| s.gone_at.get(&o).copied())
                .flatten()
        })
        .with_context(|| format!("{o:?} did not go"))
    }

    fn wait<T>(&self, timeout: Duration, mut f: impl FnMut(&State) -> Option<T>) -> Result<T> {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.state;
        let mut s = lock.lock().expect("observer lock");
        loop {
            if s.overflowed {
                bail!("the netlink socket overflowed; notifications were lost");
            }
            if let Some(v) = f(&s) {
                return Ok(v);
            }
            let now = Instant::now();
            if now >= deadline {
                bail!("timed out after {timeout:?}");
            }
            s = cv.wait_timeout(s, deadline - now).expect("observer lock").0;
        }
    }
}

impl Drop for KernelWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Enters `ns` on this thread and opens a route socket subscribed to IPv4 routes and neighbours.
fn subscribe(ns: &File) -> Result<OwnedFd> {
    // SAFETY: setns on a namespace fd changes only this thread's namespace.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).context("setns");
    }
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("netlink socket");
    }
    // SAFETY: fd was just returned by socket(2) and is not owned elsewhere.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let big: libc::c_int = 32 << 20;
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: 100_000,
    };
    // SAFETY: setsockopt/bind with correctly sized, initialised values on our own socket.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            std::ptr::from_ref(&big).cast(),
            size_of::<libc::c_int>() as u32,
        );
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            std::ptr::from_ref(&timeout).cast(),
            size_of::<libc::timeval>() as u32,
        );
        let mut addr: libc::sockaddr_nl = std::mem::zeroed();
        addr.nl_family = libc::AF_NETLINK as u16;
        addr.nl_groups = (libc::RTMGRP_IPV4_ROUTE | libc::RTMGRP_NEIGH) as u32;
        if libc::bind(
            fd.as_raw_fd(),
            std::ptr::from_ref(&addr).cast(),
            size_of::<libc::sockaddr_nl>() as u32,
        ) != 0
        {
            return Err(std::io::Error::last_os_error()).context("bind netlink groups");
        }
    }
    Ok(fd)
}

fn read_loop(fd: &OwnedFd, state: &(Mutex<State>, Condvar), stop: &AtomicBool) {
    let mut buf = vec![0u8; 1 << 20];
    let mut changes = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: recv into our own buffer of the given length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        let at = Instant::now();
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOBUFS) {
                state.0.lock().expect("observer lock").overflowed = true;
                state.1.notify_all();
            }
            continue;
        }
        changes.clear();
        parse(&buf[..n as usize], &mut changes);
        if changes.is_empty() {
            continue;
        }
        let mut s = state.0.lock().expect("observer lock");
        for (o, t) in changes.drain(..) {
            s.set(o, t, at);
        }
        drop(s);
        state.1.notify_all();
    }
}

/// The attributes of a netlink message body after its fixed header of `fixed` bytes.
fn attributes(body: &[u8], fixed: usize) -> impl Iterator<Item = (u16, &[u8])> {
    let mut rest = body.get(fixed..).unwrap_or_default();
    std::iter::from_fn(move || {
        if rest.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([rest[0], rest[1]]));
        let kind = u16::from_ne_bytes([rest[2], rest[3]]) & 0x3fff;
        if len < 4 || len > rest.len() {
            return None;
        }
        let value = &rest[4..len];
        rest = rest.get((len + 3) & !3..).unwrap_or_default();
        Some((kind, value))
    })
}

fn ipv4(v: &[u8]) -> Option<Ipv4Addr> {
    <[u8; 4]>::try_from(v).ok().map(Ipv4Addr::from)
}

const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_NEWNEIGH: u16 = 28;
const RTM_DELNEIGH: u16 = 29;

/// Decodes the messages of one datagram into object changes (`None`: the object is gone).
fn parse(mut data: &[u8], out: &mut Vec<(Object, Option<Target>)>) {
    while data.len() >= 16 {
        let len = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]) as usize;
        let kind = u16::from_ne_bytes([data[4], data[5]]);
        if len < 16 || len > data.len() {
            return;
        }
        let body = &data[16..len];
        data = data.get((len + 3) & !3..).unwrap_or_default();
        let change = match kind {
            RTM_NEWROUTE | RTM_DELROUTE if body.len() >= 12 => route_change(kind, body),
            RTM_NEWNEIGH | RTM_DELNEIGH if body.len() >= 12 => neighbour_change(kind, body),
            _ => None,
        };
        out.extend(change);
    }
}

/// A main-table IPv4 route of ours (or Go flanneld's) added or removed.
fn route_change(kind: u16, body: &[u8]) -> Option<(Object, Option<Target>)> {
    let (family, dst_len, table, protocol) = (body[0], body[1], body[4], body[5]);
    if i32::from(family) != libc::AF_INET || (protocol != OURS && protocol != GO_V011) {
        return None;
    }
    let mut dst = Ipv4Addr::UNSPECIFIED;
    let mut gateway = None;
    let mut table = u32::from(table);
    for (t, v) in attributes(body, 12) {
        match t {
            1 => dst = ipv4(v).unwrap_or(dst),
            5 => gateway = ipv4(v),
            15 => table = v.try_into().map_or(table, u32::from_ne_bytes),
            _ => {}
        }
    }
    if table != u32::from(libc::RT_TABLE_MAIN) {
        return None;
    }
    let target = (kind == RTM_NEWROUTE).then(|| gateway.map_or(0, ip_target));
    Some((Object::Route(dst, dst_len), target))
}

/// A neighbour (IPv4) or FDB entry (bridge family) added, made permanent, or removed.
fn neighbour_change(kind: u16, body: &[u8]) -> Option<(Object, Option<Target>)> {
    const NUD_PERMANENT: u16 = 0x80;
    let family = i32::from(body[0]);
    let state = u16::from_ne_bytes([body[8], body[9]]);
    let mut dst = None;
    let mut mac = None;
    for (t, v) in attributes(body, 12) {
        match t {
            1 => dst = ipv4(v),
            2 => mac = <[u8; 6]>::try_from(v).ok(),
            _ => {}
        }
    }
    let present = kind == RTM_NEWNEIGH && state & NUD_PERMANENT != 0;
    match (family, dst, mac) {
        (libc::AF_INET, Some(ip), mac) => Some((
            Object::Neighbour(ip),
            mac.filter(|_| present).map(mac_target),
        )),
        (libc::AF_BRIDGE, Some(remote), Some(mac)) => {
            Some((Object::Fdb(mac), present.then(|| ip_target(remote))))
        }
        _ => None,
    }
}
