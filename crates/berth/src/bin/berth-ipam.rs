//! `berth-ipam`: Berth's CNI IPAM plugin binary. The logic lives in `berth_cni::plugin`; this file
//! only gives it a process, in the package that ships every Berth binary.

fn main() {
    berth_cni::plugin::main()
}
