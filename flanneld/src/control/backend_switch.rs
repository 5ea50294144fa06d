//! A change of the network config's `Backend` section applied in place, without a restart
//! (host-gw ⇄ vxlan, DirectRouting on or off, another VNI): make before break. The new backend
//! is set up beside the old one (vxlan: its device), the kernel is reconciled to the new
//! backend's objects (peers of the old backend keep their direct routes on a shared LAN, see
//! `backends::mixed`), the lease is published with the new `BackendType` and `BackendData`, and
//! only then is what the old backend owned and the new one does not use removed (a vxlan device).
//! subnet.env's `FLANNEL_MTU` follows the new backend; pods created before keep the MTU they
//! were given, which the log, `/readyz` and `flanneld doctor` (`pod-mtu-above-backend`) say.
//!
//! Everything else in the config (Network, subnet sizes and range, IPv6, nftables) needs a new
//! lease or new rules under every pod and waits for a restart ([`crate::config_watch`]).

use backends::Backend;
use subnet::{LeaseAttrs, NetworkConfig};

use super::Agent;

/// The MTU pods created under `old` keep, when the new backend's is smaller.
fn mtu_note(from: &str, old: u32, to: &str, new: u32) -> Option<String> {
    (new < old).then(|| {
        format!(
            "the backend switched from {from} to {to}: pods created before keep MTU {old}, above \
             the {new} of {to}, so their packets over {new} bytes to other hosts are dropped; \
             recreate them (new pods get FLANNEL_MTU={new})"
        )
    })
}

impl Agent {
    /// Applies the pending `Backend` change, if any, make-before-break; on a failure the old
    /// backend keeps running, untouched, and the failure is logged.
    pub(crate) async fn switch_backend(&mut self) {
        let Some(config) = self.live.take_pending() else {
            return;
        };
        let (from, old_mtu) = (self.backend.type_name(), self.backend.mtu());
        let (next, attrs) = match self.prepare(&config).await {
            Ok(prepared) => prepared,
            Err(e) => {
                tracing::warn!(
                    "cannot switch the backend to {}: {e}; {from} keeps running as it is",
                    config.backend.raw
                );
                return;
            }
        };
        let old = std::mem::replace(&mut self.backend, next);
        let to = self.backend.type_name();
        self.reconcile("backend_switch").await;
        self.lease_handle.set_attrs(attrs);
        match old.retire(&self.nl, &self.backend).await {
            Ok(gone) if gone.is_empty() => {}
            Ok(gone) => tracing::info!("removed what {from} owned: {}", gone.join(", ")),
            Err(e) => tracing::warn!("cannot remove what {from} owned: {e}"),
        }
        self.env_written = false;
        let new_mtu = self.backend.mtu();
        let note = mtu_note(from, old_mtu, to, new_mtu);
        if let Some(note) = &note {
            tracing::warn!("{note}");
        }
        tracing::info!(
            decision = "backend",
            "backend switched in place from {from} to {to} ({}): new objects programmed, lease published, FLANNEL_MTU {old_mtu} -> {new_mtu}",
            config.backend.raw
        );
        self.live.switched(config, note);
    }

    /// The new backend, set up beside the old one and configured for our lease, with the lease
    /// attributes to publish. What it created is removed again if it cannot be completed.
    async fn prepare(
        &mut self,
        config: &NetworkConfig,
    ) -> Result<(Backend, LeaseAttrs), backends::Error> {
        let mut next = self.backend.successor(&config.backend)?;
        let result = async {
            let attrs = next.init(&self.nl).await?;
            (next.configure(&self.nl, &self.lease, self.networks).await).map(|()| attrs)
        }
        .await;
        match result {
            Ok(attrs) => Ok((next, attrs)),
            Err(e) => {
                let _ = next.retire(&self.nl, &self.backend).await;
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_keep_their_mtu_only_a_smaller_one_is_worth_a_note() {
        let note = mtu_note("host-gw", 1500, "vxlan", 1450).expect("a note");
        assert!(
            note.contains("keep MTU 1500") && note.contains("FLANNEL_MTU=1450"),
            "{note}"
        );
        assert_eq!(mtu_note("vxlan", 1450, "host-gw", 1500), None);
    }
}
