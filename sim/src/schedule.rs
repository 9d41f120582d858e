//! One schedule: a seeded run through boot, chaos, healing and an epilogue that replays the
//! patent's scenarios, with the invariants checked after every step and the liveness checks
//! at the end of each phase.
//!
//! 1. **Boot**: every controller starts without a key and is bootstrapped by the operator;
//!    both servers are up. The system must come online with both within a bound.
//! 2. **Chaos** (80-160 steps): at random, controllers and servers crash and restart, links
//!    between any two nodes go down and up, the controllers split into partitions, messages
//!    are lost (0-50 %), delayed and reordered, key writes tear (in some schedules), and
//!    operators give shutdown commands in every mode and return commands to random
//!    controllers. Only the safety invariants are checked.
//! 3. **Heal**: every link comes back, messages stop being lost, every controller and server
//!    restarts, and after a while an operator returns both servers. The system must come
//!    online with both, and every controller's status must say so.
//! 4. **Epilogue**, one of:
//!    * FIG. 4: both servers are shut down (a random mode), up to `N - threshold - 1`
//!      controllers crash, one server returns. If it is current and the other's stop is
//!      known (its final report reached the controllers), the system must come online with
//!      it alone; then the other server and the controllers return (late arrivals) and the
//!      system must be online with both, every status agreeing.
//!    * FIG. 5: the primary is shut down (a random mode); if the other is current, the system
//!      must continue with it alone. Then that server fails, and either it returns (it must
//!      go online again) or the first one returns (it must stay offline: any promotion of it
//!      is a data-loss violation), then the other too.
//!    * Split return: both servers shut down (normal), the controllers split in two sides,
//!      each side with one server, and the operator returns the servers at both sides. Only
//!      a side of more than the threshold may go online (and it must); after the partition
//!      heals the other server joins as the secondary.
//!
//! Liveness is checked only when no key ever tore in the schedule (a controller that lost its
//! key never elects again, and an election it left open may stay open forever).

use gateway_sdk::Event;
use serde_json::{json, Value};

use crate::rng::{mix, Rng};
use crate::source::PolicySource;
use crate::world::{Faults, Mode, World, WorldConfig};

/// The result of one schedule.
#[derive(Debug, Clone)]
pub struct Run {
    pub seed: u64,
    pub violation: Option<String>,
    pub trace: Vec<String>,
    pub steps: u64,
    pub calls: u64,
    pub liveness_checked: bool,
    pub summary: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Epilogue {
    Fig4,
    Fig5,
    Split,
}

impl Epilogue {
    pub fn name(self) -> &'static str {
        match self {
            Epilogue::Fig4 => "FIG. 4",
            Epilogue::Fig5 => "FIG. 5",
            Epilogue::Split => "split return",
        }
    }
}

/// The schedule's fixed choices, derived from its seed.
#[derive(Debug, Clone)]
pub struct Setup {
    pub world: WorldConfig,
    pub torn_pm: u32,
    pub chaos_steps: u64,
    pub epilogue: Epilogue,
    pub mode: Mode,
    pub returning: usize,
}

pub fn setup(seed: u64, extra: &Value) -> Setup {
    let mut r = Rng::new(mix(seed ^ 0x5EED));
    let n = [3usize, 4, 5][r.below(3) as usize];
    let (threshold, t) = match r.below(5) {
        0 => (Some(json!({ "count": n / 2 })), n / 2),
        1 if n / 2 + 1 < n => (Some(json!({ "count": n / 2 + 1 })), n / 2 + 1),
        _ => (None, n / 2),
    };
    let report_by = if r.coin() { "poll" } else { "broadcast" };
    let torn_pm = [0, 0, 20, 100][r.below(4) as usize];
    let world = WorldConfig {
        controllers: n,
        threshold,
        threshold_count: t,
        report_by,
        write_pm: 300,
        copy_rate: 2,
        extra: extra.clone(),
    };
    Setup {
        world,
        torn_pm,
        chaos_steps: 80 + r.below(81),
        epilogue: [Epilogue::Fig4, Epilogue::Fig5, Epilogue::Split][r.below(3) as usize],
        mode: *r.pick(&Mode::ALL),
        returning: r.below(2) as usize,
    }
}

