//! The CRDs checked into `deploy/base/crds.yaml` are exactly what the code derives.

#[test]
fn deploy_crds_yaml_is_up_to_date() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/base/crds.yaml");
    let checked_in = std::fs::read_to_string(path).unwrap_or_default();
    let generated = berth_k8s::crd::crds_yaml().unwrap();
    assert!(
        checked_in == generated,
        "deploy/base/crds.yaml is out of date: run `cargo run -p berth -- crds > deploy/base/crds.yaml`"
    );
}
