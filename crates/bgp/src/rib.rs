//! The speaker's own routes (what the embedding agent announces), with an
//! index of changes so a session brings its peer up to date by looking at the
//! prefixes that changed, not at the whole table.
//!
//! Routes are kept per [`Target`] (all peers, a group, one peer). Every edit
//! bumps a version and records the prefix in a journal keyed by version (one
//! entry per prefix: its latest change). A session remembers the version it
//! last synced at and asks for the prefixes changed since; only when the
//! journal has been trimmed past that version does it diff the whole view.
//! The journal keeps only what some synced session has not seen yet (and at
//! most half the table), so once every session is up to date it is empty.
//! Attribute sets are interned with a use count, so releasing one is O(1).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use crate::attributes::RouteAttrs;
use crate::prefix::Prefix;
use crate::rib_out::{self, Diff, RouteSet};

/// Which peers a route goes to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    /// Every peer.
    All,
    /// Peers in this group.
    Group(String),
    /// One peer.
    Peer(IpAddr),
}

/// Journal entries always kept, whatever the table size: enough for a burst
/// of edits between two syncs of a slow session.
const JOURNAL_MIN: usize = 4096;

/// The routes, their interned attributes, and the change journal.
#[derive(Debug, Default)]
pub struct Rib {
    tables: BTreeMap<Target, RouteSet>,
    entries: usize,
    interned: HashMap<Arc<RouteAttrs>, usize>,
    version: u64,
    journal: BTreeMap<u64, Prefix>,
    last_change: HashMap<Prefix, u64>,
    /// Changes up to this version have been dropped from the journal.
    floor: u64,
    /// The version each synced session has reached.
    acks: HashMap<IpAddr, u64>,
}

/// What a session must send to catch up: the diff and the version it reaches.
#[derive(Debug, Default)]
pub struct SyncPlan {
    /// Version of the RIB the diff brings the peer to.
    pub version: u64,
    /// Withdrawals and announcements.
    pub diff: Diff,
    /// Prefixes looked at to compute the diff (the cost of the sync).
    pub examined: usize,
}

impl Rib {
    /// Current version: bumped by every change.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Number of (target, prefix) entries.
    pub fn len(&self) -> usize {
        self.entries
    }

    /// True when no route is announced.
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Distinct attribute sets in use.
    pub fn attribute_sets(&self) -> usize {
        self.interned.len()
    }

    fn intern(&mut self, a: RouteAttrs) -> Arc<RouteAttrs> {
        if let Some((k, n)) = self.interned.get_key_value(&a) {
            let k = Arc::clone(k);
            let n = *n;
            self.interned.insert(Arc::clone(&k), n + 1);
            return k;
        }
        let k = Arc::new(a);
        self.interned.insert(Arc::clone(&k), 1);
        k
    }

    fn release(&mut self, a: &Arc<RouteAttrs>) {
        if let Some(n) = self.interned.get_mut(a.as_ref()) {
            *n -= 1;
            if *n == 0 {
                self.interned.remove(a.as_ref());
            }
        }
    }

    fn touch(&mut self, p: Prefix) {
        self.version += 1;
        if self.acks.is_empty() {
            // No synced session: whoever syncs next diffs in full anyway.
            self.floor = self.version;
            return;
        }
        if let Some(old) = self.last_change.insert(p, self.version) {
            self.journal.remove(&old);
        }
        self.journal.insert(self.version, p);
        // Past half the table a full diff costs no more than the journal would.
        let limit = JOURNAL_MIN.max(self.entries / 2);
        if self.journal.len() > limit {
            // Keep the newer half; sessions older than that diff in full once.
            while self.journal.len() > limit / 2 {
                let Some((v, q)) = self.journal.pop_first() else {
                    break;
                };
                self.last_change.remove(&q);
                self.floor = v;
            }
        }
    }

    /// Announces `p` to `t` with `attrs`; true if that changed anything.
    pub fn announce(&mut self, t: Target, p: Prefix, attrs: RouteAttrs) -> bool {
        if self
            .tables
            .get(&t)
            .and_then(|tab| tab.get(&p))
            .is_some_and(|a| **a == attrs)
        {
            return false;
        }
        let a = self.intern(attrs);
        let old = self.tables.entry(t).or_default().insert(p, a);
        match old {
            Some(o) => self.release(&o),
            None => self.entries += 1,
        }
        self.touch(p);
        true
    }