struct Runner<'a> {
    w: World<'a>,
    setup: Setup,
}

impl<'a> Runner<'a> {
    fn done(&self) -> bool {
        self.w.violation.is_some()
    }

    /// Step until `cond` holds (true) or `bound` steps passed (false).
    fn wait(&mut self, bound: u64, cond: impl Fn(&World) -> bool) -> bool {
        for _ in 0..bound {
            if self.done() {
                return false;
            }
            if cond(&self.w) {
                return true;
            }
            self.w.step();
        }
        !self.done() && cond(&self.w)
    }

    fn run_for(&mut self, steps: u64) {
        for _ in 0..steps {
            if self.done() {
                return;
            }
            self.w.step();
        }
    }

    fn live(&self) -> bool {
        !self.w.torn_seen
    }

    /// A liveness check: fail the schedule (when liveness is checked) unless `cond` holds
    /// within `bound` steps.
    fn expect(&mut self, what: &str, bound: u64, cond: impl Fn(&World) -> bool) -> bool {
        let ok = self.wait(bound, cond);
        if !ok && !self.done() && self.live() {
            let state = self.w.state_line();
            let statuses = self.w.status_summary();
            self.w.fail(format!("liveness: {what} within {bound} steps; {state}; statuses: {statuses}"));
        }
        ok
    }

    fn random_up_ctrl(&mut self) -> Option<usize> {
        random_up(&mut self.w)
    }

    fn shutdown(&mut self, i: usize, servers: &[&str], mode: Mode) {
        let servers: Vec<String> = servers.iter().map(|s| s.to_string()).collect();
        let (name, list) = (self.w.ctrls[i].name.clone(), servers.join("+"));
        self.w.note(|| format!("OPERATOR: shutdown {list} mode {} via {name}", mode.name()));
        let ev = Event::ShutdownCommand { servers, mode: mode.name().into(), from: "operator".into() };
        self.w.command(i, ev);
    }

    fn give_return(&mut self, i: usize, servers: &[&str]) {
        let servers: Vec<String> = servers.iter().map(|s| s.to_string()).collect();
        let (name, list) = (self.w.ctrls[i].name.clone(), servers.join("+"));
        self.w.note(|| format!("OPERATOR: return {list} via {name}"));
        self.w.command(i, Event::ReturnCommand { servers, from: "operator".into() });
    }

    fn boot(&mut self) {
        for i in 0..self.w.ctrls.len() {
            self.w.start_ctrl(i);
            self.w.command(i, Event::Admin { command: "bootstrap".into(), args: json!({}) });
        }
        self.expect("boot: online with both servers", 120, |w| w.online_both());
    }

    fn chaos(&mut self) {
        self.w.faults.torn_pm = self.setup.torn_pm;
        for _ in 0..self.setup.chaos_steps {
            if self.done() {
                return;
            }
            self.fault();
            self.w.step();
        }
        self.w.faults.torn_pm = 0;
    }

