//! Unit tests (config, key, the determination of step 464, the patent's scenarios on a small
//! in-memory cluster) and property tests, with the helpers they share.

mod config;
mod determine;
mod props;
mod scenarios;

use std::collections::{BTreeSet, VecDeque};

use gateway_sdk::{Action, Event};
use serde_json::{json, Value};

use crate::config::Config;
use crate::Machine;

pub(super) fn names(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("c{i}")).collect()
}

pub(super) fn config(me: &str, n: usize, extra: Value) -> Config {
    let mut c = json!({ "controller": me, "controllers": names(n), "servers": ["A", "B"] });
    if let Value::Object(e) = extra {
        for (k, v) in e {
            c[k] = v;
        }
    }
    Config::from_json(&c).unwrap()
}

/// A controller that loaded `key` (none: bootstrapped by the operator).
pub(super) fn machine(me: &str, n: usize) -> Machine {
    let mut m = Machine::new(config(me, n, json!({})));
    m.handle(&Event::KeyLoaded { key: None });
    m.handle(&Event::Admin { command: "bootstrap".into(), args: json!({}) });
    m
}

pub(super) fn report(server: &str, operational: bool, position: u64, copies_pending: u64) -> Event {
    Event::ServerReport { server: server.into(), operational, position, copies_pending }
}

pub(super) fn go_online(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::GoOnline { target } => Some(target.clone()),
            _ => None,
        })
        .collect()
}

/// Controllers wired together in memory: messages are delivered in order, instantly, except
/// to and from controllers that are cut off or down.
pub(super) struct Cluster {
    pub m: Vec<Machine>,
    pub names: Vec<String>,
    pub now: u64,
    queue: VecDeque<(usize, usize, Value)>,
    pub cut: BTreeSet<usize>,
    pub down: BTreeSet<usize>,
    /// Every action, with the controller that took it.
    pub log: Vec<(usize, Action)>,
    /// The last saved key of each controller.
    pub keys: Vec<Option<Value>>,
}

impl Cluster {
    pub fn new(n: usize, extra: Value) -> Cluster {
        let names = names(n);
        let m = names.iter().map(|me| Machine::new(config(me, n, extra.clone()))).collect();
        let mut c = Cluster {
            m,
            names,
            now: 0,
            queue: VecDeque::new(),
            cut: BTreeSet::new(),
            down: BTreeSet::new(),
            log: Vec::new(),
            keys: vec![None; n],
        };
        for i in 0..n {
            c.event(i, &Event::KeyLoaded { key: None });
            c.event(i, &Event::Admin { command: "bootstrap".into(), args: json!({}) });
            for j in 0..n {
                if i != j {
                    let controller = c.names[j].clone();
                    c.event(i, &Event::ControllerUp { controller });
                }
            }
        }
        c.settle();
        c
    }

    pub fn event(&mut self, i: usize, e: &Event) -> Vec<Action> {
        if self.down.contains(&i) {
            return Vec::new();
        }
        let actions = self.m[i].handle(e);
        for a in &actions {
            match a {
                Action::SendToController { to, body } => {
                    if self.cut.contains(&i) {
                        continue;
                    }
                    for j in 0..self.m.len() {
                        if j != i && (to == "*" || *to == self.names[j]) {
                            self.queue.push_back((i, j, body.clone()));
                        }
                    }
                }
                Action::SaveKey { key } => self.keys[i] = Some(key.clone()),
                _ => {}
            }
            self.log.push((i, a.clone()));
        }
        actions
    }

    /// The same event to every running controller.
    pub fn all(&mut self, e: &Event) {
        for i in 0..self.m.len() {
            self.event(i, e);
        }
    }

    pub fn settle(&mut self) {
        let mut budget = 100_000;
        while let Some((from, to, body)) = self.queue.pop_front() {
            budget -= 1;
            assert!(budget > 0, "messages never settle");
            if self.cut.contains(&to) || self.down.contains(&to) {
                continue;
            }
            let from = self.names[from].clone();
            self.event(to, &Event::ControllerMessage { from, body });
        }
    }

    /// Let `ms` pass in ticks of 100 ms, settling after each.
    pub fn run(&mut self, ms: u64) {
        for _ in 0..ms / 100 {
            self.now += 100;
            let now_ms = self.now;
            self.all(&Event::Tick { now_ms });
            self.settle();
        }
    }

    pub fn mark(&self) -> usize {
        self.log.len()
    }

    /// The distinct `GoOnline` targets since `mark`, in the order first given (controllers
    /// re-send them: the host ignores what is already done).
    pub fn online_since(&self, mark: usize) -> Vec<String> {
        let actions: Vec<Action> = self.log[mark..].iter().map(|(_, a)| a.clone()).collect();
        let mut out: Vec<String> = Vec::new();
        for t in go_online(&actions) {
            if !out.contains(&t) {
                out.push(t);
            }
        }
        out
    }

    /// The last status every running controller reported.
    pub fn statuses(&self) -> Vec<Value> {
        (0..self.m.len())
            .filter(|i| !self.down.contains(i))
            .filter_map(|i| {
                self.log.iter().rev().find_map(|(j, a)| match a {
                    Action::Report { key, value } if *j == i && key == "quorum" => Some(value.clone()),
                    _ => None,
                })
            })
            .collect()
    }

    /// Restart controller `i` with what its store holds (`torn`: the store is unreadable).
    pub fn restart(&mut self, i: usize, torn: bool) {
        let n = self.m.len();
        self.m[i] = Machine::new(config(&self.names[i].clone(), n, json!({})));
        self.down.remove(&i);
        let key = if torn { None } else { self.keys[i].clone() };
        self.event(i, &Event::KeyLoaded { key });
        for j in 0..n {
            if i != j {
                let controller = self.names[j].clone();
                self.event(i, &Event::ControllerUp { controller });
            }
        }
    }
}
