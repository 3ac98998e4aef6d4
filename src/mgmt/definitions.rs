//! Definitions export and import (`rabbit_mgmt_wm_definitions`): the whole
//! broker or one vhost, in RabbitMQ's JSON, so a RabbitMQ 3.x export loads
//! into Warren (passwords included: the hashes are RabbitMQ's) and back.

use super::access_api::policy_from_json;
use super::messages_api::bindings_of;
use super::{ApiError, Authed, values};
use crate::broker::Broker;
use crate::broker::access::Permission;
use crate::broker::users::{User, hash_password};
use crate::broker::vhost::{QueueDeclare, VHost, VHostMeta};
use crate::store::definitions::{PermissionDef, TopicPermissionDef, UserDef, VHostDef};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use std::sync::Arc;

type ApiResult = Result<Response, ApiError>;

fn policies_json(v: &VHost, per_vhost: bool) -> Vec<Value> {
    v.policy_defs(false)
        .into_iter()
        .map(|p| {
            let mut j = json!({"vhost": p.vhost, "name": p.name, "pattern": p.pattern, "apply-to": p.apply_to,
                               "definition": p.definition, "priority": p.priority});
            if per_vhost {
                j.as_object_mut().map(|m| m.remove("vhost"));
            }
            j
        })
        .collect()
}

/// One vhost's exchanges, queues, bindings and policies as exported.
fn vhost_objects(v: &VHost, per_vhost: bool) -> (Vec<Value>, Vec<Value>, Vec<Value>, Vec<Value>) {
    let strip = |mut j: Value| {
        if per_vhost {
            j.as_object_mut().map(|m| m.remove("vhost"));
        }
        j
    };
    let mut exchanges: Vec<Value> = v
        .exchanges
        .iter()
        .filter(|x| !x.name.is_empty() && !x.name.starts_with("amq."))
        .map(|x| {
            strip(json!({"name": x.name, "vhost": v.name, "type": x.type_name(), "durable": x.durable,
                         "auto_delete": x.auto_delete, "internal": x.internal,
                         "arguments": values::table(&x.arguments)}))
        })
        .collect();
    exchanges.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    let mut queues: Vec<Value> = v
        .queues
        .iter()
        .filter(|q| q.exclusive_owner.is_none() && q.delay_for.is_none())
        .map(|q| {
            strip(json!({"name": q.name, "vhost": v.name, "durable": q.durable, "auto_delete": q.auto_delete,
                         "arguments": values::table(&q.arguments)}))
        })
        .collect();
    queues.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    let exclusive: Vec<String> =
        v.queues.iter().filter(|q| q.exclusive_owner.is_some()).map(|q| q.name.clone()).collect();
    let bindings: Vec<Value> = bindings_of(v)
        .into_iter()
        .filter(|b| b["source"] != "")
        .filter(|b| {
            !(b["destination_type"] == "queue" && exclusive.iter().any(|e| b["destination"] == e.as_str()))
        })
        .map(|mut b| {
            b.as_object_mut().map(|m| m.remove("properties_key"));
            strip(b)
        })
        .collect();
    (exchanges, queues, bindings, policies_json(v, per_vhost))
}

fn header(b: &Broker) -> Map<String, Value> {
    let id = &b.config.identity;
    let mut m = Map::new();
    m.insert("rabbit_version".into(), json!(id.version));
    m.insert("rabbitmq_version".into(), json!(id.version));
    m.insert("product_name".into(), json!(id.product));
    m.insert("product_version".into(), json!(id.version));
    m
}

