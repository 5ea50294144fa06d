//! The control loop's decision: from what woke it and what earlier turns left pending, which steps
//! to run this turn. Pure; [`crate::control`] runs the steps in the order of [`Turn`]'s fields.

use std::time::Duration;

use backends::{Notification, Reaction};
use ipnet::IpNet;

/// How often a converged data plane whose every change is notified (host-gw's routes) is still
/// dumped and reconciled: the safety net for notifications the kernel dropped.
pub(crate) const NOTIFIED_RESYNC_PERIOD: Duration = Duration::from_secs(60);

/// What woke the control loop (after the loop applied what came with it, e.g. peer updates to the
/// peer set).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wake {
    /// Peer lease updates; `listing_changed`: a complete listing changed the peers (events only
    /// note the changed peers, see [`Pending::changed_peers`]).
    Peers { listing_changed: bool },
    /// Our own lease was published again; `moved`: it is for another subnet now.
    Lease { moved: bool },
    /// A burst of kernel notifications, by its strongest reaction (`Setup` > `Reconcile` >
    /// `Ignore`).
    Kernel(Reaction),
    /// The periodic resync (every 10 s): `dump` when a full reconcile is due (see
    /// [`resync_needs_dump`]).
    Resync { dump: bool },
    /// The periodic rule check (`--iptables-resync`).
    RuleCheck,
    /// The egress policy file changed (`--ip-masq-config`): the rules are checked at once.
    EgressPolicy,
    /// The network config's `Backend` section changed: it is applied in place.
    BackendConfig,
    /// The readiness tick: nothing changed, readiness is computed again.
    Tick,
}

impl Wake {
    /// What caused a full reconcile on this wake, for the metrics.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Wake::Peers { .. } => "listing",
            Wake::Lease { .. } => "lease",
            Wake::Kernel(_) => "kernel",
            Wake::Resync { .. } => "resync",
            Wake::RuleCheck => "rule_check",
            Wake::EgressPolicy => "egress_policy",
            Wake::BackendConfig => "backend_switch",
            Wake::Tick => "tick",
        }
    }
}

/// What earlier turns left to do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Pending {
    /// Backend setup failed and is to be tried again.
    pub setup: bool,
    /// Peers changed by watch events wait for an incremental reconcile.
    pub changed_peers: bool,
}

/// How this turn brings the kernel up to date.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reconcile {
    /// The kernel is not touched.
    Nothing,
    /// Just the changed peers' objects, against the reconciler's model of the kernel (falls back
    /// to [`Reconcile::Full`] when that does not apply cleanly).
    ChangedPeers,
    /// Dump, plan and apply everything.
    Full,
}

/// The steps of one turn, run in this order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Turn {
    /// Forget the lingering peers whose grace period is over.
    pub expire_lingering: bool,
    /// Switch to the new `Backend` section in place (make-before-break).
    pub switch_backend: bool,
    /// Check (and repair) the iptables rules.
    pub check_rules: bool,
    /// Ask the backend whether the kernel differs from what its setup configured (the
    /// notifications of setup's own writes do not); a difference turns `setup` on.
    pub check_drift: bool,
    /// Run backend setup (init and configure); a failure stays pending.
    pub setup: bool,
    /// How to reconcile afterwards.
    pub reconcile: Reconcile,
}

/// Decides one turn.
pub(crate) fn decide(wake: Wake, pending: Pending) -> Turn {
    let full = match wake {
        Wake::Peers { listing_changed } => listing_changed,
        Wake::Lease { moved } => moved,
        Wake::Kernel(reaction) => reaction != Reaction::Ignore,
        Wake::Resync { dump } => dump,
        Wake::BackendConfig => true,
        Wake::RuleCheck | Wake::EgressPolicy | Wake::Tick => false,
    };
    let setup = pending.setup || wake == (Wake::Lease { moved: true });
    let reconcile = if full {
        Reconcile::Full
    } else if pending.changed_peers {
        Reconcile::ChangedPeers
    } else {
        Reconcile::Nothing
    };
    Turn {
        expire_lingering: matches!(wake, Wake::Resync { .. }),
        switch_backend: wake == Wake::BackendConfig,
        check_rules: matches!(wake, Wake::RuleCheck | Wake::EgressPolicy),
        check_drift: wake == Wake::Kernel(Reaction::Setup) && !setup,
        setup,
        reconcile,
    }
}

