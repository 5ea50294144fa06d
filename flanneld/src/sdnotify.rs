//! systemd readiness notification (`sd_notify(READY=1)`), as Go flanneld sends it, so units can
//! use `Type=notify`.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Sends `READY=1` to `$NOTIFY_SOCKET` if it is set; errors are logged, never fatal.
pub fn notify_ready() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let path = path.to_string_lossy().into_owned();
    let result = (|| -> std::io::Result<()> {
        let addr = match path.strip_prefix('@') {
            Some(name) => SocketAddr::from_abstract_name(name.as_bytes())?,
            None => SocketAddr::from_pathname(&path)?,
        };
        UnixDatagram::unbound()?.send_to_addr(b"READY=1", &addr)?;
        Ok(())
    })();
    match result {
        Ok(()) => tracing::debug!("notified systemd: READY=1"),
        Err(e) => tracing::warn!("cannot notify systemd at NOTIFY_SOCKET={path}: {e}"),
    }
}
