//! Service addresses on a real control plane (kube-apiserver v1.20.2 from Debian's source, with
//! the IPv6DualStack gate and two service CIDRs): `berth controller` processes, run as
//! deploy/base/berth.yaml's controller ServiceAccount with its RBAC, give LoadBalancer Services
//! their EXTERNAL-IP from Pools a user writes and honour `spec.externalIPs` only from pools
//! that allow them.
//!
//! `services_get_addresses_that_stay_put` covers, in one control plane:
//! 1. a LoadBalancer Service gets an address from the default pool (watch-driven: well under a
//!    second), visible in `status.loadBalancer`, as an AddressBinding and a Claim, with a Normal
//!    Event; `berth services` lists it; a status wiped by hand is written back, same address;
//! 2. scoping and priority: team-a's Service takes the higher-priority pool that admits only
//!    team-a; another namespace naming that pool waits with a Warning naming it; namespace and
//!    Service label selectors (a namespace labelled later is retried at once); a pool
//!    overlapping an older one hands nothing out (Ready=False, Warning on the Pool);
//! 3. dual-stack (RequireDualStack) gets one address per family;
//! 4. specific addresses by Berth's annotation, MetalLB's and `spec.loadBalancerIP`; a bad value
//!    is a Warning naming the annotation, and loses nothing;
//! 5. sharing: two Services with one sharing key and disjoint ports hold one address; a third
//!    with an overlapping port waits with a Warning;
//! 6. externalIPs: allowed from an `externalIPs: true` pool, refused (Warning, never in the
//!    ledger) outside one, in no pool, or when another Service holds it; released at once when
//!    removed from the Service, and then given to the one that waited for it;
//! 7. exhaustion and recovery: the third Service of a two-address pool waits, and gets the address
//!    as soon as a holder is deleted; a type change away from LoadBalancer releases at once; a
//!    pool that shrinks keeps the address it no longer contains (Warnings on Service and Pool);
//! 8. `loadBalancerClass` is dropped by 1.20's API server (the class rule is unit-tested);
//! 9. 50 Services: the only controller killed and started again (no address changes), a
//!    Service deleted while it was down (released on start), then leader failover between two
//!    replicas (no address changes; the new leader serves new Services); `berth audit` clean; no
//!    request refused by the shipped RBAC.

mod common;

use berth_testbed::{Daemon, KubeControlPlane};
use common::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn api(cp: &KubeControlPlane, method: &str, path: &str, body: Option<Value>) -> Value {
    let r = cp.request(method, path, body.as_ref()).unwrap();
    r.ok().unwrap_or_else(|e| panic!("{method} {path}: {e:#}"))
}

fn pool(cp: &KubeControlPlane, name: &str, spec: Value) {
    api(
        cp,
        "POST",
        "/apis/berth.dev/v1alpha1/pools",
        Some(json!({"apiVersion": "berth.dev/v1alpha1", "kind": "Pool",
                    "metadata": {"name": name}, "spec": spec})),
    );
}

fn namespace(cp: &KubeControlPlane, name: &str, labels: Value) {
    api(
        cp,
        "POST",
        "/api/v1/namespaces",
        Some(json!({"apiVersion": "v1", "kind": "Namespace",
                    "metadata": {"name": name, "labels": labels}})),
    );
}

/// A Service of `type` with `ports` (TCP), extra metadata and spec merged in.
fn service(
    cp: &KubeControlPlane,
    ns: &str,
    name: &str,
    type_: &str,
    ports: &[u16],
    annotations: Value,
    extra: Value,
) -> Value {
    let mut spec = json!({
        "type": type_,
        "selector": {"app": name},
        "ports": ports.iter().map(|p| json!({"name": format!("p{p}"), "port": p, "protocol": "TCP"})).collect::<Vec<_>>(),
    });
    if let Value::Object(m) = extra {
        for (k, v) in m {
            spec[k] = v;
        }
    }
    api(
        cp,
        "POST",
        &format!("/api/v1/namespaces/{ns}/services"),
        Some(json!({"apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": name, "annotations": annotations},
                    "spec": spec})),
    )
}

