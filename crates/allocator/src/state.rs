//! The allocator's cache of the ledger: blocks, bindings, in-flight reservations and cursors.
//! Never held across an await: every ledger write happens outside it.

use berth_core::block::block_name;
use berth_core::{Binding, Block, Family, Owner, PoolSpec, SubnetSpec};
use berth_ledger::Stored;
use ipnet::IpNet;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;

type AttachmentKey = (String, String, String);

fn key(o: &Owner) -> AttachmentKey {
    (o.network.clone(), o.container_id.clone(), o.ifname.clone())
}

#[derive(Default)]
pub(crate) struct State {
    pub loaded: bool,
    pub pools: HashMap<String, PoolSpec>,
    blocks: BTreeMap<String, Stored<Block>>,
    pub bindings: HashMap<IpAddr, Stored<Binding>>,
    by_owner: HashMap<AttachmentKey, Vec<IpAddr>>,
    pub pending: HashSet<IpAddr>,
    cursors: HashMap<IpNet, IpAddr>,
}

impl State {
    pub fn load(&mut self, blocks: Vec<Stored<Block>>, bindings: Vec<Stored<Binding>>) {
        self.blocks.clear();
        self.bindings.clear();
        self.by_owner.clear();
        for b in blocks {
            self.insert_block(b);
        }
        for b in bindings {
            self.insert_binding(b);
        }
        self.loaded = true;
    }

    pub fn insert_block(&mut self, b: Stored<Block>) {
        self.blocks.insert(b.value.name(), b);
    }

    pub fn block_known(&self, pool: &str, cidr: &IpNet) -> bool {
        self.blocks.contains_key(&block_name(pool, cidr))
    }

    pub fn block_count(&self) -> usize {
        self.blocks.len()
    }

    pub fn insert_binding(&mut self, b: Stored<Binding>) {
        let ip = b.value.address;
        self.remove_binding(ip);
        self.by_owner
            .entry(key(&b.value.owner))
            .or_default()
            .push(ip);
        self.bindings.insert(ip, b);
    }

    pub fn remove_binding(&mut self, ip: IpAddr) {
        if let Some(old) = self.bindings.remove(&ip) {
            let k = key(&old.value.owner);
            if let Some(v) = self.by_owner.get_mut(&k) {
                v.retain(|a| *a != ip);
                if v.is_empty() {
                    self.by_owner.remove(&k);
                }
            }
        }
    }

    pub fn held_by(&self, owner: &Owner) -> Vec<Stored<Binding>> {
        self.by_owner
            .get(&key(owner))
            .into_iter()
            .flatten()
            .filter_map(|ip| self.bindings.get(ip).cloned())
            .collect()
    }

    fn my_blocks<'a>(
        &'a self,
        node: &'a str,
        pool: &'a PoolSpec,
        subnet: &'a SubnetSpec,
    ) -> impl Iterator<Item = &'a Block> + 'a {
        self.blocks
            .values()
            .map(|s| &s.value)
            .filter(move |b| b.node == node && b.pool == pool.name && subnet.cidr.contains(&b.cidr))
    }

    fn find_free(
        &self,
        node: &str,
        pool: &PoolSpec,
        fam: Family,
    ) -> Option<(IpAddr, SubnetSpec, IpNet)> {
        for subnet in pool.subnets.iter().filter(|s| s.family() == fam) {
            for block in self.my_blocks(node, pool, subnet) {
                let used =
                    |ip: IpAddr| self.bindings.contains_key(&ip) || self.pending.contains(&ip);
                if let Some(ip) =
                    block.next_free(subnet, used, self.cursors.get(&block.cidr).copied())
                {
                    return Some((ip, subnet.clone(), block.cidr));
                }
            }
        }
        None
    }

    /// Pick a free address in one of the node's blocks and mark it in flight.
    pub fn reserve_free(
        &mut self,
        node: &str,
        pool: &PoolSpec,
        fam: Family,
    ) -> Option<(IpAddr, SubnetSpec, IpNet)> {
        let pick = self.find_free(node, pool, fam)?;
        self.pending.insert(pick.0);
        self.cursors.insert(pick.2, pick.0);
        Some(pick)
    }

    pub fn has_free(&self, node: &str, pool: &PoolSpec, fam: Family) -> bool {
        self.find_free(node, pool, fam).is_some()
    }
}
