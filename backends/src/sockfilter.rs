//! Classic BPF socket filters for the notification sockets: the kernel drops the messages
//! the agent would only parse and throw away.

use std::os::fd::RawFd;

use crate::error::NetlinkError;

/// Attaches a socket filter that drops, in the kernel, every message but those of a `wanted`
/// type and those of type `new` whose protocol byte (at `protocol_offset`) is not ours:
/// programming thousands of objects then queues no thousands of notifications to parse (or to
/// overflow the socket with), while an object that replaces one of ours is still reported.
pub(crate) fn keep_wanted_and_foreign(
    fd: RawFd,
    wanted: &[u16],
    (new, protocol_offset): (u16, u32),
) -> Result<(), NetlinkError> {
    // 0: load nlmsg_type; 1..=n: accept a wanted one; n+1: not `new`, drop;
    // n+2: load the protocol; n+3: ours, drop; n+4: drop; n+5: accept.
    let n = wanted.len();
    let (drop, accept) = (n + 4, n + 5);
    let mut prog = vec![insn(libc::BPF_LD | libc::BPF_H | libc::BPF_ABS, 0, 0, 4)];
    for (i, kind) in wanted.iter().enumerate() {
        prog.push(insn(JEQ, accept - (i + 1) - 1, 0, message_type(*kind)));
    }
    prog.push(insn(JEQ, 0, drop - (n + 1) - 1, message_type(new)));
    let load_protocol = libc::BPF_LD | libc::BPF_B | libc::BPF_ABS;
    prog.push(insn(load_protocol, 0, 0, protocol_offset));
    prog.push(insn(JEQ, 0, 1, u32::from(crate::ROUTE_PROTOCOL)));
    prog.push(insn(libc::BPF_RET | libc::BPF_K, 0, 0, 0));
    prog.push(insn(libc::BPF_RET | libc::BPF_K, 0, 0, u32::MAX));
    attach_filter(fd, prog)
}

/// A classic BPF instruction.
fn insn(code: u32, jt: usize, jf: usize, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt: jt as u8,
        jf: jf as u8,
        k,
    }
}

/// Jump if the accumulator equals `k`.
const JEQ: u32 = libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K;

/// `kind` as an absolute load of `nlmsg_type` reads it: such loads are big-endian, the field is
/// in host byte order.
fn message_type(kind: u16) -> u32 {
    u32::from(u16::from_be_bytes(kind.to_ne_bytes()))
}

/// Attaches `prog` to the socket `fd`.
fn attach_filter(fd: RawFd, mut prog: Vec<libc::sock_filter>) -> Result<(), NetlinkError> {
    /// `SO_ATTACH_FILTER` (asm-generic; the libc crate does not export it for every target).
    const SO_ATTACH_FILTER: libc::c_int = 26;
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_mut_ptr(),
    };
    // SAFETY: the program outlives the call, which copies it into the kernel.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_ATTACH_FILTER,
            std::ptr::from_ref(&fprog).cast(),
            size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(())
}