    /// Withdraws `p` from `t`; true if it was there.
    pub fn withdraw(&mut self, t: &Target, p: Prefix) -> bool {
        let Some(tab) = self.tables.get_mut(t) else {
            return false;
        };
        let Some(old) = tab.remove(&p) else {
            return false;
        };
        if tab.is_empty() {
            self.tables.remove(t);
        }
        self.entries -= 1;
        self.release(&old);
        self.touch(p);
        true
    }

    /// Replaces every route with `routes`; only the prefixes whose entries
    /// differ are journaled. Returns how many entries changed.
    pub fn replace(&mut self, routes: Vec<(Target, Prefix, RouteAttrs)>) -> usize {
        let mut want: BTreeMap<Target, BTreeMap<Prefix, RouteAttrs>> = BTreeMap::new();
        for (t, p, a) in routes {
            want.entry(t).or_default().insert(p, a);
        }
        let mut gone = Vec::new();
        for (t, tab) in &self.tables {
            let w = want.get(t);
            for p in tab.keys() {
                if w.is_none_or(|w| !w.contains_key(p)) {
                    gone.push((t.clone(), *p));
                }
            }
        }
        let mut n = 0;
        for (t, p) in gone {
            n += usize::from(self.withdraw(&t, p));
        }
        for (t, tab) in want {
            for (p, a) in tab {
                n += usize::from(self.announce(t.clone(), p, a));
            }
        }
        n
    }

    /// The attributes `p` has for a peer with `address` in `groups`: a route
    /// for the peer beats one for its groups (the last listed group wins)
    /// beats one for all peers.
    pub fn lookup(
        &self,
        address: IpAddr,
        groups: &[String],
        p: &Prefix,
    ) -> Option<&Arc<RouteAttrs>> {
        if let Some(a) = self
            .tables
            .get(&Target::Peer(address))
            .and_then(|t| t.get(p))
        {
            return Some(a);
        }
        for g in groups.iter().rev() {
            if let Some(a) = self
                .tables
                .get(&Target::Group(g.clone()))
                .and_then(|t| t.get(p))
            {
                return Some(a);
            }
        }
        self.tables.get(&Target::All).and_then(|t| t.get(p))
    }

    /// Every route a peer with `address` in `groups` should have.
    pub fn view(&self, address: IpAddr, groups: &[String]) -> RouteSet {
        let mut v = self.tables.get(&Target::All).cloned().unwrap_or_default();
        for g in groups {
            if let Some(t) = self.tables.get(&Target::Group(g.clone())) {
                v.extend(t.iter().map(|(p, a)| (*p, Arc::clone(a))));
            }
        }
        if let Some(t) = self.tables.get(&Target::Peer(address)) {
            v.extend(t.iter().map(|(p, a)| (*p, Arc::clone(a))));
        }
        v
    }

    /// Journal entries held (changes some synced session has not seen).
    pub fn journal_len(&self) -> usize {
        self.journal.len()
    }

    /// Drops the journal entries every synced session has seen.
    fn compact(&mut self) {
        let seen = self.acks.values().min().copied().unwrap_or(self.version);
        while let Some((&v, &p)) = self.journal.first_key_value() {
            if v > seen {
                break;
            }
            self.journal.pop_first();
            self.last_change.remove(&p);
            self.floor = v;
        }
    }

    /// The session of `address` is gone (or will diff in full next time):
    /// the journal no longer keeps changes for it.
    pub fn forget(&mut self, address: IpAddr) {
        if self.acks.remove(&address).is_some() {
            self.compact();
        }
    }

