//! The wire format and the stored records are a compatibility promise: add fields, never rename
//! or remove them, and a store written by an earlier Cube opens.
//!
//! `fixtures/v1/` holds bodies as the first released format sent them and `fixtures/v1/stored/`
//! task and node records as it stored them (captured from real `cube` processes and a real
//! `cube dev` store; never edit them). Each test decodes one, encodes it again and checks
//!
//! 1. that everything the old body said is still said, with the same value (the new encoding
//!    may only add fields), and
//! 2. that the encoding matches `snapshots/<name>.json`, so any change of shape shows up in a
//!    review. After an intended, additive change: `UPDATE_EXPECT=1 cargo test -p cube-api`.
//! 3. that the old body and the new encoding both validate against the type's JSON Schema, the
//!    one the OpenAPI document publishes (`cube_api::openapi`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use cube_api::ErrorBody;
use cube_api::events::Event;
use cube_api::types::{
    HealthView, HeartbeatRequest, HeartbeatResponse, NodeInfo, NodeStats, RegisterRequest,
    ServiceView, TaskView,
};
use cube_core::deployment::Deployment;
use cube_core::service::Service;
use cube_core::{Node, Task};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Whether `new` says everything `old` says: objects keep every key (recursively), arrays keep
/// their length, other values are equal. Returns the first path where they differ.
fn missing_from(old: &serde_json::Value, new: &serde_json::Value, path: &str) -> Option<String> {
    use serde_json::Value;
    match (old, new) {
        (Value::Object(o), Value::Object(n)) => o.iter().find_map(|(k, v)| match n.get(k) {
            Some(nv) => missing_from(v, nv, &format!("{path}.{k}")),
            None => Some(format!("{path}.{k} is gone")),
        }),
        (Value::Array(o), Value::Array(n)) if o.len() == n.len() => o
            .iter()
            .zip(n)
            .enumerate()
            .find_map(|(i, (a, b))| missing_from(a, b, &format!("{path}[{i}]"))),
        (o, n) if o == n => None,
        (o, n) => Some(format!("{path}: was {o}, now {n}")),
    }
}

/// Checks `body` against `T`'s JSON Schema, as the OpenAPI document states it.
fn validate<T: schemars::JsonSchema>(body: &str, what: &str) {
    let mut settings = schemars::generate::SchemaSettings::draft2020_12();
    settings.meta_schema = None;
    let schema = settings.into_generator().into_root_schema_for::<T>();
    let schema = serde_json::to_value(&schema).unwrap();
    let validator = jsonschema::draft202012::new(&schema).unwrap();
    let body: serde_json::Value = serde_json::from_str(body).unwrap();
    let problems: Vec<String> =
        validator.iter_errors(&body).map(|e| format!("{}: {e}", e.instance_path())).collect();
    assert!(problems.is_empty(), "{what} does not match the schema: {problems:#?}");
}

/// Decodes a v1 body as `T`, checks the re-encoding keeps all of it, and returns the encoding.
fn reencode<T>(v1: &str) -> String
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug + schemars::JsonSchema,
{
    validate::<T>(v1, "the v1 body");
    let value: T = serde_json::from_str(v1).expect("a v1 body decodes");
    let encoded = serde_json::to_string_pretty(&value).unwrap();
    let old: serde_json::Value = serde_json::from_str(v1).unwrap();
    let new: serde_json::Value = serde_json::from_str(&encoded).unwrap();
    if let Some(diff) = missing_from(&old, &new, "$") {
        panic!("the encoding no longer says what v1 said: {diff}\n{encoded}");
    }
    let again: T = serde_json::from_str(&encoded).unwrap();
    assert_eq!(again, value, "the encoding decodes to the same value");
    validate::<T>(&encoded, "the encoding");
    encoded + "\n"
}

macro_rules! wire {
    ($test:ident, $ty:ty, $name:literal) => {
        #[test]
        fn $test() {
            let encoded = reencode::<$ty>(include_str!(concat!("fixtures/v1/", $name, ".json")));
            expect_test::expect_file![concat!("snapshots/", $name, ".json")].assert_eq(&encoded);
        }
    };
}

