//! Users, vhosts, permissions, topic permissions, policies and operator
//! policies over HTTP (rabbitmq_management's `rabbit_mgmt_wm_user`,
//! `_vhost`, `_permission`, `_topic_permission`, `_policy`,
//! `_operator_policy`). Every change is persisted before it is answered.

use super::{ApiError, Authed};
use crate::broker::Broker;
use crate::broker::access::{Pattern, Permission};
use crate::broker::policy::{Policy, erl};
use crate::broker::users::{User, hash_password};
use crate::broker::vhost::{VHost, VHostMeta};
use crate::store::definitions::{PermissionDef, PolicyDef, TopicPermissionDef, UserDef, VHostDef};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::sync::Arc;

type ApiResult = Result<Response, ApiError>;

fn store_err(e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "cannot persist a definition");
    ApiError::internal(format!("cannot persist definition: {e}"))
}

fn body_json(body: &[u8]) -> Result<Value, ApiError> {
    if body.is_empty() {
        return Ok(json!({}));
    }
    let v: Value = serde_json::from_slice(body).map_err(ApiError::bad_json)?;
    if !v.is_object() {
        return Err(ApiError::bad_request("the request body must be a JSON object"));
    }
    Ok(v)
}

fn created_or_updated(existed: bool) -> ApiResult {
    Ok(if existed { StatusCode::NO_CONTENT } else { StatusCode::CREATED }.into_response())
}

fn no_content() -> ApiResult {
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ---------------------------------------------------------------- users

pub fn user_json(u: &User) -> Value {
    json!({"name": u.name, "password_hash": u.password_hash,
           "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": u.tags, "limits": {}})
}

pub async fn users(State(b): State<Arc<Broker>>, a: Authed) -> ApiResult {
    a.require_admin()?;
    let mut out: Vec<Value> = b.users.iter().map(|u| user_json(&u)).collect();
    out.sort_by(|x, y| x["name"].as_str().cmp(&y["name"].as_str()));
    Ok(Json(out).into_response())
}

pub async fn users_without_permissions(State(b): State<Arc<Broker>>, a: Authed) -> ApiResult {
    a.require_admin()?;
    let with: std::collections::HashSet<String> = b.access.all().into_iter().map(|p| p.user).collect();
    let mut out: Vec<Value> =
        b.users.iter().filter(|u| !with.contains(&u.name)).map(|u| user_json(&u)).collect();
    out.sort_by(|x, y| x["name"].as_str().cmp(&y["name"].as_str()));
    Ok(Json(out).into_response())
}

pub async fn user_detail(State(b): State<Arc<Broker>>, a: Authed, Path(name): Path<String>) -> ApiResult {
    a.require_admin()?;
    let u = b.users.get(&name).map(|u| u.clone()).ok_or_else(ApiError::not_found)?;
    Ok(Json(user_json(&u)).into_response())
}

/// `tags` as a comma-separated string or a JSON array.
fn parse_tags(v: Option<&Value>) -> Result<Vec<String>, ApiError> {
    Ok(match v {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => {
            s.split(',').map(str::trim).filter(|t| !t.is_empty()).map(str::to_string).collect()
        }
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).map(str::to_string).collect(),
        Some(_) => return Err(ApiError::bad_request("tags must be a string or an array of strings")),
    })
}