    /// What a peer that was sent `sent` when the RIB was at version `since`
    /// (`None`: never synced, or its view changed shape) needs now. Looks at
    /// the prefixes changed since `since` only, unless the journal no longer
    /// reaches back that far. The session is taken to reach the returned
    /// version (if sending fails it goes down, and [`Rib::forget`] follows).
    pub fn plan(
        &mut self,
        address: IpAddr,
        groups: &[String],
        sent: &RouteSet,
        since: Option<u64>,
    ) -> SyncPlan {
        let mut plan = SyncPlan {
            version: self.version,
            ..Default::default()
        };
        match since.filter(|s| *s >= self.floor) {
            Some(s) => {
                for (_, p) in self.journal.range(s + 1..) {
                    plan.examined += 1;
                    let want = self.lookup(address, groups, p);
                    match (sent.get(p), want) {
                        (Some(_), None) => plan.diff.withdraw.push(*p),
                        (None, Some(w)) => plan.diff.announce.push((*p, Arc::clone(w))),
                        (Some(s), Some(w)) if !Arc::ptr_eq(s, w) && s != w => {
                            plan.diff.announce.push((*p, Arc::clone(w)))
                        }
                        _ => {}
                    }
                }
            }
            None => {
                let want = self.view(address, groups);
                plan.examined = want.len() + sent.len();
                plan.diff = rib_out::diff(sent, &want);
            }
        }
        self.acks.insert(address, plan.version);
        self.compact();
        plan
    }
}

