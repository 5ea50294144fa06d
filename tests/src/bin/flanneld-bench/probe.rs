//! A second etcd v3 watcher on a run's prefix, beside the agent's: when each lease event
//! reached a client. The propagation section subtracts it from the agent's latency, so what
//! etcd takes to deliver a watch event is told apart from what the agent takes after it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use etcd_client::{EventType, WatchOptions};
use tokio::sync::oneshot;

/// Arrival times by (key, whether the event was a delete).
type Seen = Arc<Mutex<HashMap<(String, bool), Instant>>>;

/// The watcher, on a thread of its own; stopped on drop.
pub struct WatchProbe {
    seen: Seen,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl WatchProbe {
    /// Watches everything under `prefix` on etcd at `etcd` (connected from the calling thread's
    /// namespace); returns once the watch is in place.
    pub fn start(etcd: SocketAddr, prefix: &str) -> Result<WatchProbe> {
        let seen: Seen = Arc::default();
        let (stop, stopped) = oneshot::channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (record, prefix) = (Arc::clone(&seen), format!("{prefix}/"));
        let thread = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let mut client =
                    match etcd_client::Client::connect([format!("http://{etcd}")], None).await {
                        Ok(c) => c,
                        Err(e) => return drop(ready_tx.send(Err(e.to_string()))),
                    };
                let options = WatchOptions::new().with_prefix();
                let mut stream = match client.watch(prefix, Some(options)).await {
                    Ok(s) => s,
                    Err(e) => return drop(ready_tx.send(Err(e.to_string()))),
                };
                let _ = ready_tx.send(Ok(()));
                tokio::select! {
                    _ = stopped => {}
                    _ = record_events(&mut stream, &record) => {}
                }
            });
        });
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => Ok(WatchProbe {
                seen,
                stop: Some(stop),
                thread: Some(thread),
            }),
            Ok(Err(e)) => anyhow::bail!("watch probe: {e}"),
            Err(_) => anyhow::bail!("watch probe did not start"),
        }
    }

    /// When the event for `key` (its delete with `delete`) reached the probe, waiting up to
    /// `timeout` for it.
    pub fn arrival(&self, key: &str, delete: bool, timeout: Duration) -> Result<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = self.seen.lock().expect("probe lock");
            if let Some(at) = seen.get(&(key.to_string(), delete)) {
                return Ok(*at);
            }
            drop(seen);
            if Instant::now() > deadline {
                return Err(anyhow::anyhow!("no watch event for {key}")).context("watch probe");
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

async fn record_events(stream: &mut etcd_client::WatchStream, seen: &Seen) {
    while let Ok(Some(response)) = stream.message().await {
        let at = Instant::now();
        let mut seen = seen.lock().expect("probe lock");
        for event in response.events() {
            if let Some(kv) = event.kv() {
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                seen.insert((key, event.event_type() == EventType::Delete), at);
            }
        }
    }
}

impl Drop for WatchProbe {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
