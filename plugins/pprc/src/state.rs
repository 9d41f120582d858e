//! The states of a volume set, spelled as seed 004's eRCMF spells them where it has a name.

use std::fmt;

/// Where a volume set's mirror stands, as seen from one site.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum State {
    /// No mirror is known to be established: the recovery site before its engine reported
    /// the link up or a completed copy. (PPRC's "simplex" volume.) Never shown at production.
    Simplex,
    /// Mirroring: the production site serves, every update is applied at both sites before it
    /// is acknowledged (PPRC full duplex).
    InSync,
    /// Mirroring suspended: production serves alone and tracks changes in the change bitmap.
    OutOfSync,
    /// The changed regions are being copied to the recovery site; `InSync` when they are.
    /// (eRCMF passes through XDMode/OutOfSync during a resync; we name the phase.)
    Resyncing,
    /// A freeze happened (by command, or on link loss with `on_link_loss = "freeze"`): host
    /// I/O held and mirroring stopped, so the recovery site keeps a consistent image. `run`
    /// releases host I/O (→ `OutOfSync`).
    SplitSite,
    /// Production was moved to this (recovery) site by `failover` while the other site was
    /// down or forced; changes are tracked for the other site's return (`join-cleanup`).
    RecoverySiteForceSwap,
    /// Reserved for extended-distance sets (`mode = "xd"`); never entered yet.
    XdMode,
    /// Reserved for extended-distance sets split from their peer; never entered yet.
    XdModeOutOfSync,
}

impl State {
    pub const ALL: [State; 8] = [
        State::Simplex,
        State::InSync,
        State::OutOfSync,
        State::Resyncing,
        State::SplitSite,
        State::RecoverySiteForceSwap,
        State::XdMode,
        State::XdModeOutOfSync,
    ];

    /// The name the host records and status shows.
    pub const fn name(self) -> &'static str {
        match self {
            State::Simplex => "Simplex",
            State::InSync => "InSync",
            State::OutOfSync => "OutOfSync",
            State::Resyncing => "Resyncing",
            State::SplitSite => "SplitSite",
            State::RecoverySiteForceSwap => "RecoverySite-ForceSwap",
            State::XdMode => "XDMode",
            State::XdModeOutOfSync => "XDMode-OutOfSync",
        }
    }

    pub fn from_name(name: &str) -> Option<State> {
        State::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Names kept for extended-distance sets; the machine never enters them.
    pub const fn is_reserved(self) -> bool {
        matches!(self, State::XdMode | State::XdModeOutOfSync)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_distinct() {
        for s in State::ALL {
            assert_eq!(State::from_name(s.name()), Some(s));
            assert_eq!(s.to_string(), s.name());
        }
        let mut names: Vec<_> = State::ALL.iter().map(|s| s.name()).collect();
        names.dedup();
        assert_eq!(names.len(), State::ALL.len());
        assert_eq!(State::from_name("insync"), None);
    }
}
