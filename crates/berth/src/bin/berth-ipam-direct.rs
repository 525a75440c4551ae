//! `berth-ipam-direct`: the direct path of Berth's CNI IPAM plugin (the configuration's own
//! ledger, no agent), which `berth-ipam` hands over to. The logic lives in `berth_cni::direct`.

fn main() {
    berth_cni::direct::main()
}