/// Whether a resync tick dumps and reconciles everything: always while the kernel does not
/// match (`converged` false) or when the backend's objects can change unnoticed (vxlan's
/// neighbour and FDB entries), else once [`NOTIFIED_RESYNC_PERIOD`] has passed since the last
/// converged dump (a removed or replaced route of ours is reported and reconciled at once). An
/// idle host-gw agent dumps its routes once a minute, not six times.
pub(crate) fn resync_needs_dump(
    converged: bool,
    drift_is_notified: bool,
    since_converged_dump: Duration,
) -> bool {
    !converged || !drift_is_notified || since_converged_dump >= NOTIFIED_RESYNC_PERIOD
}

/// The reaction to one kernel notification: the backend's, except that the removal (or the
/// replacement by a route of another protocol) of a route no peer wants, and the removal of a
/// nexthop object the reconciler does not hold, need nothing. A removal is mostly the echo of
/// the reconciler's own delete, which used to cost a full reconcile (a dump of every route) per
/// removed peer.
pub(crate) fn reaction(
    n: &Notification,
    backend: Reaction,
    (wanted, held): (impl Fn(&IpNet) -> bool, impl Fn(u32) -> bool),
) -> Reaction {
    match n {
        Notification::RouteRemoved { dst } | Notification::ForeignRoute { dst } if !wanted(dst) => {
            Reaction::Ignore
        }
        Notification::NexthopChanged { id } if !held(*id) => Reaction::Ignore,
        _ => backend,
    }
}