pub async fn user_put(
    State(b): State<Arc<Broker>>,
    a: Authed,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult {
    a.require_admin()?;
    let spec = body_json(&body)?;
    let existing = b.users.get(&name).map(|u| u.clone());
    let tags = parse_tags(spec.get("tags"))?;
    let password_hash = if let Some(p) = spec.get("password") {
        let p = p.as_str().ok_or_else(|| ApiError::bad_request("password must be a string"))?;
        hash_password(p, rand::random())
    } else if let Some(h) = spec.get("password_hash") {
        let h = h.as_str().ok_or_else(|| ApiError::bad_request("password_hash must be a string"))?;
        if let Some(alg) = spec.get("hashing_algorithm").and_then(Value::as_str)
            && alg != "rabbit_password_hashing_sha256"
        {
            return Err(ApiError::bad_request(format!(
                "hashing algorithm {alg} is not supported (Warren: rabbit_password_hashing_sha256)"
            )));
        }
        h.to_string()
    } else if let Some(u) = &existing {
        u.password_hash.clone()
    } else {
        // RabbitMQ creates a user with no password: it cannot log in with one.
        String::new()
    };
    let def = UserDef { name: name.clone(), password_hash: password_hash.clone(), tags: tags.clone() };
    b.store.defs.put_user(&def).map_err(store_err)?;
    b.users.insert(name.clone(), User { name, password_hash, tags });
    created_or_updated(existing.is_some())
}

fn delete_one_user(b: &Broker, name: &str) -> Result<bool, ApiError> {
    if !b.users.contains_key(name) {
        return Ok(false);
    }
    b.store.defs.delete_user(name).map_err(store_err)?;
    b.users.remove(name);
    b.access.forget(Some(name), None);
    Ok(true)
}

pub async fn user_delete(State(b): State<Arc<Broker>>, a: Authed, Path(name): Path<String>) -> ApiResult {
    a.require_admin()?;
    if !delete_one_user(&b, &name)? {
        return Err(ApiError::not_found());
    }
    no_content()
}

pub async fn users_bulk_delete(
    State(b): State<Arc<Broker>>,
    a: Authed,
    body: axum::body::Bytes,
) -> ApiResult {
    a.require_admin()?;
    let spec = body_json(&body)?;
    let names = spec
        .get("users")
        .and_then(Value::as_array)
        .ok_or_else(|| ApiError::bad_request("users must be an array of user names"))?;
    for n in names.iter().filter_map(Value::as_str) {
        delete_one_user(&b, n)?;
    }
    no_content()
}

// ---------------------------------------------------------------- vhosts

pub async fn vhost_put(
    State(b): State<Arc<Broker>>,
    a: Authed,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult {
    a.require_admin()?;
    let spec = body_json(&body)?;
    let description = spec.get("description").and_then(Value::as_str).unwrap_or_default().to_string();
    let tags = parse_tags(spec.get("tags"))?;
    let def = VHostDef { name: name.clone(), description: description.clone(), tags: tags.clone() };
    b.store.defs.put_vhost(&def).map_err(store_err)?;
    let existed = b.vhosts.contains_key(&name);
    let v = b.vhosts.entry(name.clone()).or_insert_with(|| b.new_vhost(&name)).clone();
    *v.meta.write() = VHostMeta { description, tags };
    if !existed {
        // RabbitMQ grants the creating user full access to a new vhost.
        let p = PermissionDef {
            user: a.0.name.clone(),
            vhost: name,
            configure: ".*".into(),
            write: ".*".into(),
            read: ".*".into(),
        };
        b.store.defs.put_permission(&p).map_err(store_err)?;
        b.access.set(Permission::new(p).map_err(ApiError::bad_request)?);
    }
    created_or_updated(existed)
}

pub async fn vhost_delete(State(b): State<Arc<Broker>>, a: Authed, Path(name): Path<String>) -> ApiResult {
    a.require_admin()?;
    let v = b.vhost(&name).ok_or_else(ApiError::not_found)?;
    b.delete_vhost(&v).map_err(store_err)?;
    no_content()
}

// ---------------------------------------------------------------- permissions

fn permission_json(p: &PermissionDef) -> Value {
    json!({"user": p.user, "vhost": p.vhost, "configure": p.configure, "write": p.write, "read": p.read})
}

fn topic_json(p: &TopicPermissionDef) -> Value {
    json!({"user": p.user, "vhost": p.vhost, "exchange": p.exchange, "write": p.write, "read": p.read})
}

pub async fn permissions(State(b): State<Arc<Broker>>, a: Authed) -> ApiResult {
    a.require_admin()?;
    Ok(Json(b.access.all().iter().map(permission_json).collect::<Vec<_>>()).into_response())
}

pub async fn vhost_permissions(State(b): State<Arc<Broker>>, a: Authed, Path(vh): Path<String>) -> ApiResult {
    a.require_admin()?;
    b.vhost(&vh).ok_or_else(ApiError::not_found)?;
    let out: Vec<Value> = b.access.all().iter().filter(|p| p.vhost == vh).map(permission_json).collect();
    Ok(Json(out).into_response())
}

pub async fn user_permissions(State(b): State<Arc<Broker>>, a: Authed, Path(u): Path<String>) -> ApiResult {
    a.require_admin()?;
    if !b.users.contains_key(&u) {
        return Err(ApiError::not_found());
    }
    let out: Vec<Value> = b.access.all().iter().filter(|p| p.user == u).map(permission_json).collect();
    Ok(Json(out).into_response())
}

pub async fn permission_detail(
    State(b): State<Arc<Broker>>,
    a: Authed,
    Path((vh, u)): Path<(String, String)>,
) -> ApiResult {
    a.require_admin()?;
    let p = b.access.get(&u, &vh).ok_or_else(ApiError::not_found)?;
    Ok(Json(permission_json(&p.def)).into_response())
}

/// The user and vhost of a permission must exist (RabbitMQ answers 400).
fn check_user_and_vhost(b: &Broker, u: &str, vh: &str) -> Result<(), ApiError> {
    if b.vhost(vh).is_none() || !b.users.contains_key(u) {
        return Err(ApiError::bad_request("vhost_or_user_not_found"));
    }
    Ok(())
}

/// RabbitMQ's `with_decode` check: every listed key present, else
/// `[{key_missing,k},…]`.
fn require_keys(spec: &Value, keys: &[&str]) -> Result<(), ApiError> {
    let missing: Vec<String> =
        keys.iter().filter(|k| spec.get(**k).is_none()).map(|k| format!("{{key_missing,{k}}}")).collect();
    if missing.is_empty() { Ok(()) } else { Err(ApiError::bad_request(format!("[{}]", missing.join(",")))) }
}

fn regex_field(spec: &Value, key: &str) -> Result<String, ApiError> {
    match spec.get(key) {
        Some(Value::String(s)) => {
            Pattern::new(s).map_err(ApiError::bad_request)?;
            Ok(s.clone())
        }
        _ => Err(ApiError::bad_request(format!("{key} must be a string (a regex)"))),
    }
}

pub async fn permission_put(
    State(b): State<Arc<Broker>>,
    a: Authed,
    Path((vh, u)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> ApiResult {
    a.require_admin()?;
    let spec = body_json(&body)?;
    check_user_and_vhost(&b, &u, &vh)?;
    require_keys(&spec, &["configure", "write", "read"])?;
    let def = PermissionDef {
        user: u.clone(),
        vhost: vh.clone(),
        configure: regex_field(&spec, "configure")?,
        write: regex_field(&spec, "write")?,
        read: regex_field(&spec, "read")?,
    };
    let p = Permission::new(def.clone()).map_err(ApiError::bad_request)?;
    let existed = b.access.get(&u, &vh).is_some();
    b.store.defs.put_permission(&def).map_err(store_err)?;
    b.access.set(p);
    created_or_updated(existed)
}

pub async fn permission_delete(
    State(b): State<Arc<Broker>>,
    a: Authed,
    Path((vh, u)): Path<(String, String)>,
) -> ApiResult {
    a.require_admin()?;
    if b.access.get(&u, &vh).is_none() {
        return Err(ApiError::not_found());
    }
    b.store.defs.delete_permission(&u, &vh).map_err(store_err)?;
    b.access.clear(&u, &vh);
    no_content()
}

pub async fn topic_permissions(State(b): State<Arc<Broker>>, a: Authed) -> ApiResult {
    a.require_admin()?;
    Ok(Json(b.access.all_topic().iter().map(topic_json).collect::<Vec<_>>()).into_response())
}

pub async fn vhost_topic_permissions(
    State(b): State<Arc<Broker>>,
    a: Authed,
    Path(vh): Path<String>,
) -> ApiResult {
    a.require_admin()?;
    b.vhost(&vh).ok_or_else(ApiError::not_found)?;
    let out: Vec<Value> = b.access.all_topic().iter().filter(|p| p.vhost == vh).map(topic_json).collect();
    Ok(Json(out).into_response())
}

pub async fn user_topic_permissions(
    State(b): State<Arc<Broker>>,
    a: Authed,
    Path(u): Path<String>,
) -> ApiResult {
    a.require_admin()?;
    if !b.users.contains_key(&u) {
        return Err(ApiError::not_found());
    }
    let out: Vec<Value> = b.access.all_topic().iter().filter(|p| p.user == u).map(topic_json).collect();
    Ok(Json(out).into_response())
}

pub async fn topic_permission_detail(
    State(b): State<Arc<Broker>>,
    a: Authed,
    Path((vh, u)): Path<(String, String)>,
) -> ApiResult {
    a.require_admin()?;
    let out: Vec<Value> =
        b.access.all_topic().iter().filter(|p| p.vhost == vh && p.user == u).map(topic_json).collect();
    if out.is_empty() {
        return Err(ApiError::not_found());
    }
    Ok(Json(out).into_response())
}

pub async fn topic_permission_put(
    State(b): State<Arc<Broker>>,
    a: Authed,
    Path((vh, u)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> ApiResult {
    a.require_admin()?;
    let spec = body_json(&body)?;
    check_user_and_vhost(&b, &u, &vh)?;
    require_keys(&spec, &["exchange", "write", "read"])?;
    let exchange = spec
        .get("exchange")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad_request("exchange must be a string"))?
        .to_string();
    let def = TopicPermissionDef {
        user: u.clone(),
        vhost: vh.clone(),
        exchange: exchange.clone(),
        write: regex_field(&spec, "write")?,
        read: regex_field(&spec, "read")?,
    };
    let existed = b.access.all_topic().iter().any(|p| p.user == u && p.vhost == vh && p.exchange == exchange);
    b.store.defs.put_topic_permission(&def).map_err(store_err)?;
    b.access.set_topic(def);
    created_or_updated(existed)
}

pub async fn topic_permission_delete(
    State(b): State<Arc<Broker>>,
    a: Authed,
    Path((vh, u)): Path<(String, String)>,
) -> ApiResult {
    a.require_admin()?;
    let doomed: Vec<TopicPermissionDef> =
        b.access.all_topic().into_iter().filter(|p| p.vhost == vh && p.user == u).collect();
    if doomed.is_empty() {
        return Err(ApiError::not_found());
    }
    for p in &doomed {
        b.store.defs.delete_topic_permission(&p.user, &p.vhost, &p.exchange).map_err(store_err)?;
    }
    b.access.clear_topic(&u, &vh, None);
    no_content()
}

// ---------------------------------------------------------------- policies

fn policy_json(p: &PolicyDef) -> Value {
    json!({"vhost": p.vhost, "name": p.name, "pattern": p.pattern, "apply-to": p.apply_to,
           "definition": p.definition, "priority": p.priority})
}

fn policies_of(b: &Broker, only: Option<&str>, operator: bool) -> Vec<Value> {
    let mut out: Vec<PolicyDef> = Vec::new();
    for v in b.vhosts.iter() {
        if only.is_none_or(|o| o == v.name) {
            out.extend(v.policy_defs(operator));
        }
    }
    // RabbitMQ sorts policy lists by priority.
    out.sort_by(|x, y| (x.priority, &x.vhost, &x.name).cmp(&(y.priority, &y.vhost, &y.name)));
    out.iter().map(policy_json).collect()
}

pub async fn policies(State(b): State<Arc<Broker>>, a: Authed) -> ApiResult {
    let mut all = policies_of(&b, None, false);
    all.retain(|p| p["vhost"].as_str().is_some_and(|v| a.can_access(&b, v)));
    Ok(Json(all).into_response())
}

pub async fn policies_in(State(b): State<Arc<Broker>>, a: Authed, Path(vh): Path<String>) -> ApiResult {
    a.vhost(&b, &vh)?;
    Ok(Json(policies_of(&b, Some(&vh), false)).into_response())
}

pub async fn operator_policies(State(b): State<Arc<Broker>>, a: Authed) -> ApiResult {
    a.require_admin()?;
    Ok(Json(policies_of(&b, None, true)).into_response())
}

pub async fn operator_policies_in(
    State(b): State<Arc<Broker>>,
    a: Authed,
    Path(vh): Path<String>,
) -> ApiResult {
    a.require_admin()?;
    b.vhost(&vh).ok_or_else(ApiError::not_found)?;
    Ok(Json(policies_of(&b, Some(&vh), true)).into_response())
}

fn find_policy(v: &VHost, name: &str, operator: bool) -> Option<PolicyDef> {
    v.policy_defs(operator).into_iter().find(|p| p.name == name)
}

async fn policy_get(b: &Broker, vh: &str, name: &str, operator: bool) -> ApiResult {
    let v = b.vhost(vh).ok_or_else(ApiError::not_found)?;
    let p = find_policy(&v, name, operator).ok_or_else(ApiError::not_found)?;
    Ok(Json(policy_json(&p)).into_response())
}

/// `rabbit_mgmt_format:escape_html_tags`, which the policy endpoint (but
/// not the operator-policy one) applies to its error texts.
fn escape_html(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Builds and validates a policy from a PUT body (RabbitMQ's 400 texts).
pub fn policy_from_json(vh: &str, name: &str, spec: &Value, operator: bool) -> Result<Policy, ApiError> {
    require_keys(spec, &["pattern", "definition"])?;
    let escape = |e: String| if operator { e } else { escape_html(&e) };
    let invalid = |msg: String| ApiError::bad_request(escape(format!("Validation failed\n\n{msg}\n")));
    let pattern = spec.get("pattern").and_then(Value::as_str).ok_or_else(|| {
        invalid(format!("pattern should be a string, actually was {}", erl(&spec["pattern"])))
    })?;
    let definition = match spec.get("definition") {
        Some(Value::Object(m)) => m.clone(),
        other => {
            return Err(invalid(format!(
                "definition should be a JSON object, actually was {}",
                erl(other.unwrap_or(&Value::Null))
            )));
        }
    };
    let priority = match spec.get("priority") {
        None | Some(Value::Null) => 0,
        Some(Value::Number(n)) => n.as_i64().unwrap_or_else(|| n.as_f64().unwrap_or(0.0) as i64),
        Some(v) => return Err(invalid(format!("priority should be a number, actually was {}", erl(v)))),
    };
    let apply_to = spec.get("apply-to").and_then(Value::as_str).unwrap_or("all").to_string();
    Policy::new(
        PolicyDef {
            vhost: vh.to_string(),
            name: name.to_string(),
            pattern: pattern.to_string(),
            apply_to,
            definition,
            priority,
        },
        operator,
    )
    .map_err(|e| ApiError::bad_request(escape(e)))
}

async fn policy_put_any(b: &Broker, vh: &str, name: &str, body: &[u8], operator: bool) -> ApiResult {
    let Some(v) = b.vhost(vh) else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", "vhost_not_found"));
    };
    let spec = body_json(body)?;
    let p = policy_from_json(vh, name, &spec, operator)?;
    let existed = find_policy(&v, name, operator).is_some();
    v.put_policy(p, operator).map_err(store_err)?;
    created_or_updated(existed)
}

async fn policy_delete_any(b: &Broker, vh: &str, name: &str, operator: bool) -> ApiResult {
    let v = b.vhost(vh).ok_or_else(ApiError::not_found)?;
    if !v.delete_policy(name, operator).map_err(store_err)? {
        return Err(ApiError::not_found());
    }
    no_content()
}

pub async fn policy_detail(
    State(b): State<Arc<Broker>>,
    a: Authed,
    Path((vh, name)): Path<(String, String)>,
) -> ApiResult {
    a.require_policymaker()?;
    a.vhost(&b, &vh)?;
    policy_get(&b, &vh, &name, false).await
}

pub async fn policy_put(
    State(b): State<Arc<Broker>>,
    a: Authed,
    Path((vh, name)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> ApiResult {
    a.require_policymaker()?;
    if !a.can_access(&b, &vh) && b.vhost(&vh).is_some() {
        return Err(ApiError::not_found());
    }
    policy_put_any(&b, &vh, &name, &body, false).await
}

pub async fn policy_delete(
    State(b): State<Arc<Broker>>,
    a: Authed,
    Path((vh, name)): Path<(String, String)>,
) -> ApiResult {
    a.require_policymaker()?;
    a.vhost(&b, &vh)?;
    policy_delete_any(&b, &vh, &name, false).await
}

pub async fn operator_policy_detail(
    State(b): State<Arc<Broker>>,
    a: Authed,
    Path((vh, name)): Path<(String, String)>,
) -> ApiResult {
    a.require_admin()?;
    policy_get(&b, &vh, &name, true).await
}

pub async fn operator_policy_put(
    State(b): State<Arc<Broker>>,
    a: Authed,
    Path((vh, name)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> ApiResult {
    a.require_admin()?;
    policy_put_any(&b, &vh, &name, &body, true).await
}

pub async fn operator_policy_delete(
    State(b): State<Arc<Broker>>,
    a: Authed,
    Path((vh, name)): Path<(String, String)>,
) -> ApiResult {
    a.require_admin()?;
    policy_delete_any(&b, &vh, &name, true).await
}