    fn fault(&mut self) {
        let n = self.w.ctrls.len();
        let w = &mut self.w;
        let roll = w.rng.below(1000);
        match roll {
            0..=14 => {
                if let Some(i) = random_up(w) {
                    w.crash_ctrl(i);
                }
            }
            15..=54 => {
                let down: Vec<usize> = (0..n).filter(|i| !w.ctrls[*i].up).collect();
                if !down.is_empty() {
                    let i = *w.rng.pick(&down);
                    w.start_ctrl(i);
                }
            }
            55..=64 => {
                let s = w.rng.below(2) as usize;
                w.crash_server(s);
            }
            65..=94 => {
                let s = w.rng.below(2) as usize;
                w.restart_server(s);
            }
            95..=129 => {
                let (i, j) = (w.rng.below(n as u64) as usize, w.rng.below(n as u64) as usize);
                if i != j {
                    let v = !w.cc[i][j];
                    w.cc[i][j] = v;
                    w.cc[j][i] = v;
                    w.note(|| format!("link c{}-c{} {}", i + 1, j + 1, if v { "up" } else { "down" }));
                }
            }
            130..=169 => {
                let (i, s) = (w.rng.below(n as u64) as usize, w.rng.below(2) as usize);
                let v = !w.cs[i][s];
                w.cs[i][s] = v;
                w.note(|| format!("link c{}-{} {}", i + 1, ["A", "B"][s], if v { "up" } else { "down" }));
            }
            170..=179 => {
                w.ss = !w.ss;
                let v = w.ss;
                w.note(|| format!("link A-B {}", if v { "up" } else { "down" }));
            }
            180..=194 => {
                // A partition: two groups of controllers, each server with one group (or both
                // with the same one).
                let group: Vec<bool> = (0..n).map(|_| w.rng.coin()).collect();
                let sg = [w.rng.coin(), w.rng.coin()];
                for i in 0..n {
                    for j in 0..n {
                        w.cc[i][j] = group[i] == group[j];
                    }
                    for (s, g) in sg.iter().enumerate() {
                        w.cs[i][s] = group[i] == *g;
                    }
                }
                w.ss = sg[0] == sg[1] || w.rng.coin();
                let text = format!("{group:?} servers {sg:?}");
                w.note(|| format!("partition {text}"));
            }
            195..=204 => w.heal_links(),
            205..=209 => {
                w.faults.drop_pm = *w.rng.pick(&[0, 50, 200, 500]);
                let d = w.faults.drop_pm;
                w.note(|| format!("message loss {d} per mille"));
            }
            210..=224 => {
                if let Some(i) = random_up(w) {
                    let servers = SERVER_SETS[w.rng.below(3) as usize];
                    let mode = *w.rng.pick(&Mode::ALL);
                    self.shutdown(i, servers, mode);
                }
            }
            225..=244 => {
                if let Some(i) = random_up(w) {
                    let servers = SERVER_SETS[w.rng.below(3) as usize];
                    self.give_return(i, servers);
                }
            }
            _ => {}
        }
    }

    fn heal(&mut self) -> bool {
        self.w.heal_links();
        self.w.faults.drop_pm = 0;
        for i in 0..self.w.ctrls.len() {
            self.w.start_ctrl(i);
        }
        self.wait(DRAIN_WAIT, |w| !w.draining());
        self.w.restart_server(0);
        self.w.restart_server(1);
        // The operator returns the servers once the controllers had a few seconds to talk.
        self.run_for(60);
        if let Some(i) = self.random_up_ctrl() {
            self.give_return(i, &["A", "B"]);
        }
        self.expect("heal: online with both servers", 250, |w| w.online_both())
            && self.expect("heal: every status agrees", 80, |w| w.statuses_agree())
    }

    fn quiet_writes(&mut self) {
        let steps = 10 + self.w.rng.below(20);
        self.run_for(steps);
    }

    /// Crash up to `N - threshold - 1` controllers (more than the threshold stay).
    fn lose_minority(&mut self) -> Vec<usize> {
        let n = self.w.ctrls.len();
        let spare = n.saturating_sub(self.setup.world.threshold_count + 1);
        let k = self.w.rng.below(spare as u64 + 1) as usize;
        let mut lost = Vec::new();
        for _ in 0..k {
            if let Some(i) = self.random_up_ctrl() {
                self.w.crash_ctrl(i);
                lost.push(i);
            }
        }
        lost
    }