/// The strongest of a burst's reactions: one setup before one reconcile for the whole burst.
pub(crate) fn strongest(reactions: impl IntoIterator<Item = Reaction>) -> Reaction {
    let rank = |r: &Reaction| match r {
        Reaction::Ignore => 0,
        Reaction::Reconcile => 1,
        Reaction::Setup => 2,
    };
    reactions
        .into_iter()
        .max_by_key(rank)
        .unwrap_or(Reaction::Ignore)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notified_converged_data_plane_is_dumped_once_a_minute_others_every_tick() {
        let tick = Duration::from_secs(10);
        // host-gw, converged: skipped until the safety-net period has passed.
        assert!(!resync_needs_dump(true, true, tick));
        assert!(!resync_needs_dump(
            true,
            true,
            NOTIFIED_RESYNC_PERIOD - tick
        ));
        assert!(resync_needs_dump(true, true, NOTIFIED_RESYNC_PERIOD));
        // Not converged, or a backend whose changes can go unnoticed (vxlan): every tick.
        assert!(resync_needs_dump(false, true, tick));
        assert!(resync_needs_dump(true, false, tick));
    }

    const NOTHING: Pending = Pending {
        setup: false,
        changed_peers: false,
    };

    fn turn(reconcile: Reconcile) -> Turn {
        Turn {
            expire_lingering: false,
            switch_backend: false,
            check_rules: false,
            check_drift: false,
            setup: false,
            reconcile,
        }
    }

    #[test]
    fn each_wake_with_nothing_pending() {
        use Reconcile::*;
        let cases = [
            (
                Wake::Peers {
                    listing_changed: true,
                },
                turn(Full),
            ),
            (
                Wake::Peers {
                    listing_changed: false,
                },
                turn(Nothing),
            ),
            (Wake::Lease { moved: false }, turn(Nothing)),
            (
                Wake::Lease { moved: true },
                Turn {
                    setup: true,
                    ..turn(Full)
                },
            ),
            (Wake::Kernel(Reaction::Ignore), turn(Nothing)),
            (Wake::Kernel(Reaction::Reconcile), turn(Full)),
            (
                Wake::Kernel(Reaction::Setup),
                Turn {
                    check_drift: true,
                    ..turn(Full)
                },
            ),
            (
                Wake::Resync { dump: true },
                Turn {
                    expire_lingering: true,
                    ..turn(Full)
                },
            ),
            (
                Wake::Resync { dump: false },
                Turn {
                    expire_lingering: true,
                    ..turn(Nothing)
                },
            ),
            (
                Wake::RuleCheck,
                Turn {
                    check_rules: true,
                    ..turn(Nothing)
                },
            ),
            (
                Wake::EgressPolicy,
                Turn {
                    check_rules: true,
                    ..turn(Nothing)
                },
            ),
            (Wake::Tick, turn(Nothing)),
            (
                Wake::BackendConfig,
                Turn {
                    switch_backend: true,
                    ..turn(Full)
                },
            ),
        ];
        for (wake, want) in cases {
            assert_eq!(decide(wake, NOTHING), want, "{wake:?}");
        }
    }

    #[test]
    fn changed_peers_are_programmed_incrementally_unless_a_full_reconcile_is_due() {
        let pending = Pending {
            changed_peers: true,
            ..NOTHING
        };
        let events = decide(
            Wake::Peers {
                listing_changed: false,
            },
            pending,
        );
        assert_eq!(events.reconcile, Reconcile::ChangedPeers);
        // A tick or rule check also programs them (they were left by an earlier turn).
        assert_eq!(
            decide(Wake::Tick, pending).reconcile,
            Reconcile::ChangedPeers
        );
        for wake in [
            Wake::Resync { dump: true },
            Wake::Kernel(Reaction::Reconcile),
            Wake::Lease { moved: true },
        ] {
            assert_eq!(decide(wake, pending).reconcile, Reconcile::Full, "{wake:?}");
        }
    }

    #[test]
    fn a_failed_setup_is_retried_on_every_turn_and_skips_the_drift_check() {
        let pending = Pending {
            setup: true,
            ..NOTHING
        };
        for wake in [
            Wake::Tick,
            Wake::RuleCheck,
            Wake::Peers {
                listing_changed: false,
            },
        ] {
            assert!(decide(wake, pending).setup, "{wake:?}");
        }
        let device_gone = decide(Wake::Kernel(Reaction::Setup), pending);
        assert!(device_gone.setup && !device_gone.check_drift);
        assert_eq!(device_gone.reconcile, Reconcile::Full);
    }

    #[test]
    fn a_burst_acts_on_its_strongest_reaction() {
        use Reaction::*;
        assert_eq!(strongest([Ignore, Reconcile, Ignore]), Reconcile);
        assert_eq!(strongest([Reconcile, Setup, Ignore]), Setup);
        assert_eq!(strongest([]), Ignore);
    }

    #[test]
    fn only_the_removal_of_a_wanted_route_or_a_held_object_needs_a_reconcile() {
        let wanted: IpNet = "10.5.2.0/24".parse().unwrap();
        let known = (|dst: &IpNet| *dst == wanted, |id: u32| id == 7);
        let removed = |dst: &str| Notification::RouteRemoved {
            dst: dst.parse().unwrap(),
        };
        let ours = reaction(&removed("10.5.2.0/24"), Reaction::Reconcile, known);
        assert_eq!(ours, Reaction::Reconcile, "someone removed a route we want");
        let echo = reaction(&removed("10.5.3.0/24"), Reaction::Reconcile, known);
        assert_eq!(echo, Reaction::Ignore, "the route of a removed peer");
        let object = |id| Notification::NexthopChanged { id };
        let held = reaction(&object(7), Reaction::Reconcile, known);
        assert_eq!(
            held,
            Reaction::Reconcile,
            "someone removed an object we hold"
        );
        let collected = reaction(&object(8), Reaction::Reconcile, known);
        assert_eq!(collected, Reaction::Ignore, "the echo of our own delete");
        let link = Notification::Link {
            index: 2,
            name: None,
            removed: true,
        };
        assert_eq!(reaction(&link, Reaction::Setup, known), Reaction::Setup);
    }
}