/// Applies a diff to what a peer holds.
pub fn apply(sent: &mut RouteSet, d: &Diff) {
    for p in &d.withdraw {
        sent.remove(p);
    }
    for (p, a) in &d.announce {
        sent.insert(*p, Arc::clone(a));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn host(i: u32) -> Prefix {
        Prefix::new(IpAddr::V4(Ipv4Addr::from(0xc613_0000 + i)), 32).unwrap()
    }

    fn med(m: u32) -> RouteAttrs {
        RouteAttrs {
            med: Some(m),
            ..Default::default()
        }
    }

    const A: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1));

    /// A withdraw in a table of 100,000 routes costs the session one lookup,
    /// and releasing the withdrawn route's attributes no scan either.
    #[test]
    fn withdraw_looks_at_the_changed_prefix_only() {
        let mut rib = Rib::default();
        let n = 100_000;
        for i in 0..n {
            // Every route has attributes of its own (per-Service communities).
            rib.announce(Target::All, host(i), med(i));
        }
        let mut sent = RouteSet::new();
        let first = rib.plan(A, &[], &sent, None);
        assert_eq!(first.diff.announce.len(), n as usize);
        apply(&mut sent, &first.diff);
        assert_eq!(rib.attribute_sets(), n as usize);

        assert_eq!(rib.journal_len(), 0, "the only session has seen everything");
        assert!(rib.withdraw(&Target::All, host(7)));
        assert_eq!(rib.attribute_sets(), n as usize - 1);
        assert_eq!(rib.journal_len(), 1);
        let plan = rib.plan(A, &[], &sent, Some(first.version));
        assert_eq!(plan.examined, 1, "a withdraw must not walk the RIB");
        assert_eq!(plan.diff.withdraw, vec![host(7)]);
        assert!(plan.diff.announce.is_empty());
        apply(&mut sent, &plan.diff);
        assert_eq!(sent, rib.view(A, &[]));
        assert_eq!(rib.journal_len(), 0);
    }

    /// The journal holds what a synced session has not seen yet, no more:
    /// a lagging session keeps it, forgetting the session releases it.
    #[test]
    fn journal_keeps_only_what_a_session_has_not_seen() {
        let mut rib = Rib::default();
        let b: IpAddr = "198.18.0.2".parse().unwrap();
        for i in 0..100 {
            rib.announce(Target::All, host(i), med(1));
        }
        assert_eq!(rib.journal_len(), 0, "no session: nothing kept");
        let (mut sa, mut sb) = (RouteSet::new(), RouteSet::new());
        let pa = rib.plan(A, &[], &sa, None);
        apply(&mut sa, &pa.diff);
        let pb = rib.plan(b, &[], &sb, None);
        apply(&mut sb, &pb.diff);
        for i in 0..10 {
            rib.withdraw(&Target::All, host(i));
        }
        assert_eq!(rib.journal_len(), 10);
        // A catches up; B lags: the journal stays for B.
        let pa2 = rib.plan(A, &[], &sa, Some(pa.version));
        assert_eq!(pa2.examined, 10);
        assert_eq!(rib.journal_len(), 10);
        let pb2 = rib.plan(b, &[], &sb, Some(pb.version));
        assert_eq!((pb2.examined, pb2.diff.withdraw.len()), (10, 10));
        assert_eq!(rib.journal_len(), 0);
        rib.withdraw(&Target::All, host(50));
        assert_eq!(rib.journal_len(), 1);
        rib.forget(A);
        rib.forget(b);
        assert_eq!(rib.journal_len(), 0);
    }

    /// Sessions whose version the trimmed journal no longer reaches diff the
    /// whole view once, and still end up exact.
    #[test]
    fn journal_trim_forces_one_full_diff() {
        let mut rib = Rib::default();
        for i in 0..10 {
            rib.announce(Target::All, host(i), med(i));
        }
        let mut sent = RouteSet::new();
        let plan = rib.plan(A, &[], &sent, None);
        apply(&mut sent, &plan.diff);
        let v = plan.version;
        // Many distinct prefixes come and go: the journal is trimmed.
        for i in 100..(100 + 2 * JOURNAL_MIN as u32) {
            rib.announce(Target::All, host(i), med(1));
            rib.withdraw(&Target::All, host(i));
        }
        rib.announce(Target::All, host(3), med(99));
        assert!(rib.journal.len() <= JOURNAL_MIN);
        assert!(rib.floor > v);
        let full = rib.plan(A, &[], &sent, Some(v));
        assert_eq!(full.examined, 20, "full diff of view and sent");
        apply(&mut sent, &full.diff);
        assert_eq!(sent, rib.view(A, &[]));
        assert_eq!(sent[&host(3)].med, Some(99));
    }

    #[test]
    fn targets_override_all_then_group_then_peer() {
        let mut rib = Rib::default();
        let b: IpAddr = "198.18.0.2".parse().unwrap();
        let tor = vec!["tor".to_string()];
        let (p, q) = (host(1), host(2));
        rib.announce(Target::All, p, med(1));
        rib.announce(Target::Group("tor".into()), p, med(2));
        rib.announce(Target::Peer(b), q, med(3));
        let va = rib.view(A, &tor);
        let vb = rib.view(b, &[]);
        assert_eq!(va.get(&p).and_then(|x| x.med), Some(2));
        assert!(!va.contains_key(&q));
        assert_eq!(vb.get(&p).and_then(|x| x.med), Some(1));
        assert_eq!(vb.get(&q).and_then(|x| x.med), Some(3));
        for (v, addr, groups) in [(&va, A, &tor[..]), (&vb, b, &[][..])] {
            for (k, a) in v.iter() {
                assert_eq!(rib.lookup(addr, groups, k), Some(a));
            }
        }
        // Equal attributes are shared, not copied.
        rib.announce(Target::All, q, med(1));
        let v = rib.view("198.18.0.3".parse().unwrap(), &[]);
        assert!(Arc::ptr_eq(&v[&p], &v[&q]));
        rib.withdraw(&Target::Group("tor".into()), p);
        assert_eq!(rib.view(A, &tor).get(&p).and_then(|x| x.med), Some(1));
    }

    #[test]
    fn incremental_plans_match_full_diffs() {
        let mut rib = Rib::default();
        let tor = vec!["tor".to_string()];
        let mut sent = RouteSet::new();
        let mut v = None;
        for round in 0..50u32 {
            for i in 0..20 {
                let k = (round * 7 + i * 13) % 40;
                match (round + i) % 4 {
                    0 => {
                        rib.withdraw(&Target::All, host(k));
                    }
                    1 => {
                        rib.announce(Target::Group("tor".into()), host(k), med(round));
                    }
                    2 => {
                        rib.announce(Target::Peer(A), host(k), med(i));
                    }
                    _ => {
                        rib.announce(Target::All, host(k), med(k));
                    }
                }
            }
            let plan = rib.plan(A, &tor, &sent, v);
            apply(&mut sent, &plan.diff);
            v = Some(plan.version);
            assert_eq!(sent, rib.view(A, &tor), "round {round}");
        }
        // replace() journals only what differs.
        let routes: Vec<_> = rib
            .view(A, &tor)
            .into_iter()
            .map(|(p, a)| (Target::All, p, (*a).clone()))
            .collect();
        let before = rib.version();
        rib.replace(routes.clone());
        let changed = rib.version() - before;
        assert!(changed <= 80, "{changed}");
        let before = rib.version();
        assert_eq!(rib.replace(routes), 0);
        assert_eq!(rib.version(), before);
    }
}
