//! Topology reports: every node tells its parent what its subtree looks like, and the
//! root shares the whole tree, so any node can draw it.
//!
//! Reports travel inside ordinary `DATA` messages, so JS tree-overlay nodes relay the
//! tree broadcast like any data and are otherwise undisturbed:
//! - child → parent: `{"subtree": T}`,
//! - root → everyone: the broadcast `{"broadcast": {"tree": T}}`,
//!
//! where `T = {"name": "<node name>", "children": [T, …]}`. A child that never reports
//! (a JS node) appears as `{"name": "?<first 8 characters of its id>", "children": []}`.
//!
//! IO-free: the node state feeds changes in and asks, when due, for a report to send.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use crate::event::Delivery;

/// Key of a child's subtree report inside `data`.
pub(crate) const SUBTREE_KEY: &str = "subtree";
/// Key of the whole tree inside a broadcast payload.
pub(crate) const TREE_KEY: &str = "tree";

/// Reports are coalesced: at most one per this delay.
pub(crate) const DEBOUNCE: Duration = Duration::from_millis(100);

/// One node's view of its subtree, and when to report it.
#[derive(Debug)]
pub(crate) struct Topology {
    name: String,
    reports: HashMap<String, Value>,
    last_sent: Option<Value>,
    due: Option<Instant>,
}

impl Topology {
    /// A node named `name` (shown in the tree).
    #[must_use]
    pub(crate) fn new(name: String) -> Self {
        Self {
            name,
            reports: HashMap::new(),
            last_sent: None,
            due: None,
        }
    }

    /// Something changed: report within the debounce delay.
    pub(crate) fn touch(&mut self, now: Instant) {
        self.due.get_or_insert(now + DEBOUNCE);
    }

    /// A new parent needs the report even if nothing changed.
    pub(crate) fn reset(&mut self, now: Instant) {
        self.last_sent = None;
        self.touch(now);
    }

    /// A child reported its subtree. Returns whether it was a well-formed report.
    pub(crate) fn child_report(&mut self, child: &str, subtree: Value, now: Instant) -> bool {
        if !is_tree(&subtree, 0) {
            return false;
        }
        if self.reports.get(child) != Some(&subtree) {
            self.reports.insert(child.to_owned(), subtree);
            self.touch(now);
        }
        true
    }

    /// A child left.
    pub(crate) fn child_gone(&mut self, child: &str, now: Instant) {
        self.reports.remove(child);
        self.touch(now);
    }

    /// When [`Topology::poll`] has something to do.
    #[must_use]
    pub(crate) fn due(&self) -> Option<Instant> {
        self.due
    }

    /// When due: this node's subtree, if it changed since the last report. `children` are
    /// the current children's ids in slot order.
    pub(crate) fn poll<'a>(
        &mut self,
        now: Instant,
        children: impl Iterator<Item = &'a str>,
    ) -> Option<Value> {
        if self.due.is_none_or(|due| due > now) {
            return None;
        }
        self.due = None;
        let children: Vec<Value> = children
            .map(|id| {
                self.reports.get(id).cloned().unwrap_or_else(
                    || json!({"name": format!("?{}", id.get(..8).unwrap_or(id)), "children": []}),
                )
            })
            .collect();
        let tree = json!({"name": self.name, "children": children});
        if self.last_sent.as_ref() == Some(&tree) {
            return None;
        }
        self.last_sent = Some(tree.clone());
        Some(tree)
    }
}

/// Nodes in a tree picture.
pub(crate) fn size(tree: &Value) -> usize {
    1 + tree
        .get("children")
        .and_then(Value::as_array)
        .map_or(0, |children| children.iter().map(size).sum())
}

/// Deepest subtree accepted from a child, to bound the work a bad report can cause.
const MAX_DEPTH: usize = 64;

fn is_tree(value: &Value, depth: usize) -> bool {
    depth < MAX_DEPTH
        && value.get("name").is_some_and(Value::is_string)
        && value
            .get("children")
            .and_then(Value::as_array)
            .is_some_and(|children| children.iter().all(|c| is_tree(c, depth + 1)))
}

/// The subtree inside a child's `data`, if it is a report.
pub(crate) fn as_subtree_report(data: &Value) -> Option<&Value> {
    data.as_object()
        .filter(|o| o.len() == 1)
        .and_then(|o| o.get(SUBTREE_KEY))
}

/// The tree inside the root's broadcast `{"tree": T}`, taken out of it; anything else
/// comes back as it was.
pub(crate) fn tree_of(delivery: Delivery, data: Value) -> Result<Value, Value> {
    match data {
        Value::Object(mut object)
            if delivery == Delivery::Broadcast
                && object.len() == 1
                && object.contains_key(TREE_KEY) =>
        {
            Ok(object.remove(TREE_KEY).unwrap_or(Value::Null))
        }
        other => Err(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_changes_once_after_the_debounce() {
        let t0 = Instant::now();
        let mut topology = Topology::new("me".into());
        assert_eq!(topology.poll(t0, std::iter::empty()), None, "nothing due");
        topology.reset(t0);
        assert_eq!(topology.poll(t0, std::iter::empty()), None, "debounced");
        let later = t0 + DEBOUNCE;
        assert_eq!(
            topology.poll(later, std::iter::empty()),
            Some(json!({"name":"me","children":[]}))
        );
        topology.touch(later);
        assert_eq!(
            topology.poll(later + DEBOUNCE, std::iter::empty()),
            None,
            "unchanged"
        );
    }

    #[test]
    fn composes_children_reports_and_placeholders() {
        let t0 = Instant::now();
        let mut topology = Topology::new("root".into());
        let report = json!({"name":"a","children":[{"name":"b","children":[]}]});
        assert!(topology.child_report("aaaaaaaaaaaa", report.clone(), t0));
        let tree = topology.poll(
            t0 + DEBOUNCE,
            ["aaaaaaaaaaaa", "0123456789abcdef"].into_iter(),
        );
        assert_eq!(
            tree,
            Some(json!({"name":"root","children":[report, {"name":"?01234567","children":[]}]}))
        );
        topology.child_gone("aaaaaaaaaaaa", t0);
        let tree = topology
            .poll(t0 + DEBOUNCE, ["0123456789abcdef"].into_iter())
            .expect("changed");
        assert_eq!(tree["children"].as_array().map(Vec::len), Some(1));
    }

    #[test]
    fn trees_are_counted_and_taken_out_of_broadcasts() {
        let tree = json!({"name":"r","children":[{"name":"a","children":[]}]});
        assert_eq!(size(&tree), 2);
        let wrapped = json!({"tree": {"name":"r","children":[{"name":"a","children":[]}]}});
        assert_eq!(tree_of(Delivery::Broadcast, wrapped.clone()), Ok(tree));
        assert_eq!(tree_of(Delivery::Direct, wrapped.clone()), Err(wrapped));
    }

    #[test]
    fn rejects_malformed_reports() {
        let t0 = Instant::now();
        let mut topology = Topology::new("x".into());
        for bad in [
            json!(5),
            json!({"name": 1, "children": []}),
            json!({"name": "a"}),
            json!({"name":"a","children":[1]}),
        ] {
            assert!(!topology.child_report("c", bad, t0));
        }
        let mut deep = json!({"name": "leaf", "children": []});
        for _ in 0..100 {
            deep = json!({"name": "n", "children": [deep]});
        }
        assert!(!topology.child_report("c", deep, t0));
        assert_eq!(as_subtree_report(&json!({"subtree": 1})), Some(&json!(1)));
        assert_eq!(as_subtree_report(&json!({"subtree": 1, "x": 2})), None);
    }
}