    fn fig4(&mut self) {
        let Some(origin) = self.random_up_ctrl() else { return };
        let mode = self.setup.mode;
        self.shutdown(origin, &["A", "B"], mode);
        if !self.expect("FIG. 4: both servers shut down", DRAIN_WAIT, |w| !w.servers[0].up && !w.servers[1].up) {
            return;
        }
        // The operator returns servers a while later, not in the same instant.
        self.run_for(10);
        let r = self.setup.returning;
        let o = 1 - r;
        let current = self.w.servers[r].pos >= self.w.acked && !self.w.servers[o].promoted_since_final;
        let lost = self.lose_minority();
        self.w.restart_server(r);
        if let Some(i) = self.random_up_ctrl() {
            self.give_return(i, &["A", "B"]);
        }
        let name = self.w.servers[r].name.clone();
        if current {
            let what = format!("FIG. 4: {name} returned current (mode {}), online with it alone", mode.name());
            if !self.expect(&what, 200, move |w| w.primary() == Some(r)) {
                return;
            }
        } else {
            self.run_for(60);
        }
        // Late arrivals: the other server and the lost controllers.
        self.w.restart_server(o);
        for i in lost {
            self.w.start_ctrl(i);
        }
        if self.expect("FIG. 4: after the late arrivals, online with both", 250, |w| w.online_both()) {
            self.expect("FIG. 4: every status (late arrivals too) agrees", 80, |w| w.statuses_agree());
        }
    }

    fn fig5(&mut self) {
        let Some(p) = self.w.primary() else { return };
        let s = 1 - p;
        let Some(origin) = self.random_up_ctrl() else { return };
        let mode = self.setup.mode;
        let pname = self.w.servers[p].name.clone();
        self.shutdown(origin, &[pname.as_str()], mode);
        if !self.expect("FIG. 5: the first server shut down", DRAIN_WAIT, move |w| !w.servers[p].up) {
            return;
        }
        let current = self.w.servers[s].pos >= self.w.acked && !self.w.servers[p].promoted_since_final;
        let sname = self.w.servers[s].name.clone();
        if current {
            let what =
                format!("FIG. 5: {sname} current after {pname}'s shutdown (mode {}), online with it", mode.name());
            if !self.expect(&what, 200, move |w| w.primary() == Some(s)) {
                return;
            }
            self.quiet_writes();
            // The second server fails (step 540).
            self.w.crash_server(s);
            self.run_for(5);
            if self.w.rng.coin() {
                // It returns (step 550): it was the only primary, it goes online again.
                self.w.restart_server(s);
                let what = format!("FIG. 5: {sname} (the last primary) returned, online again");
                if !self.expect(&what, 200, move |w| w.primary() == Some(s)) {
                    return;
                }
            } else {
                // The first one returns instead: stale, it must stay offline (a promotion
                // would fail the data invariant).
                self.w.restart_server(p);
                if let Some(i) = self.random_up_ctrl() {
                    self.give_return(i, &[pname.as_str()]);
                }
                self.run_for(60);
                if self.w.primary().is_some() && !self.done() {
                    let state = self.w.state_line();
                    self.w.fail(format!("FIG. 5: {pname} is stale but the system went online: {state}"));
                    return;
                }
                self.w.restart_server(s);
            }
        } else {
            self.run_for(60);
        }
        self.w.restart_server(p);
        self.w.restart_server(s);
        if let Some(i) = self.random_up_ctrl() {
            self.give_return(i, &["A", "B"]);
        }
        if self.expect("FIG. 5: both back, online with both", 250, |w| w.online_both()) {
            self.expect("FIG. 5: every status agrees", 80, |w| w.statuses_agree());
        }
    }

