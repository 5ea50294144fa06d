//! Start-up's last step, the agent's first turn: the first rule check finished and subnet.env
//! written while the first complete listing of peers is fetched, then programmed; readiness
//! announced.

use anyhow::{Context, Result};
use backends::Notifications;
use subnet::{Registry, WatchScope, WatchUpdate};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{write_env_file, Agent};
use crate::firewall::EnsureTask;
use crate::{footprint, sdnotify};

/// What the control loop goes on with: the peer watch and the kernel notifications.
pub(crate) type Synced = (mpsc::Receiver<WatchUpdate>, Notifications);

impl Agent {
    /// Subscribes to kernel notifications; finishes `first_check` and writes subnet.env while
    /// the first complete listing of peers is fetched, then programs it; announces readiness.
    /// `None` when `shutdown` fires first.
    pub(crate) async fn first_sync<R: Registry>(
        &mut self,
        registry: &R,
        first_check: Option<EnsureTask>,
        shutdown: &CancellationToken,
    ) -> Result<Option<Synced>> {
        // Subscribed first: a change during the first reconcile is then not missed. The listing
        // is requested before the rule check is awaited, so both run at once.
        let notifications = Notifications::subscribe(self.networks.v6.is_some())
            .context("cannot subscribe to kernel link/route notifications")?;
        let mut peer_watch = registry.watch_leases(WatchScope::AllLeases);
        // subnet.env is true once the lease is held, the device is set up and the rules are in
        // place: CNI and docker start then, not after thousands of peer routes (like Go
        // flanneld, systemd is told then too). The first listing is fetched and decoded
        // meanwhile, and programmed once subnet.env is written: thousands of route inserts
        // would otherwise take the CPU the iptables processes need (at 5000 peers subnet.env
        // came 20 ms later). Readiness waits for the data plane.
        let (env, path) = (self.subnet_env(), self.subnet_file.clone());
        let mut firewall = self.firewall.take();
        let (env_done, env_written) = tokio::sync::oneshot::channel::<()>();
        let rules_then_env = async {
            if let (Some(task), Some(fw)) = (first_check, firewall.as_mut()) {
                fw.finish_ensure(task).await?;
            }
            let written = write_env_file(&path, &env);
            sdnotify::notify_ready();
            drop(env_done);
            anyhow::Ok(written)
        };
        let listing = async {
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                first = peer_watch.recv() => {
                    if let Some(update) = first {
                        self.on_peer_update(update);
                    }
                }
            }
            // Sent or dropped (a failed rule check too): the routes go in either way.
            let _ = env_written.await;
            self.reconcile("start").await;
            true
        };
        let (written, listed) = tokio::join!(rules_then_env, listing);
        self.firewall = firewall;
        self.record_env_write(written?);
        if !listed {
            return Ok(None);
        }
        footprint::release_freed_heap();
        self.publish_readiness();
        Ok(Some((peer_watch, notifications)))
    }
}
