//! Warning Events on Berth's own objects, so `kubectl describe` and `kubectl get events` show
//! what an operator must fix.

use crate::crd::{AddressBinding, Block, Claim, Pool};
use crate::names::object_name;
use berth_ledger::{BadRecord, Kind};
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use kube::Client;

/// The reason of the Warning Event on an object Berth cannot read.
pub const BAD_RECORD_REASON: &str = "BerthBadRecord";

fn resource(kind: Kind) -> ApiResource {
    match kind {
        Kind::Pool => ApiResource::erase::<Pool>(&()),
        Kind::Block => ApiResource::erase::<Block>(&()),
        Kind::Claim => ApiResource::erase::<Claim>(&()),
        Kind::Binding => ApiResource::erase::<AddressBinding>(&()),
    }
}

/// Post a Warning Event (reason [`BAD_RECORD_REASON`]) on the object behind a bad ledger record,
/// naming why Berth cannot read it and that what it names counts as taken. Events of
/// cluster-scoped objects live in `default`. Best effort: a failure is logged, never returned.
pub async fn warn_bad_record(client: &Client, bad: &BadRecord, component: &str) {
    let ar = resource(bad.kind);
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    // Records are objects named after their ledger name; an object without `spec.key` is listed
    // under its own object name.
    let mut obj = None;
    for name in [object_name(&bad.name), bad.name.clone()] {
        if let Ok(Some(o)) = api.get_opt(&name).await {
            obj = Some(o);
            break;
        }
    }
    let Some(obj) = obj else {
        tracing::debug!(kind = %bad.kind, name = %bad.name, "bad record's object is gone; no Event");
        return;
    };
    let what = match bad.kind {
        Kind::Binding => "its address counts as taken",
        Kind::Block => "its block counts as another node's",
        Kind::Claim | Kind::Pool => "it is left alone",
    };
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let ev = Event {
        metadata: kube::api::ObjectMeta {
            generate_name: Some(format!(
                "{}.",
                obj.metadata.name.clone().unwrap_or_default()
            )),
            namespace: Some("default".into()),
            ..Default::default()
        },
        involved_object: ObjectReference {
            api_version: Some(ar.api_version.clone()),
            kind: Some(ar.kind.clone()),
            name: obj.metadata.name.clone(),
            uid: obj.metadata.uid.clone(),
            resource_version: obj.metadata.resource_version.clone(),
            ..Default::default()
        },
        reason: Some(BAD_RECORD_REASON.into()),
        message: Some(format!(
            "Berth cannot read {} {:?}: {}. It is skipped and {what}; fix the object or delete it",
            bad.kind, bad.name, bad.reason
        )),
        type_: Some("Warning".into()),
        first_timestamp: Some(now.clone()),
        last_timestamp: Some(now),
        count: Some(1),
        source: Some(EventSource {
            component: Some(component.into()),
            host: None,
        }),
        ..Default::default()
    };
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    if let Err(e) = events.create(&PostParams::default(), &ev).await {
        tracing::warn!(error = %e, kind = %bad.kind, name = %bad.name, "could not record an Event on a bad ledger record");
    }
}

/// Post an Event on `regarding` in its namespace (cluster-scoped objects: `default`).
///
/// Why: the Service controller tells users on their Service why it waits (a Warning naming the
/// annotation or address, the value and what to do) and what it did (Normal); `kubectl describe
/// service` shows both. Best effort: the caller logs a failure.
pub async fn post(
    client: &Client,
    regarding: ObjectReference,
    warning: bool,
    reason: &str,
    message: &str,
    component: &str,
) -> Result<(), kube::Error> {
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let namespace = regarding
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let ev = Event {
        metadata: kube::api::ObjectMeta {
            generate_name: Some(format!(
                "{}.",
                regarding.name.clone().unwrap_or_else(|| "berth".into())
            )),
            namespace: Some(namespace.clone()),
            ..Default::default()
        },
        involved_object: regarding,
        reason: Some(reason.into()),
        // Kept short enough for any API server and terminal.
        message: Some(message.chars().take(1000).collect()),
        type_: Some(if warning { "Warning" } else { "Normal" }.into()),
        first_timestamp: Some(now.clone()),
        last_timestamp: Some(now),
        count: Some(1),
        source: Some(EventSource {
            component: Some(component.into()),
            host: None,
        }),
        ..Default::default()
    };
    let events: Api<Event> = Api::namespaced(client.clone(), &namespace);
    events.create(&PostParams::default(), &ev).await.map(|_| ())
}