pub async fn export_all(State(b): State<Arc<Broker>>, a: Authed) -> ApiResult {
    a.require_admin()?;
    let mut m = header(&b);
    let mut users: Vec<Value> = b
        .users
        .iter()
        .map(|u| {
            json!({"name": u.name, "password_hash": u.password_hash,
                   "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": u.tags, "limits": {}})
        })
        .collect();
    users.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    let mut names: Vec<String> = b.vhosts.iter().map(|v| v.name.clone()).collect();
    names.sort();
    let vhosts: Vec<Value> = names
        .iter()
        .filter_map(|n| b.vhost(n))
        .map(|v| {
            let meta = v.meta.read().clone();
            json!({"name": v.name, "description": meta.description, "tags": meta.tags,
                   "metadata": {"description": meta.description, "tags": meta.tags}})
        })
        .collect();
    let (mut xs, mut qs, mut bs, mut ps) = (vec![], vec![], vec![], vec![]);
    for n in &names {
        if let Some(v) = b.vhost(n) {
            let (x, q, bi, p) = vhost_objects(&v, false);
            xs.extend(x);
            qs.extend(q);
            bs.extend(bi);
            ps.extend(p);
        }
    }
    let perms: Vec<Value> = b
        .access
        .all()
        .into_iter()
        .map(|p| json!({"user": p.user, "vhost": p.vhost, "configure": p.configure, "write": p.write, "read": p.read}))
        .collect();
    let topic: Vec<Value> = b
        .access
        .all_topic()
        .into_iter()
        .map(|p| json!({"user": p.user, "vhost": p.vhost, "exchange": p.exchange, "write": p.write, "read": p.read}))
        .collect();
    m.insert("users".into(), json!(users));
    m.insert("vhosts".into(), json!(vhosts));
    m.insert("permissions".into(), json!(perms));
    m.insert("topic_permissions".into(), json!(topic));
    m.insert("parameters".into(), json!([]));
    m.insert(
        "global_parameters".into(),
        json!([{"name": "cluster_name", "value": b.config.identity.cluster_name}]),
    );
    m.insert("policies".into(), json!(ps));
    m.insert("queues".into(), json!(qs));
    m.insert("exchanges".into(), json!(xs));
    m.insert("bindings".into(), json!(bs));
    Ok(Json(Value::Object(m)).into_response())
}

pub async fn export_vhost(State(b): State<Arc<Broker>>, a: Authed, Path(vh): Path<String>) -> ApiResult {
    a.require_admin()?;
    let v = b.vhost(&vh).ok_or_else(ApiError::not_found)?;
    let mut m = header(&b);
    let (xs, qs, bs, ps) = vhost_objects(&v, true);
    m.insert("parameters".into(), json!([]));
    m.insert("policies".into(), json!(ps));
    m.insert("queues".into(), json!(qs));
    m.insert("exchanges".into(), json!(xs));
    m.insert("bindings".into(), json!(bs));
    Ok(Json(Value::Object(m)).into_response())
}

fn list<'a>(doc: &'a Value, key: &str) -> impl Iterator<Item = &'a Value> {
    doc.get(key).and_then(Value::as_array).into_iter().flatten()
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or_default()
}

fn flag(v: &Value, key: &str, default: bool) -> bool {
    v.get(key).and_then(Value::as_bool).unwrap_or(default)
}

fn tags(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::String(s)) => {
            s.split(',').map(str::trim).filter(|t| !t.is_empty()).map(String::from).collect()
        }
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).map(String::from).collect(),
        _ => Vec::new(),
    }
}