wire!(a_worker_task_view, TaskView, "task_view_worker");
wire!(a_manager_task_view_with_placement, TaskView, "task_view_manager");
wire!(a_submit_answer, TaskView, "task_view_submitted");
wire!(an_empty_heartbeat, HeartbeatRequest, "heartbeat_request_empty");
wire!(a_periodic_heartbeat, HeartbeatRequest, "heartbeat_request_periodic");
wire!(a_heartbeat_pushing_changes, HeartbeatRequest, "heartbeat_request_changes");
wire!(a_heartbeat_answer, HeartbeatResponse, "heartbeat_response");
wire!(a_first_registration, RegisterRequest, "register_request_new");
wire!(a_registration_with_tasks, RegisterRequest, "register_request_with_tasks");
wire!(node_stats, NodeStats, "node_stats");
wire!(worker_health, HealthView, "health_view_worker");
wire!(manager_health, HealthView, "health_view_manager");
wire!(a_node_list, Vec<NodeInfo>, "node_infos");
wire!(an_invalid_argument_error, ErrorBody, "error_invalid_argument");
wire!(an_invalid_spec_error, ErrorBody, "error_invalid_spec");
wire!(a_service_view, ServiceView, "service_view");
wire!(a_deployment, Deployment, "deployment");
wire!(a_replaced_instance, TaskView, "task_view_instance");
wire!(a_node_registered_event, Event, "event_node_registered");
wire!(a_task_running_event, Event, "event_task_running");
wire!(a_service_registered_event, Event, "event_service_registered");
wire!(a_deployment_successful_event, Event, "event_deployment_successful");
wire!(a_service_deleted_event, Event, "event_service_deleted");

wire!(a_stored_manager_task_with_health_and_constraints, Task, "stored/task_manager_keeper");
wire!(a_stored_manager_task_that_restarted_and_failed, Task, "stored/task_manager_crash");
wire!(a_stored_worker_task_that_restarted_and_failed, Task, "stored/task_worker_crash");
wire!(a_stored_node, Node, "stored/node");
wire!(a_stored_service, Service, "stored/service");
wire!(a_stored_deployment, Deployment, "stored/deployment");

#[test]
fn a_v1_submission_body_still_parses() {
    let body = br#"{"id":"01a23366-e31c-75bd-b5bb-000000000001","generation":2,"name":"cap",
        "driver":"process","command":"sh","args":["-c","echo hi; exit 1"],
        "restart":{"mode":"on-failure","max_attempts":1,"initial_backoff":"100ms"}}"#;
    let s = cube_api::types::TaskSubmission::parse(body).unwrap();
    assert_eq!(s.id.unwrap().to_string(), "01a23366-e31c-75bd-b5bb-000000000001");
    assert_eq!(s.generation, Some(2));
    assert_eq!(s.spec.restart.max_attempts, 1);
}

#[test]
fn query_strings_keep_their_names() {
    // Sent by clients with reqwest's `query` and read by axum's `Query`, both serde_urlencoded.
    use cube_api::types::{LogsQuery, TaskFilter};
    let filter = TaskFilter {
        state: Some(cube_core::TaskState::Running),
        node: Some("01a23366-dcdb-727c-8136-845a4bf16d52".parse().unwrap()),
    };
    let text = serde_urlencoded::to_string(&filter).unwrap();
    assert_eq!(text, "state=running&node=01a23366-dcdb-727c-8136-845a4bf16d52");
    assert_eq!(serde_urlencoded::from_str::<TaskFilter>(&text).unwrap(), filter);
    assert_eq!(serde_urlencoded::to_string(TaskFilter::default()).unwrap(), "");
    let logs = LogsQuery { follow: true, tail: Some(20) };
    let text = serde_urlencoded::to_string(logs).unwrap();
    assert_eq!(text, "follow=true&tail=20");
    assert_eq!(serde_urlencoded::from_str::<LogsQuery>(&text).unwrap(), logs);
    assert_eq!(serde_urlencoded::from_str::<LogsQuery>("").unwrap(), LogsQuery::default());
}

#[test]
fn the_subset_check_catches_removed_and_changed_fields() {
    let old = serde_json::json!({"a": 1, "b": {"c": [1, 2]}});
    assert_eq!(
        missing_from(&old, &serde_json::json!({"a": 1, "b": {"c": [1, 2]}, "d": 0}), "$"),
        None
    );
    assert!(missing_from(&old, &serde_json::json!({"b": {"c": [1, 2]}}), "$").is_some());
    assert!(missing_from(&old, &serde_json::json!({"a": 2, "b": {"c": [1, 2]}}), "$").is_some());
    assert!(missing_from(&old, &serde_json::json!({"a": 1, "b": {"c": [1]}}), "$").is_some());
}