fn get_service(cp: &KubeControlPlane, ns: &str, name: &str) -> Value {
    api(
        cp,
        "GET",
        &format!("/api/v1/namespaces/{ns}/services/{name}"),
        None,
    )
}

fn delete_service(cp: &KubeControlPlane, ns: &str, name: &str) {
    api(
        cp,
        "DELETE",
        &format!("/api/v1/namespaces/{ns}/services/{name}"),
        None,
    );
}

fn ingress(svc: &Value) -> Vec<String> {
    svc["status"]["loadBalancer"]["ingress"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|i| i["ip"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Wait until the Service's `status.loadBalancer` has `n` addresses; returns them and how long it
/// took.
fn wait_ingress(cp: &KubeControlPlane, ns: &str, name: &str, n: usize) -> (Vec<String>, Duration) {
    let t = Instant::now();
    loop {
        let ips = ingress(&get_service(cp, ns, name));
        if ips.len() == n {
            return (ips, t.elapsed());
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{ns}/{name}: status.loadBalancer has {ips:?}, want {n} address(es)"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The Events with `reason` on Service `ns/name`, waited for (at least one).
fn events(cp: &KubeControlPlane, ns: &str, name: &str, reason: &str) -> Vec<Value> {
    let t = Instant::now();
    loop {
        let ev = api(
            cp,
            "GET",
            &format!(
                "/api/v1/namespaces/{ns}/events?fieldSelector=involvedObject.name={name},reason={reason}"
            ),
            None,
        );
        let items = ev["items"].as_array().cloned().unwrap_or_default();
        if !items.is_empty() {
            return items;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "no {reason} Event on {ns}/{name}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn warning(cp: &KubeControlPlane, ns: &str, name: &str, reason: &str, needle: &str) -> String {
    let t = Instant::now();
    loop {
        let found: Vec<String> = events(cp, ns, name, reason)
            .iter()
            .filter(|e| e["type"] == "Warning")
            .filter_map(|e| e["message"].as_str().map(String::from))
            .collect();
        if let Some(m) = found.iter().find(|m| m.contains(needle)) {
            return m.clone();
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "no {reason} Warning on {ns}/{name} mentioning {needle:?}: {found:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every AddressBinding held by Services: address → "namespace/name" holders.
fn service_bindings(cp: &KubeControlPlane) -> BTreeMap<String, Vec<String>> {
    let list = api(cp, "GET", "/apis/berth.dev/v1alpha1/addressbindings", None);
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| {
            let s = &o["spec"];
            let holders = s["holder"]["services"]["services"].as_array()?;
            Some((
                s["address"].as_str()?.to_string(),
                holders
                    .iter()
                    .map(|h| {
                        format!(
                            "{}/{}",
                            h["namespace"].as_str().unwrap(),
                            h["name"].as_str().unwrap()
                        )
                    })
                    .collect(),
            ))
        })
        .collect()
}

fn spawn_controller(cp: &KubeControlPlane, kubeconfig: &Path, id: &str) -> Daemon {
    spawn_controller_with(cp, kubeconfig, id, &[])
}

fn spawn_controller_with(
    cp: &KubeControlPlane,
    kubeconfig: &Path,
    id: &str,
    extra: &[&str],
) -> Daemon {
    let mut cmd = Command::new(BERTH);
    cmd.arg("controller")
        .args(extra)
        .args(["--ledger", "kubernetes", "--kubeconfig"])
        .arg(kubeconfig)
        .args(["--interval", "500ms", "--lease-duration", "4s", "--id", id])
        .env("POD_NAMESPACE", BERTH_NAMESPACE)
        .env("BERTH_LOG", "info,berth_controller::services=debug");
    let log = cp.dir().join(format!(
        "svc-controller-{id}-{}.log",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    Daemon::spawn(&format!("controller-{id}"), cmd, Some(&log)).expect("spawning berth controller")
}

fn wait_log(d: &Daemon, needle: &str, within: Duration) {
    let t = Instant::now();
    while !plain_log(d).contains(needle) {
        assert!(
            t.elapsed() < within,
            "{needle:?} not in the controller's log:\n{}",
            d.log_tail(40)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn berth_cli_admin(cp: &KubeControlPlane, args: &[&str]) -> String {
    let out = Command::new(BERTH)
        .args(args)
        .args(["--ledger", "kubernetes", "--kubeconfig"])
        .arg(cp.kubeconfig())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "berth {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn services_get_addresses_that_stay_put() {
    berth_testbed::require_root();
    berth_testbed::require_kube_binaries();
    let t = Instant::now();
    let cp = KubeControlPlane::builder()
        .apiserver_arg("--feature-gates=IPv6DualStack=true")
        .service_cidr("10.96.0.0/16,2001:db8:5e::/112")
        .start()
        .expect("starting the control plane");
    cp.wait_default_service_account("default", Duration::from_secs(60))
        .expect("default ServiceAccount");
    timing("control plane up", t);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (client, _) = berth_k8s::client(Some(cp.kubeconfig())).await.unwrap();
        berth_k8s::crd::install(&client, Duration::from_secs(30))
            .await
            .unwrap();
    });
    let roles = shipped_roles(&cp);
    namespace(&cp, "team-a", json!({"team": "a"}));
    namespace(&cp, "bulk", json!({}));
    pool(
        &cp,
        "public",
        json!({"use": "service", "subnets": [{"cidr": "198.18.100.0/26"}, {"cidr": "2001:db8:100::/120"}]}),
    );
    pool(
        &cp,
        "team",
        json!({"use": "service", "subnets": [{"cidr": "198.18.101.0/29"}],
               "serviceAllocation": {"namespaces": ["team-a"], "priority": 10}}),
    );
    pool(
        &cp,
        "ext",
        json!({"use": "service", "subnets": [{"cidr": "198.18.102.0/29"}],
               "autoAssign": false, "externalIPs": true}),
    );
    pool(
        &cp,
        "tiny",
        json!({"use": "service", "subnets": [{"cidr": "198.18.103.0/30"}], "autoAssign": false}),
    );

    let metrics_addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut a = spawn_controller_with(
        &cp,
        &roles.controller,
        "a",
        &["--metrics", &metrics_addr.to_string()],
    );
    wait_log(&a, "service controller serving", Duration::from_secs(20));

    // 1. One Service, one address, at once.
    service(
        &cp,
        "default",
        "web",
        "LoadBalancer",
        &[80],
        json!({}),
        json!({}),
    );
    let (web, took) = wait_ingress(&cp, "default", "web", 1);
    eprintln!("first Service addressed in {took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert!(
        in_cidr(web[0].parse().unwrap(), "198.18.100.0/26"),
        "{web:?}"
    );
    assert_eq!(
        service_bindings(&cp).get(&web[0]),
        Some(&vec!["default/web".to_string()])
    );
    let claims = api(&cp, "GET", "/apis/berth.dev/v1alpha1/claims", None);
    assert!(
        claims["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["spec"]["key"] == "public/service/default/web"
                && c["spec"]["addresses"][0] == web[0].as_str()),
        "{claims}"
    );
    let assigned = events(&cp, "default", "web", "AddressAssigned");
    assert!(
        assigned[0]["message"].as_str().unwrap().contains(&web[0]),
        "{assigned:?}"
    );
    let listed = berth_cli_admin(&cp, &["services"]);
    assert!(
        listed
            .lines()
            .any(|l| l.contains("default/web") && l.contains(&web[0]) && l.contains("public")),
        "berth services:\n{listed}"
    );
    // Wiped by hand: written back, same address.
    api(
        &cp,
        "PATCH",
        "/api/v1/namespaces/default/services/web/status",
        Some(json!({"status": {"loadBalancer": {"ingress": null}}})),
    );
    let (again, _) = wait_ingress(&cp, "default", "web", 1);
    assert_eq!(again, web);

    // 2. Scoping and priority.
    service(
        &cp,
        "team-a",
        "api",
        "LoadBalancer",
        &[443],
        json!({}),
        json!({}),
    );
    let (api_ip, _) = wait_ingress(&cp, "team-a", "api", 1);
    assert!(
        in_cidr(api_ip[0].parse().unwrap(), "198.18.101.0/29"),
        "team pool first: {api_ip:?}"
    );
    service(
        &cp,
        "default",
        "sneaky",
        "LoadBalancer",
        &[443],
        json!({"berth.dev/pool": "team"}),
        json!({}),
    );
    let m = warning(&cp, "default", "sneaky", "AddressPending", "berth.dev/pool");
    assert!(m.contains("team-a") && m.contains("namespaces"), "{m}");
    assert!(ingress(&get_service(&cp, "default", "sneaky")).is_empty());

    // Selectors: a pool for namespaces labelled team=a and Services labelled tier=edge.
    pool(
        &cp,
        "edge",
        json!({"use": "service", "subnets": [{"cidr": "198.18.105.0/29"}], "autoAssign": false,
               "serviceAllocation": {"namespaceSelector": {"matchLabels": {"team": "a"}},
                                     "serviceSelector": {"matchLabels": {"tier": "edge"}}}}),
    );
    let edge = json!({"berth.dev/pool": "edge"});
    api(
        &cp,
        "POST",
        "/api/v1/namespaces/team-a/services",
        Some(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "edge", "labels": {"tier": "edge"}, "annotations": edge.clone()},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}})),
    );
    let (e, _) = wait_ingress(&cp, "team-a", "edge", 1);
    assert!(in_cidr(e[0].parse().unwrap(), "198.18.105.0/29"), "{e:?}");
    service(
        &cp,
        "team-a",
        "unlabelled",
        "LoadBalancer",
        &[80],
        edge.clone(),
        json!({}),
    );
    warning(
        &cp,
        "team-a",
        "unlabelled",
        "AddressPending",
        "serviceSelector",
    );
    service(
        &cp,
        "default",
        "elsewhere",
        "LoadBalancer",
        &[80],
        edge.clone(),
        json!({}),
    );
    warning(
        &cp,
        "default",
        "elsewhere",
        "AddressPending",
        "namespaceSelector",
    );
    // Labelling the namespace is enough: the namespace watch retries its Services.
    api(
        &cp,
        "PATCH",
        "/api/v1/namespaces/default",
        Some(json!({"metadata": {"labels": {"team": "a"}}})),
    );
    warning(
        &cp,
        "default",
        "elsewhere",
        "AddressPending",
        "serviceSelector",
    );

    // A pool overlapping an older one is not ready: nothing is handed out from it, and it says
    // why (condition and Warning Event on the Pool).
    // Creation times have whole seconds (pools created in the same second are ordered by
    // name): create it in a later second than `public`.
    let public = api(&cp, "GET", "/apis/berth.dev/v1alpha1/pools/public", None);
    let created = public["metadata"]["creationTimestamp"]
        .as_str()
        .unwrap()
        .to_string();
    loop {
        let now = api(
            &cp,
            "POST",
            "/api/v1/namespaces/default/configmaps",
            Some(
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"generateName": "clock-"}}),
            ),
        );
        if now["metadata"]["creationTimestamp"].as_str().unwrap() > created.as_str() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    pool(
        &cp,
        "dup",
        json!({"use": "service", "subnets": [{"cidr": "198.18.100.0/28"}]}),
    );
    service(
        &cp,
        "default",
        "on-dup",
        "LoadBalancer",
        &[80],
        json!({"berth.dev/pool": "dup"}),
        json!({}),
    );
    let m = warning(&cp, "default", "on-dup", "AddressPending", "not ready");
    assert!(m.contains("public"), "{m}");
    let t = Instant::now();
    loop {
        let p = api(&cp, "GET", "/apis/berth.dev/v1alpha1/pools/dup", None);
        let c = &p["status"]["conditions"][0];
        if c["type"] == "Ready" && c["status"] == "False" {
            assert_eq!(c["reason"], "Overlaps", "{c}");
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "dup: {p}");
        std::thread::sleep(Duration::from_millis(100));
    }
    warning(
        &cp,
        "default",
        "dup",
        "PoolNotReady",
        "overlaps pool \"public\"",
    );

    // 3. Dual-stack.
    service(
        &cp,
        "default",
        "dual",
        "LoadBalancer",
        &[80],
        json!({}),
        json!({"ipFamilyPolicy": "RequireDualStack", "ipFamilies": ["IPv6", "IPv4"]}),
    );
    let (dual, _) = wait_ingress(&cp, "default", "dual", 2);
    assert!(
        in_cidr(dual[0].parse().unwrap(), "2001:db8:100::/120"),
        "IPv6 first, as ipFamilies: {dual:?}"
    );
    assert!(
        in_cidr(dual[1].parse().unwrap(), "198.18.100.0/26"),
        "{dual:?}"
    );

    // 4. Specific addresses.
    service(
        &cp,
        "default",
        "fixed",
        "LoadBalancer",
        &[80],
        json!({"berth.dev/load-balancer-ips": "198.18.100.40"}),
        json!({}),
    );
    service(
        &cp,
        "default",
        "migrated",
        "LoadBalancer",
        &[80],
        json!({"metallb.universe.tf/loadBalancerIPs": "198.18.100.41"}),
        json!({}),
    );
    service(
        &cp,
        "default",
        "legacy",
        "LoadBalancer",
        &[80],
        json!({}),
        json!({"loadBalancerIP": "198.18.100.42"}),
    );
    assert_eq!(
        wait_ingress(&cp, "default", "fixed", 1).0,
        ["198.18.100.40"]
    );
    assert_eq!(
        wait_ingress(&cp, "default", "migrated", 1).0,
        ["198.18.100.41"]
    );
    assert_eq!(
        wait_ingress(&cp, "default", "legacy", 1).0,
        ["198.18.100.42"]
    );
    service(
        &cp,
        "default",
        "wrong",
        "LoadBalancer",
        &[80],
        json!({"berth.dev/load-balancer-ips": "198.18.100.x"}),
        json!({}),
    );
    let m = warning(
        &cp,
        "default",
        "wrong",
        "InvalidAnnotation",
        "berth.dev/load-balancer-ips",
    );
    assert!(m.contains("198.18.100.x"), "{m}");
    // A bad edit of a Service that holds an address loses nothing.
    api(
        &cp,
        "PATCH",
        "/api/v1/namespaces/default/services/fixed",
        Some(json!({"metadata": {"annotations": {"berth.dev/load-balancer-ips": "not-an-ip"}}})),
    );
    warning(&cp, "default", "fixed", "InvalidAnnotation", "not-an-ip");
    assert_eq!(
        ingress(&get_service(&cp, "default", "fixed")),
        ["198.18.100.40"]
    );
    assert!(service_bindings(&cp).contains_key("198.18.100.40"));
    // Taken: asking for another Service's address waits, naming the holder.
    service(
        &cp,
        "default",
        "copycat",
        "LoadBalancer",
        &[8080],
        json!({"berth.dev/load-balancer-ips": web[0].clone()}),
        json!({}),
    );
    let m = warning(&cp, "default", "copycat", "AddressPending", "default/web");
    assert!(m.contains(&web[0]), "{m}");

    // 5. Sharing.
    let share = json!({"berth.dev/sharing-key": "front"});
    service(
        &cp,
        "default",
        "http",
        "LoadBalancer",
        &[80],
        share.clone(),
        json!({}),
    );
    let (http, _) = wait_ingress(&cp, "default", "http", 1);
    service(
        &cp,
        "default",
        "https",
        "LoadBalancer",
        &[443],
        share.clone(),
        json!({}),
    );
    let (https, _) = wait_ingress(&cp, "default", "https", 1);
    assert_eq!(http, https, "one sharing key, disjoint ports: one address");
    assert_eq!(service_bindings(&cp)[&http[0]].len(), 2);
    service(
        &cp,
        "default",
        "clash",
        "LoadBalancer",
        &[80],
        share.clone(),
        json!({}),
    );
    let m = warning(&cp, "default", "clash", "AddressPending", "front");
    assert!(m.contains("80"), "{m}");
    assert!(ingress(&get_service(&cp, "default", "clash")).is_empty());

    // 6. externalIPs.
    service(
        &cp,
        "default",
        "extern",
        "ClusterIP",
        &[80],
        json!({}),
        json!({"externalIPs": ["198.18.102.2", "198.18.100.50", "198.19.7.7"]}),
    );
    warning(
        &cp,
        "default",
        "extern",
        "ExternalIPRefused",
        "198.18.100.50",
    );
    let m = warning(&cp, "default", "extern", "ExternalIPRefused", "198.19.7.7");
    assert!(m.contains("lies in no Pool"), "{m}");
    let b = service_bindings(&cp);
    assert_eq!(
        b.get("198.18.102.2"),
        Some(&vec!["default/extern".to_string()])
    );
    assert!(
        !b.contains_key("198.18.100.50") && !b.contains_key("198.19.7.7"),
        "{b:?}"
    );
    service(
        &cp,
        "default",
        "extern2",
        "ClusterIP",
        &[81],
        json!({}),
        json!({"externalIPs": ["198.18.102.2"]}),
    );
    let m = warning(
        &cp,
        "default",
        "extern2",
        "ExternalIPRefused",
        "198.18.102.2",
    );
    assert!(m.contains("default/extern"), "{m}");
    // Removed from spec.externalIPs: released at once, and the other Service that named it
    // gets it (it was waiting).
    api(
        &cp,
        "PATCH",
        "/api/v1/namespaces/default/services/extern",
        Some(json!({"spec": {"externalIPs": null}})),
    );
    let t = Instant::now();
    while service_bindings(&cp).get("198.18.102.2") != Some(&vec!["default/extern2".to_string()]) {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "198.18.102.2 not moved to extern2: {:?}",
            service_bindings(&cp)
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // 7. Exhaustion and recovery; release by type change.
    let tiny = json!({"berth.dev/pool": "tiny"});
    for n in ["t1", "t2", "t3"] {
        service(
            &cp,
            "default",
            n,
            "LoadBalancer",
            &[80],
            tiny.clone(),
            json!({}),
        );
        if n != "t3" {
            wait_ingress(&cp, "default", n, 1);
        }
    }
    warning(&cp, "default", "t3", "AddressPending", "no free");
    let t1 = ingress(&get_service(&cp, "default", "t1"));
    delete_service(&cp, "default", "t1");
    let (t3, took) = wait_ingress(&cp, "default", "t3", 1);
    assert_eq!(t3, t1, "the freed address goes to the waiting Service");
    eprintln!("a waiting Service got a freed address in {took:?}");
    api(
        &cp,
        "PATCH",
        "/api/v1/namespaces/default/services/t2",
        Some(json!({"spec": {"type": "ClusterIP"}})),
    );
    let t2_gone = Instant::now();
    while service_bindings(&cp)
        .values()
        .any(|h| h.contains(&"default/t2".to_string()))
    {
        assert!(
            t2_gone.elapsed() < Duration::from_secs(5),
            "t2's address not released"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(ingress(&get_service(&cp, "default", "t2")).is_empty());

    // A pool that shrinks keeps what it no longer contains, and says so (never moved).
    pool(
        &cp,
        "shrink",
        json!({"use": "service", "subnets": [{"cidr": "198.18.104.0/29"}]}),
    );
    service(
        &cp,
        "default",
        "sh",
        "LoadBalancer",
        &[80],
        json!({"berth.dev/pool": "shrink"}),
        json!({}),
    );
    let (sh, _) = wait_ingress(&cp, "default", "sh", 1);
    let p = api(&cp, "GET", "/apis/berth.dev/v1alpha1/pools/shrink", None);
    let mut p = p;
    p["spec"]["subnets"] =
        json!([{"cidr": "198.18.104.0/29", "excludes": [format!("{}/32", sh[0])]}]);
    api(&cp, "PUT", "/apis/berth.dev/v1alpha1/pools/shrink", Some(p));
    warning(&cp, "default", "sh", "AddressOutsidePool", &sh[0]);
    warning(&cp, "default", "shrink", "AddressesOutsidePool", &sh[0]);
    assert_eq!(ingress(&get_service(&cp, "default", "sh")), sh);
    // `berth audit` names it too, until the operator acts: here, deleting the Service.
    let audit = Command::new(BERTH)
        .args(["audit", "--ledger", "kubernetes", "--kubeconfig"])
        .arg(cp.kubeconfig())
        .output()
        .unwrap();
    assert!(!audit.status.success());
    assert!(
        String::from_utf8_lossy(&audit.stdout).contains(&sh[0]),
        "{audit:?}"
    );
    delete_service(&cp, "default", "sh");
    let t = Instant::now();
    while service_bindings(&cp).contains_key(&sh[0]) {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "sh's address not released"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // 8. loadBalancerClass: 1.20 has no such field (1.21 added it) and drops it, so the
    // Service has no class and is Berth's; the class rule itself (other classes are never
    // touched) is unit-tested in crates/k8s/src/services.rs.
    let theirs = service(
        &cp,
        "default",
        "theirs",
        "LoadBalancer",
        &[80],
        json!({}),
        json!({"loadBalancerClass": "example.com/other"}),
    );
    assert!(theirs["spec"]["loadBalancerClass"].is_null(), "{theirs}");
    wait_ingress(&cp, "default", "theirs", 1);

    // Metrics: leadership, waiting Services, addresses per pool, writes.
    let text = http_get(metrics_addr, "/metrics");
    assert!(text.contains("berth_controller_leader 1"), "{text}");
    let waiting: i64 = text
        .lines()
        .find_map(|l| l.strip_prefix("berth_controller_services_waiting "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{text}"));
    // sneaky, unlabelled, elsewhere, on-dup, wrong, copycat, clash.
    assert_eq!(waiting, 7, "{text}");
    assert!(
        text.contains("berth_controller_service_addresses{pool=\"tiny\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("berth_controller_service_writes_total{result=\"ok\"}"),
        "{text}"
    );

    // 9. 50 Services; restart; deleted while down; failover.
    for i in 0..50 {
        service(
            &cp,
            "bulk",
            &format!("s{i}"),
            "LoadBalancer",
            &[80],
            json!({}),
            json!({}),
        );
    }
    let mut before: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for i in 0..50 {
        let n = format!("s{i}");
        before.insert(n.clone(), wait_ingress(&cp, "bulk", &n, 1).0);
    }
    let all_before = service_bindings(&cp);
    a.kill();
    delete_service(&cp, "bulk", "s0");
    let gone = before.remove("s0").unwrap();
    let mut a = spawn_controller(&cp, &roles.controller, "a");
    wait_log(&a, "service controller serving", Duration::from_secs(30));
    let t = Instant::now();
    while service_bindings(&cp).contains_key(&gone[0]) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "s0 deleted while down: not released"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for (n, ips) in &before {
        assert_eq!(
            &ingress(&get_service(&cp, "bulk", n)),
            ips,
            "bulk/{n} changed across a restart"
        );
    }
    let mut after = service_bindings(&cp);
    after.insert(gone[0].clone(), vec!["bulk/s0".into()]);
    assert_eq!(after, all_before, "the ledger changed across a restart");
    // Failover: b stands by, a is killed, b serves.
    let b = spawn_controller(&cp, &roles.controller, "b");
    wait_log(&b, "leader=false", Duration::from_secs(20));
    a.kill();
    wait_log(&b, "service controller serving", Duration::from_secs(20));
    for (n, ips) in &before {
        assert_eq!(
            &ingress(&get_service(&cp, "bulk", n)),
            ips,
            "bulk/{n} changed across a failover"
        );
    }
    service(
        &cp,
        "bulk",
        "late",
        "LoadBalancer",
        &[80],
        json!({}),
        json!({}),
    );
    let (late, _) = wait_ingress(&cp, "bulk", "late", 1);
    assert!(
        !before.values().any(|v| *v == late),
        "{late:?} is another's"
    );
    berth_cli_admin(&cp, &["audit"]);
    drop(a);
    drop(b);
    assert_no_forbidden(&cp);
}