/// Loads a definitions document; `only` restricts it to one vhost (the
/// per-vhost import, whose items carry no `vhost`). Used by the API and at
/// boot (`load_definitions`).
pub fn import(b: &Broker, doc: &Value, only: Option<&str>, by: &str) -> Result<(), String> {
    if !doc.is_object() {
        return Err("definitions must be a JSON object".into());
    }
    let vh_of = |item: &Value| -> String {
        only.map(str::to_string).unwrap_or_else(|| text(item, "vhost").to_string())
    };
    if only.is_none() {
        for v in list(doc, "vhosts") {
            let name = text(v, "name");
            if name.is_empty() {
                continue;
            }
            let meta = v.get("metadata");
            let description = v
                .get("description")
                .or_else(|| meta.and_then(|m| m.get("description")))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let t = tags(v.get("tags").or_else(|| meta.and_then(|m| m.get("tags"))));
            b.store
                .defs
                .put_vhost(&VHostDef { name: name.into(), description: description.clone(), tags: t.clone() })
                .map_err(|e| e.to_string())?;
            let vh = b.vhosts.entry(name.to_string()).or_insert_with(|| b.new_vhost(name)).clone();
            *vh.meta.write() = VHostMeta { description, tags: t };
        }
        for u in list(doc, "users") {
            let name = text(u, "name");
            if name.is_empty() {
                continue;
            }
            let alg = text(u, "hashing_algorithm");
            if !alg.is_empty() && alg != "rabbit_password_hashing_sha256" {
                return Err(format!("user {name}: hashing algorithm {alg} is not supported"));
            }
            let hash = match (
                u.get("password_hash").and_then(Value::as_str),
                u.get("password").and_then(Value::as_str),
            ) {
                (Some(h), _) => h.to_string(),
                (None, Some(p)) => hash_password(p, rand::random()),
                _ => String::new(),
            };
            let t = tags(u.get("tags"));
            b.store
                .defs
                .put_user(&UserDef { name: name.into(), password_hash: hash.clone(), tags: t.clone() })
                .map_err(|e| e.to_string())?;
            b.users.insert(name.into(), User { name: name.into(), password_hash: hash, tags: t });
        }
        for p in list(doc, "permissions") {
            let def = PermissionDef {
                user: text(p, "user").into(),
                vhost: text(p, "vhost").into(),
                configure: text(p, "configure").into(),
                write: text(p, "write").into(),
                read: text(p, "read").into(),
            };
            if b.vhost(&def.vhost).is_none() || !b.users.contains_key(&def.user) {
                return Err(format!("permission of {} in {}: vhost_or_user_not_found", def.user, def.vhost));
            }
            let perm = Permission::new(def.clone())?;
            b.store.defs.put_permission(&def).map_err(|e| e.to_string())?;
            b.access.set(perm);
        }
        for p in list(doc, "topic_permissions") {
            let def = TopicPermissionDef {
                user: text(p, "user").into(),
                vhost: text(p, "vhost").into(),
                exchange: text(p, "exchange").into(),
                write: text(p, "write").into(),
                read: text(p, "read").into(),
            };
            b.store.defs.put_topic_permission(&def).map_err(|e| e.to_string())?;
            b.access.set_topic(def);
        }
    }
    let vhost = |name: &str| b.vhost(name).ok_or_else(|| format!("vhost '{name}' does not exist"));
    for p in list(doc, "policies") {
        let vh = vh_of(p);
        let v = vhost(&vh)?;
        let policy = policy_from_json(&vh, text(p, "name"), p, false).map_err(|e| e.reason())?;
        v.put_policy(policy, false).map_err(|e| e.to_string())?;
    }
    for x in list(doc, "exchanges") {
        let name = text(x, "name");
        if name.is_empty() || name.starts_with("amq.") {
            continue;
        }
        let v = vhost(&vh_of(x))?;
        let args = x.get("arguments").and_then(values::to_table).unwrap_or_default();
        v.declare_exchange(
            name,
            text(x, "type"),
            false,
            flag(x, "durable", true),
            flag(x, "auto_delete", false),
            flag(x, "internal", false),
            args,
        )
        .map_err(|e| format!("exchange {name}: {}", e.reply_text()))?;
    }
    for q in list(doc, "queues") {
        let name = text(q, "name");
        let v = vhost(&vh_of(q))?;
        let args = q.get("arguments").and_then(values::to_table).unwrap_or_default();
        v.declare_queue(QueueDeclare {
            name,
            server_named: false,
            passive: false,
            durable: flag(q, "durable", true),
            exclusive: false,
            auto_delete: flag(q, "auto_delete", false),
            arguments: args,
            conn_id: 0,
        })
        .map_err(|e| format!("queue {name}: {}", e.reply_text()))?;
    }
    for bd in list(doc, "bindings") {
        let v = vhost(&vh_of(bd))?;
        let args = bd.get("arguments").and_then(values::to_table).unwrap_or_default();
        let (src, dest, key) = (text(bd, "source"), text(bd, "destination"), text(bd, "routing_key"));
        let r = if text(bd, "destination_type") == "exchange" {
            v.bind_exchange(dest, src, key, args)
        } else {
            v.bind_queue(dest, src, key, args, 0)
        };
        r.map_err(|e| format!("binding {src} -> {dest}: {}", e.reply_text()))?;
    }
    tracing::info!(by, "definitions imported");
    Ok(())
}

fn parse_body(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(ApiError::bad_json)
}

pub async fn import_all(State(b): State<Arc<Broker>>, a: Authed, body: axum::body::Bytes) -> ApiResult {
    a.require_admin()?;
    let doc = parse_body(&body)?;
    import(&b, &doc, None, &a.0.name).map_err(ApiError::bad_request)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn import_vhost(
    State(b): State<Arc<Broker>>,
    a: Authed,
    Path(vh): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult {
    a.require_admin()?;
    b.vhost(&vh).ok_or_else(ApiError::not_found)?;
    let doc = parse_body(&body)?;
    import(&b, &doc, Some(&vh), &a.0.name).map_err(ApiError::bad_request)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