    /// Both servers shut down; they come back each on its own side of a partition of the
    /// controllers (the operator returns them at each site). Only a side of more than the
    /// threshold may go online; then the partition heals and the other server must join as
    /// the secondary.
    fn split(&mut self) {
        let Some(origin) = self.random_up_ctrl() else { return };
        self.shutdown(origin, &["A", "B"], Mode::Normal);
        if !self.expect("split: both servers shut down", DRAIN_WAIT, |w| !w.servers[0].up && !w.servers[1].up) {
            return;
        }
        self.run_for(10);
        let n = self.w.ctrls.len();
        let mut order: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = self.w.rng.below(i as u64 + 1) as usize;
            order.swap(i, j);
        }
        // Side 0 (with A) gets floor(N/2) controllers, side 1 (with B) the rest.
        let mut side = vec![1usize; n];
        for &i in &order[..n / 2] {
            side[i] = 0;
        }
        for i in 0..n {
            for j in 0..n {
                self.w.cc[i][j] = side[i] == side[j];
            }
            for s in 0..2 {
                self.w.cs[i][s] = side[i] == s;
            }
        }
        self.w.ss = false;
        let text = format!("{side:?}");
        self.w.note(|| format!("partition: sides {text} (side 0 with A, side 1 with B)"));
        self.w.restart_server(0);
        self.w.restart_server(1);
        self.run_for(5);
        for s in 0..2 {
            let members: Vec<usize> = (0..n).filter(|i| side[*i] == s).collect();
            if let Some(&i) = members.first() {
                self.give_return(i, &["A", "B"]);
            }
        }
        let t = self.setup.world.threshold_count;
        let sizes = [side.iter().filter(|s| **s == 0).count(), side.iter().filter(|s| **s == 1).count()];
        match (0..2).find(|s| sizes[*s] > t) {
            Some(s) => {
                let what =
                    format!("split: the side of {} controllers (threshold {t}) online with its server", sizes[s]);
                if !self.expect(&what, 200, move |w| w.primary() == Some(s)) {
                    return;
                }
            }
            None => {
                self.run_for(120);
                if self.w.primary().is_some() && !self.done() {
                    let state = self.w.state_line();
                    self.w.fail(format!(
                        "split: online although no side has more than {t} controllers (sides of {} and {}): {state}",
                        sizes[0], sizes[1]
                    ));
                    return;
                }
            }
        }
        self.w.heal_links();
        if self.expect("split healed: online with both", 250, |w| w.online_both()) {
            self.expect("split healed: every status agrees", 80, |w| w.statuses_agree());
        }
    }
}

const DRAIN_WAIT: u64 = 80;
const SERVER_SETS: [&[&str]; 3] = [&["A"], &["B"], &["A", "B"]];

fn random_up(w: &mut World) -> Option<usize> {
    let up: Vec<usize> = (0..w.ctrls.len()).filter(|i| w.ctrls[*i].up).collect();
    if up.is_empty() {
        None
    } else {
        Some(*w.rng.pick(&up))
    }
}

/// Run one schedule. With `tracing`, every event, action and fault is recorded.
pub fn run(seed: u64, source: &PolicySource, extra: &Value, tracing: bool) -> Run {
    let setup = setup(seed, extra);
    let w = World::new(setup.world.clone(), source, mix(seed), tracing);
    let mut r = Runner { w, setup };
    let s = &r.setup;
    let summary = format!(
        "{} controllers, threshold {} ({}), report by {}, torn key writes {} per mille, {} chaos steps, epilogue {} mode {} returning {}",
        s.world.controllers,
        s.world.threshold_count,
        s.world.threshold.as_ref().map_or("default".to_owned(), |t| t.to_string()),
        s.world.report_by,
        s.torn_pm,
        s.chaos_steps,
        s.epilogue.name(),
        s.mode.name(),
        ["A", "B"][s.returning],
    );
    r.w.note(|| format!("schedule {seed:#018x}: {summary}"));
    r.w.faults = Faults { drop_pm: 0, torn_pm: 0, max_delay: 3, conn_delay: 1 };
    r.boot();
    if !r.done() {
        r.chaos();
    }
    let healed = !r.done() && r.heal();
    if healed && !r.done() {
        r.quiet_writes();
        match r.setup.epilogue {
            Epilogue::Fig4 => r.fig4(),
            Epilogue::Fig5 => r.fig5(),
            Epilogue::Split => r.split(),
        }
    }
    Run {
        seed,
        liveness_checked: r.live(),
        violation: r.w.violation.clone(),
        steps: r.w.step,
        calls: r.w.calls,
        trace: r.w.trace.take().unwrap_or_default(),
        summary,
    }
}
